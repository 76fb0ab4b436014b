"""Tests of mmpool.testing.synthetic and tools/make_synthetic.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmpool.convert.legacy import read_shard, scan_shard
from mmpool.convert.sources import last_integer, list_files
from mmpool.errors import ConfigError
from mmpool.testing.synthetic import katago_rows, make_positions, make_synthetic, position_dtype, write_legacy_shard

REPO = Path(__file__).resolve().parent.parent


def test_position_dtype() -> None:
    dt = position_dtype()
    assert dt.itemsize == 280
    assert dt.isalignedstruct
    assert dt.names == ("planes", "move", "wdl", "id")
    assert dt["planes"] == np.dtype((np.uint8, (4, 8, 8)))
    assert dt["move"] == np.int16 and dt["id"] == np.int64
    assert dt["wdl"] == np.dtype((np.float32, (3,)))
    assert dt.fields["id"][1] % 8 == 0  # aligned offset
    assert position_dtype(12)["planes"].shape == (12, 8, 8)
    with pytest.raises(ConfigError):
        position_dtype(0)


def test_make_positions_content() -> None:
    n = 20000
    p = make_positions(n, seed=5, id_base=1000)
    assert p["planes"].shape == (n, 4, 8, 8) and p["planes"].dtype == np.uint8
    assert set(np.unique(p["planes"])) <= {0, 1}
    ones = p["planes"].reshape(n, 4, 64).sum(axis=2)
    assert 8 <= ones.mean() <= 16  # sparse planes, ~8-16 pieces each
    assert ones.max() < 40

    assert p["move"].dtype == np.int16
    assert p["move"].min() >= 0 and p["move"].max() == 64
    assert 0.01 < np.mean(p["move"] == 64) < 0.03  # about 2% passes
    assert len(np.unique(p["move"])) == 65

    assert p["wdl"].dtype == np.float32 and p["wdl"].shape == (n, 3)
    assert (p["wdl"] >= 0).all()
    np.testing.assert_allclose(p["wdl"].sum(axis=1), 1.0, atol=1e-6)

    np.testing.assert_array_equal(p["id"], np.arange(1000, 1000 + n))
    assert p["id"].dtype == np.int64


def test_make_positions_deterministic() -> None:
    a = make_positions(500, seed=1, id_base=7)
    b = make_positions(500, seed=1, id_base=7)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes()
    # Different seed or id_base -> different data.
    c = make_positions(500, seed=2, id_base=7)
    d = make_positions(500, seed=1, id_base=8)
    assert not np.array_equal(a["planes"], c["planes"])
    assert not np.array_equal(a["planes"], d["planes"])


def test_make_positions_channels_and_empty() -> None:
    p = make_positions(3, seed=0, channels=7)
    assert p["planes"].shape == (3, 7, 8, 8)
    e = make_positions(0, seed=0)
    assert all(len(a) == 0 for a in e.values())
    with pytest.raises(ConfigError):
        make_positions(-1, seed=0)


def test_write_legacy_shard_atomic_and_no_suffix_added(tmp_path: Path) -> None:
    for fmt in ["npz", "npy", "pt", "h5"]:
        write_legacy_shard(tmp_path / f"s_1.{fmt}", make_positions(4, seed=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s_1.h5", "s_1.npy", "s_1.npz", "s_1.pt"]
    with pytest.raises(ConfigError, match="suffix"):
        write_legacy_shard(tmp_path / "s_2.csv", make_positions(4, seed=0))
    with pytest.raises(ConfigError):
        write_legacy_shard(tmp_path / "s_3.npz", {"a": np.zeros(3), "b": np.zeros(4)})
    assert not list(tmp_path.glob(".*"))  # no temporaries left behind


def test_npz_is_uncompressed(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "s_1.npz"
    write_legacy_shard(path, make_positions(10, seed=0))
    with zipfile.ZipFile(path) as zf:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def list_shards(d: Path) -> list[tuple[int, Path]]:
    """(number, path) of the shard files of ``d``, by number."""
    return sorted((last_integer(name), d / name) for name in list_files(d, {".npz", ".npy", ".pt", ".h5"}))


@pytest.mark.parametrize("fmt", ["npz", "npy", "pt", "h5"])
def test_make_synthetic(tmp_path: Path, fmt: str) -> None:
    dirs = make_synthetic(tmp_path / "root", [2, 3], [50, 30], fmt=fmt, seed=4)
    assert dirs == [tmp_path / "root" / "dir0", tmp_path / "root" / "dir1"]
    all_ids = []
    for d, count, rows in zip(dirs, [2, 3], [50, 30]):
        shards = list_shards(d)
        assert [n for n, _ in shards] == list(range(count))
        assert [p.name for _, p in shards] == [f"shard_{i:05d}.{fmt}" for i in range(count)]
        for number, path in shards:
            arrays = read_shard(scan_shard(path, number))
            assert len(arrays["id"]) == rows
            all_ids.append(arrays["id"])
    ids = np.concatenate(all_ids)
    assert len(ids) == 2 * 50 + 3 * 30
    assert len(np.unique(ids)) == len(ids)  # unique across ALL dirs and shards
    # The id encodes directory and shard number.
    first = read_shard(scan_shard(dirs[1] / f"shard_00002.{fmt}", 2))["id"]
    assert first[0] == (1 << 40) | (2 << 20)


def test_make_synthetic_deterministic(tmp_path: Path) -> None:
    a = make_synthetic(tmp_path / "a", [2, 1], 40, seed=9, dir_names=["x", "y"])
    b = make_synthetic(tmp_path / "b", [2, 1], 40, seed=9, dir_names=["x", "y"])
    c = make_synthetic(tmp_path / "c", [2, 1], 40, seed=10, dir_names=["x", "y"])
    assert [d.name for d in a] == ["x", "y"]
    for da, db, dc in zip(a, b, c):
        for (_, pa), (_, pb), (_, pc) in zip(list_shards(da), list_shards(db), list_shards(dc)):
            xa = read_shard(scan_shard(pa, 0))
            xb = read_shard(scan_shard(pb, 0))
            xc = read_shard(scan_shard(pc, 0))
            for k in xa:
                assert xa[k].tobytes() == xb[k].tobytes()
            assert not np.array_equal(xa["planes"], xc["planes"])
            np.testing.assert_array_equal(xa["id"], xc["id"])  # ids depend on position only


def test_make_synthetic_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        make_synthetic(tmp_path, [1], 10, fmt="csv")
    with pytest.raises(ConfigError):
        make_synthetic(tmp_path, [1, 2], [10], fmt="npz")
    with pytest.raises(ConfigError):
        make_synthetic(tmp_path, [1], 1 << 20)
    with pytest.raises(ConfigError):
        make_synthetic(tmp_path, [1, 1], 10, dir_names=["same", "same"])


def test_cli(tmp_path: Path) -> None:
    # Run from the repo root without installing, as documented.
    out = subprocess.run(
        [
            sys.executable,
            "tools/make_synthetic.py",
            str(tmp_path / "r"),
            "--shards",
            "2",
            "1",
            "--rows",
            "20",
            "--format",
            "npy",
            "--seed",
            "1",
            "--channels",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "dir0" in out.stdout and "dir1" in out.stdout and "total" in out.stdout
    assert "60 rows" in out.stdout
    info = scan_shard(tmp_path / "r" / "dir0" / "shard_00001.npy", 1)
    assert info.rows == 20 and info.fields["planes"][1] == (2, 8, 8)


def test_katago_rows_layout_and_structure() -> None:
    n = 300
    r = katago_rows(n, seed=4)
    want = {
        "binaryInputNCHWPacked": (np.uint8, (22, 46)),
        "globalInputNC": (np.float32, (19,)),
        "policyTargetsNCMove": (np.int16, (2, 362)),
        "globalTargetsNC": (np.float32, (80,)),
        "scoreDistrN": (np.int8, (842,)),
        "valueTargetsNCHW": (np.int8, (5, 19, 19)),
        "qValueTargetsNCMove": (np.int16, (3, 362)),
        "metadataInputNC": (np.float32, (192,)),
    }
    assert {k: (v.dtype, v.shape) for k, v in r.items()} == {k: (np.dtype(d), (n, *s)) for k, (d, s) in want.items()}
    bits = np.unpackbits(r["binaryInputNCHWPacked"], axis=-1)
    assert not bits[..., 361:].any()  # padding bits zero
    planes = bits[..., :361].astype(bool)
    assert planes[:, 0].all() and not (planes[:, 1] & planes[:, 2]).any()  # on board; own and opponent disjoint
    assert 0 < planes[:, 1:3].sum(axis=(1, 2)).mean() < 361 * 0.55
    stones = planes[:, 1] | planes[:, 2]
    assert not (planes[:, 3:6].any(axis=1) & ~stones).any()  # liberty planes mark stones only
    assert (planes[:, 9].sum(axis=1) <= 1).all() and not (planes[:, 9] & ~planes[:, 2]).any()  # last move: opponent
    policy = r["policyTargetsNCMove"].astype(np.int64)
    assert (policy >= 0).all() and (policy[:, 0].sum(axis=1) > 0).all()
    assert not (policy[:, 0, :361] & stones).any()  # no visits on occupied squares; pass (361) may have some
    assert (policy[:, 1].sum(axis=1) == 1).all()
    assert (r["scoreDistrN"].sum(axis=1, dtype=np.int64) == 100).all()
    own = r["valueTargetsNCHW"][:, 0].reshape(n, 361)
    assert set(np.unique(own)) <= {-1, 0, 1} and (own[planes[:, 1]] == 1).all() and (own[planes[:, 2]] == -1).all()
    gt = r["globalTargetsNC"]
    np.testing.assert_allclose(gt[:, 0] + gt[:, 1], 1.0, rtol=1e-6)
    q = r["qValueTargetsNCMove"]
    assert not q[(policy[:, 0] == 0)[:, None, :].repeat(3, axis=1)].any()  # q only where searched
    again = katago_rows(n, seed=4)
    assert all(np.array_equal(again[k], r[k]) for k in r)
    assert not np.array_equal(katago_rows(n, seed=5)["binaryInputNCHWPacked"], r["binaryInputNCHWPacked"])
    old = katago_rows(3, seed=0, global_targets=64, with_q=False)
    assert old["globalTargetsNC"].shape == (3, 64) and "qValueTargetsNCMove" not in old
    with pytest.raises(ConfigError, match="global_targets=40"):
        katago_rows(3, seed=0, global_targets=40)
