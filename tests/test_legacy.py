"""Tests of mmpool.convert.legacy: listing, scanning, reading and validating legacy shards."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mmpool.convert.legacy import check_finite, read_shard, scan_shard
from mmpool.errors import ShardError
from mmpool.testing.synthetic import make_positions, write_legacy_shard

FORMATS = ["npz", "npy", "pt", "pth", "h5", "hdf5"]
EXPECTED_FIELDS = {
    "planes": (np.dtype(np.uint8), (4, 8, 8)),
    "move": (np.dtype(np.int16), ()),
    "wdl": (np.dtype(np.float32), (3,)),
    "id": (np.dtype(np.int64), ()),
}


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _write(path: Path, n: int = 37, seed: int = 3) -> dict[str, np.ndarray]:
    arrays = make_positions(n, seed=seed, id_base=100)
    write_legacy_shard(path, arrays)
    return arrays


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"shard_00007.{fmt}"
    arrays = _write(path)
    info = scan_shard(path, 7)
    assert info.path == path and info.number == 7 and info.rows == 37
    assert info.fields == EXPECTED_FIELDS
    for name, (dtype, _shape) in info.fields.items():
        assert dtype.str == EXPECTED_FIELDS[name][0].str  # exact, byte order included
    out = read_shard(info)
    assert set(out) == set(arrays)
    for name, arr in arrays.items():
        assert out[name].dtype == arr.dtype
        assert out[name].flags.c_contiguous
        np.testing.assert_array_equal(out[name], arr)


def test_npy_is_one_structured_array(tmp_path: Path) -> None:
    path = tmp_path / "s_1.npy"
    _write(path)
    raw = np.load(path)
    assert raw.dtype.names == ("planes", "move", "wdl", "id")
    out = read_shard(scan_shard(path, 1))
    assert all(a.flags.c_contiguous for a in out.values())


def test_pt_legacy_non_zip_and_numpy_values(tmp_path: Path) -> None:
    path = tmp_path / "old_3.pt"
    data = {"x": torch.arange(10, dtype=torch.float32).reshape(5, 2), "y": np.arange(5)}
    torch.save(data, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    info = scan_shard(path, 3)
    assert info.rows == 5
    assert info.fields == {"x": (np.dtype(np.float32), (2,)), "y": (np.dtype(np.int64), ())}
    out = read_shard(info)
    np.testing.assert_array_equal(out["x"], data["x"].numpy())
    np.testing.assert_array_equal(out["y"], data["y"])


def test_pt_zip_with_numpy_values(tmp_path: Path) -> None:
    # weights_only must accept numpy arrays (allow-listed) inside the dict.
    path = tmp_path / "new_4.pth"
    data = {"x": np.arange(6, dtype=np.uint16).reshape(3, 2), "t": torch.ones(3, dtype=torch.int8)}
    torch.save(data, path)
    info = scan_shard(path, 4)
    assert info.fields == {"x": (np.dtype(np.uint16), (2,)), "t": (np.dtype(np.int8), ())}
    out = read_shard(info)
    np.testing.assert_array_equal(out["x"], data["x"])
    np.testing.assert_array_equal(out["t"], np.ones(3, np.int8))


def test_scan_does_not_need_the_data_npz(tmp_path: Path) -> None:
    # The scan reads only headers, so a shard scans the same whatever the data holds.
    path = tmp_path / "s_0.npz"
    np.savez(path, a=np.full((4, 2), np.nan, dtype=np.float16))
    info = scan_shard(path, 0)
    assert info.fields == {"a": (np.dtype(np.float16), (2,))}


# --------------------------------------------------------------------------- corrupt files


@pytest.mark.parametrize("fmt", ["npz", "npy", "h5", "pt"])
def test_truncated_scan(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"shard_00001.{fmt}"
    _write(path, n=500)
    _truncate(path)
    with pytest.raises(ShardError, match="shard_00001"):
        scan_shard(path, 1)


@pytest.mark.parametrize("fmt", ["npz", "npy", "h5", "pt"])
def test_truncated_after_scan(tmp_path: Path, fmt: str) -> None:
    # A file that shrinks between scan and read must give a ShardError, not a numpy traceback.
    path = tmp_path / f"shard_00002.{fmt}"
    _write(path, n=500)
    info = scan_shard(path, 2)
    _truncate(path, keep=0.9)
    with pytest.raises(ShardError, match="shard_00002"):
        read_shard(info)


def test_changed_after_scan(tmp_path: Path) -> None:
    path = tmp_path / "shard_3.npz"
    _write(path, n=10)
    info = scan_shard(path, 3)
    _write(path, n=11)
    with pytest.raises(ShardError, match="changed since it was scanned") as exc:
        read_shard(info)
    assert "shard_3.npz" in str(exc.value)
    wrong = dataclasses.replace(info, rows=11, fields={"planes": info.fields["planes"]})
    with pytest.raises(ShardError, match="shard_3.npz"):
        read_shard(wrong)


def test_garbage_pt(tmp_path: Path) -> None:
    path = tmp_path / "shard_4.pt"
    path.write_bytes(b"\x80\x02garbage, not a pickle" * 20)
    with pytest.raises(ShardError, match="shard_4.pt"):
        scan_shard(path, 4)


def test_pt_list(tmp_path: Path) -> None:
    path = tmp_path / "shard_5.pt"
    torch.save([torch.zeros(3)], path)
    with pytest.raises(ShardError, match="shard_5.pt") as exc:
        scan_shard(path, 5)
    assert "list" in str(exc.value)


def test_pt_non_tensor_value(tmp_path: Path) -> None:
    path = tmp_path / "shard_6.pt"
    torch.save({"x": torch.zeros(3), "n": 3}, path)
    with pytest.raises(ShardError, match="shard_6.pt") as exc:
        scan_shard(path, 6)
    assert "'n'" in str(exc.value) and "int" in str(exc.value)


def test_pt_arbitrary_object_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "shard_7.pt"
    torch.save({"x": torch.zeros(3), "p": Path("/etc")}, path)
    with pytest.raises(ShardError, match="shard_7.pt"):
        scan_shard(path, 7)


def test_pt_bfloat16(tmp_path: Path) -> None:
    path = tmp_path / "shard_8.pt"
    torch.save({"x": torch.zeros(3, dtype=torch.bfloat16)}, path)
    with pytest.raises(ShardError, match="shard_8.pt") as exc:
        scan_shard(path, 8)
    assert "'x'" in str(exc.value)


def test_object_array_npz(tmp_path: Path) -> None:
    path = tmp_path / "shard_9.npz"
    np.savez(path, ok=np.zeros(2), names=np.array(["a", None], dtype=object))
    with pytest.raises(ShardError, match="shard_9.npz") as exc:
        scan_shard(path, 9)
    assert "'names'" in str(exc.value)


def test_object_field_npy(tmp_path: Path) -> None:
    path = tmp_path / "shard_10.npy"
    arr = np.zeros(3, dtype=[("x", "f4"), ("o", "O")])
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(ShardError, match="shard_10.npy") as exc:
        scan_shard(path, 10)
    assert "'o'" in str(exc.value)


def test_plain_npy_rejected(tmp_path: Path) -> None:
    path = tmp_path / "shard_11.npy"
    np.save(path, np.zeros((3, 2)))
    with pytest.raises(ShardError, match="shard_11.npy") as exc:
        scan_shard(path, 11)
    assert "structured" in str(exc.value)


def test_h5_vlen_string(tmp_path: Path) -> None:
    path = tmp_path / "shard_12.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("x", data=np.zeros(2))
        fh.create_dataset("comment", data=["a", "bb"], dtype=h5py.string_dtype())
    with pytest.raises(ShardError, match="shard_12.h5") as exc:
        scan_shard(path, 12)
    assert "'comment'" in str(exc.value) and "variable-length" in str(exc.value)


def test_h5_fixed_strings_and_groups(tmp_path: Path) -> None:
    path = tmp_path / "shard_13.h5"
    with h5py.File(path, "w") as fh:
        fh.create_dataset("tag", data=np.array([b"ab", b"c"], dtype="S2"))
        fh.create_group("meta").attrs["note"] = "ignored"
    info = scan_shard(path, 13)
    assert info.fields == {"tag": (np.dtype("S2"), ())}
    np.testing.assert_array_equal(read_shard(info)["tag"], np.array([b"ab", b"c"]))


def test_mismatched_first_dimensions(tmp_path: Path) -> None:
    path = tmp_path / "shard_14.npz"
    np.savez(path, board=np.zeros((5, 3)), score=np.zeros(6))
    with pytest.raises(ShardError) as exc:
        scan_shard(path, 14)
    msg = str(exc.value)
    assert "shard_14.npz" in msg and "'board'" in msg and "'score'" in msg
    assert "5" in msg and "6" in msg


def test_empty_shard(tmp_path: Path) -> None:
    path = tmp_path / "shard_15.npz"
    np.savez(path, a=np.zeros((0, 3)), b=np.zeros(0))
    with pytest.raises(ShardError, match="shard_15.npz.*empty shard"):
        scan_shard(path, 15)


def test_no_arrays(tmp_path: Path) -> None:
    path = tmp_path / "shard_16.npz"
    np.savez(path)
    with pytest.raises(ShardError, match="shard_16.npz.*no arrays"):
        scan_shard(path, 16)
    h5 = tmp_path / "shard_17.h5"
    h5py.File(h5, "w").close()
    with pytest.raises(ShardError, match="shard_17.h5.*no arrays"):
        scan_shard(h5, 17)


def test_zero_d_array(tmp_path: Path) -> None:
    path = tmp_path / "shard_18.npz"
    np.savez(path, a=np.zeros(3), scale=np.float32(2.0))
    with pytest.raises(ShardError, match="shard_18.npz") as exc:
        scan_shard(path, 18)
    assert "'scale'" in str(exc.value) and "0-d" in str(exc.value)


# --------------------------------------------------------------------------- check_finite


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_check_finite_names_row(tmp_path: Path, dtype: type, bad: float) -> None:
    arrays = {
        "id": np.arange(50),
        "wdl": np.full((50, 3), 1 / 3, dtype=dtype),
    }
    arrays["wdl"][41, 2] = bad
    arrays["wdl"][45, 0] = bad  # a later bad row: the first one is reported
    with pytest.raises(ShardError) as exc:
        check_finite(arrays, tmp_path / "shard_00019.npz")
    msg = str(exc.value)
    assert "shard_00019.npz" in msg and "'wdl'" in msg and "row 41" in msg


def test_check_finite_1d_and_clean(tmp_path: Path) -> None:
    check_finite({"a": np.zeros((4, 2), np.float32), "i": np.arange(4)}, tmp_path / "s_1.npz")
    with pytest.raises(ShardError, match="'v' row 0"):
        check_finite({"v": np.array([np.nan, 1.0])}, tmp_path / "s_1.npz")


# --------------------------------------------------------------------------- across formats


def test_same_fields_across_formats(tmp_path: Path) -> None:
    infos = []
    for i, fmt in enumerate(FORMATS):
        path = tmp_path / f"shard_{i}.{fmt}"
        _write(path, n=5 + i)
        infos.append(scan_shard(path, i))
    for info in infos:
        assert info.fields == EXPECTED_FIELDS
