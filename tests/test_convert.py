"""Tests for mmpool.convert.converter: round trips, pack planning, incremental runs, killed runs, errors, workers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from mmpool.convert.converter import ConvertSummary, convert, group_into_packs, parse_size
from mmpool.convert.legacy import scan_shard
from mmpool.errors import ConfigError, ShardError
from mmpool.format.manifest import NPY_HEADER_BYTES, read_manifest
from mmpool.ops.check import verify_dirs
from mmpool.store.catalog import Catalog
from mmpool.store.gather import ShardStore
from mmpool.testing.synthetic import make_positions, make_synthetic, write_legacy_shard

REPO = Path(__file__).resolve().parent.parent
ITEMSIZE = 280  # synthetic.position_dtype(4)
FIELDS = ("planes", "move", "wdl", "id")


def expected(number: int, rows: int, d: int = 0, channels: int = 4) -> dict[str, np.ndarray]:
    """The arrays make_synthetic wrote for shard ``number`` of directory index ``d`` (seed 0)."""
    return make_positions(rows, 0, id_base=(d << 40) | (number << 20), channels=channels)


def assert_records(records: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
    assert records.dtype.names == FIELDS
    for name in FIELDS:
        np.testing.assert_array_equal(records[name], arrays[name], strict=True)


def assert_converted(dst: Path, source: dict[int, dict[str, np.ndarray]]) -> None:
    """Every shard of ``dst`` holds exactly ``source[number]``, read via the store and via numpy/h5py directly."""
    m = read_manifest(dst)
    assert [s.number for s in m.shards] == sorted(source)
    cat = Catalog([dst])
    store = ShardStore(cat)
    for g, number in enumerate(cat.shard_number):
        arrays = source[int(number)]
        rows = len(arrays["id"])
        assert cat.shard_rows[g] == rows
        assert_records(store.gather_rows(np.full(rows, g), np.arange(rows)), arrays)
    store.close()
    for s in m.shards:
        path = dst / m.packs[s.pack].file
        if m.pack_format == "npy":
            part = np.load(path, mmap_mode="r")[s.first_row : s.first_row + s.rows]
        else:
            with h5py.File(path, "r") as f:
                part = f["records"][s.first_row : s.first_row + s.rows]
        assert_records(part, source[s.number])


def synthetic_source(numbers: range | list[int], rows: int = 300) -> dict[int, dict[str, np.ndarray]]:
    return {n: expected(n, rows) for n in numbers}


def snapshot(directory: Path) -> dict[str, bytes]:
    """File names and contents of a directory (to prove a failed run changed nothing)."""
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob(".*tmp*")) if directory.exists() else []


# --------------------------------------------------------------------------- round trips and planning


@pytest.mark.parametrize("out_fmt", ["npy", "hdf5"])
@pytest.mark.parametrize("in_fmt", ["npz", "npy", "pt", "h5"])
def test_round_trip(tmp_path: Path, in_fmt: str, out_fmt: str) -> None:
    (src,) = make_synthetic(tmp_path / "src", [5], 300, fmt=in_fmt)
    dst = tmp_path / "dst"
    # 300 rows * 280 bytes = 84000 bytes per shard: two shards fit in 200000 bytes, three do not.
    summary = convert(src, dst, fmt=out_fmt, pack_size=200_000, progress=False)
    m = read_manifest(dst)
    suffix = {"npy": ".npy", "hdf5": ".h5"}[out_fmt]
    assert m.pack_format == out_fmt
    assert [p.file for p in m.packs] == [f"pack-0000{k}{suffix}" for k in range(3)]
    assert [p.rows for p in m.packs] == [600, 600, 300]
    assert [p.bytes for p in m.packs] == [(dst / p.file).stat().st_size for p in m.packs]
    if out_fmt == "npy":
        assert [p.bytes for p in m.packs] == [NPY_HEADER_BYTES + r * ITEMSIZE for r in (600, 600, 300)]
        assert [p.data_offset for p in m.packs] == [NPY_HEADER_BYTES] * 3
    assert [(s.number, s.source, s.pack, s.first_row, s.rows) for s in m.shards] == [
        (0, f"shard_00000.{in_fmt}", 0, 0, 300),
        (1, f"shard_00001.{in_fmt}", 0, 300, 300),
        (2, f"shard_00002.{in_fmt}", 1, 0, 300),
        (3, f"shard_00003.{in_fmt}", 1, 300, 300),
        (4, f"shard_00004.{in_fmt}", 2, 0, 300),
    ]
    assert (summary.shards_converted, summary.shards_skipped, summary.records, summary.packs_written) == (5, 0, 1500, 3)
    assert summary.bytes == sum(p.bytes for p in m.packs)
    assert_converted(dst, synthetic_source(range(5)))
    assert verify_dirs([dst], progress=False) == []
    assert sorted(p.name for p in dst.iterdir()) == ["mmpool.json"] + [p.file for p in m.packs]


def test_uneven_shards_share_packs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rows = {0: 100, 1: 250, 2: 50, 3: 400, 4: 30}
    source = {n: expected(n, r) for n, r in rows.items()}
    for n, arrays in source.items():
        write_legacy_shard(src / f"part-{n}.npz", arrays)
    dst = tmp_path / "dst"
    convert(src, dst, pack_size=300 * ITEMSIZE, progress=False)
    m = read_manifest(dst)
    # 100 | 250+50 (exactly pack_size) | 400 (larger than pack_size: alone) | 30
    assert [p.rows for p in m.packs] == [100, 300, 400, 30]
    assert [p.bytes for p in m.packs] == [NPY_HEADER_BYTES + r * ITEMSIZE for r in (100, 300, 400, 30)]
    assert [(s.number, s.pack, s.first_row, s.rows) for s in m.shards] == [
        (0, 0, 0, 100),
        (1, 1, 0, 250),
        (2, 1, 250, 50),
        (3, 2, 0, 400),
        (4, 3, 0, 30),
    ]
    assert_converted(dst, source)


def test_plan_packs_groups_consecutive_shards(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    infos = []
    for n, r in enumerate([10, 10, 10, 35, 5]):
        write_legacy_shard(src / f"s{n}.npz", expected(n, r))
        infos.append(scan_shard(src / f"s{n}.npz", n))
    groups = group_into_packs(infos, 100, 2000)
    assert [[i.number for i in g] for g in groups] == [[0, 1], [2], [3], [4]]
    assert [[i.number for i in g] for g in group_into_packs(infos, 100, 10**9)] == [[0, 1, 2, 3, 4]]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (4096, 4096),
        ("4096", 4096),
        ("1K", 1024),
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1.5g", 3 << 29),
        ("64MB", 64 << 20),
    ],
)
def test_parse_size(text: int | str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1X", "-5", "0", 0, -1, "1 G B"])
def test_parse_size_rejects(text: int | str) -> None:
    with pytest.raises(ConfigError, match="pack size"):
        parse_size(text)


def test_summary_str() -> None:
    s = ConvertSummary(3, 2, 1500, 4_200_000, 2.0, 2.1, 1)
    assert str(s) == (
        "converted 3 shards (1,500 records, 4.2 MB) into 1 packs in 2.0 s (2.1 MB/s); 2 shards were already converted"
    )


def test_bad_parameters(tmp_path: Path) -> None:
    (src,) = make_synthetic(tmp_path / "src", [1], 10)
    with pytest.raises(ConfigError, match="format 'zarr'"):
        convert(src, tmp_path / "dst", fmt="zarr", progress=False)
    with pytest.raises(ConfigError, match="workers=0"):
        convert(src, tmp_path / "dst", workers=0, progress=False)
    with pytest.raises(ConfigError, match="another directory than the shards"):
        convert(src, src, progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        convert(src, tmp_path / "file", progress=False)
    assert not (tmp_path / "dst").exists()


# --------------------------------------------------------------------------- incremental runs


def test_incremental(tmp_path: Path) -> None:
    (src,) = make_synthetic(tmp_path / "src", [4], 300)
    dst = tmp_path / "dst"
    first = convert(src, dst, pack_size=200_000, progress=False)
    assert (first.shards_converted, first.shards_skipped, first.packs_written) == (4, 0, 2)
    old = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes()) for p in dst.glob("pack-*")}
    assert sorted(old) == ["pack-00000.npy", "pack-00001.npy"]

    for n in (4, 5, 6):
        write_legacy_shard(src / f"shard_{n:05d}.npz", expected(n, 300))
    second = convert(src, dst, pack_size=200_000, progress=False)
    assert (second.shards_converted, second.shards_skipped, second.records, second.packs_written) == (3, 4, 900, 2)
    for name, (ino, mtime, data) in old.items():
        st = (dst / name).stat()
        assert (st.st_ino, st.st_mtime_ns, (dst / name).read_bytes()) == (ino, mtime, data)
    m = read_manifest(dst)
    assert [p.file for p in m.packs] == [f"pack-0000{k}.npy" for k in range(4)]
    assert [(s.number, s.pack, s.first_row) for s in m.shards] == [
        (0, 0, 0),
        (1, 0, 300),
        (2, 1, 0),
        (3, 1, 300),
        (4, 2, 0),
        (5, 2, 300),
        (6, 3, 0),
    ]
    assert_converted(dst, synthetic_source(range(7)))

    manifest = (dst / "mmpool.json").read_bytes()
    third = convert(src, dst, pack_size=200_000, progress=False)
    assert (third.shards_converted, third.shards_skipped, third.records, third.packs_written) == (0, 7, 0, 0)
    assert (dst / "mmpool.json").read_bytes() == manifest


def test_incremental_fills_gaps_in_numbers(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for n in (0, 2, 4):
        write_legacy_shard(src / f"shard_{n}.npz", expected(n, 50))
    dst = tmp_path / "dst"
    convert(src, dst, progress=False)
    for n in (1, 3):
        write_legacy_shard(src / f"shard_{n}.npz", expected(n, 50))
    summary = convert(src, dst, progress=False)
    assert (summary.shards_converted, summary.shards_skipped) == (2, 3)
    m = read_manifest(dst)
    assert [(s.number, s.pack, s.first_row) for s in m.shards] == [
        (0, 0, 0),
        (1, 1, 0),
        (2, 0, 50),
        (3, 1, 50),
        (4, 0, 100),
    ]
    assert_converted(dst, synthetic_source(range(5), 50))


def test_renamed_source_of_a_converted_number(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Renames cannot be told from new files: the renamed file is converted again, under a new number, and the
    # vanished source is named in a warning.
    (src,) = make_synthetic(tmp_path / "src", [3], 20)
    dst = tmp_path / "dst"
    convert(src, dst, progress=False)
    (src / "shard_00002.npz").rename(src / "game-2.npz")
    with caplog.at_level(logging.WARNING, logger="mmpool"):
        summary = convert(src, dst, progress=False)
    assert (summary.shards_converted, summary.shards_skipped) == (1, 2)
    m = read_manifest(dst)
    assert [(s.number, s.source) for s in m.shards] == [
        (0, "shard_00000.npz"),
        (1, "shard_00001.npz"),
        (2, "shard_00002.npz"),
        (3, "game-2.npz"),
    ]
    assert m.numbering == "order:natural"
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "'shard_00002.npz', shard 2" in warnings and "'game-2.npz' ends in 2" in warnings
    assert_converted(dst, synthetic_source(range(3), 20) | {3: expected(2, 20)})


def test_other_pack_format_is_refused(tmp_path: Path) -> None:
    (src,) = make_synthetic(tmp_path / "src", [2], 20)
    dst = tmp_path / "dst"
    convert(src, dst, fmt="npy", progress=False)
    before = snapshot(dst)
    with pytest.raises(ConfigError, match="holds npy packs; convert into it with --format npy"):
        convert(src, dst, fmt="hdf5", progress=False)
    assert snapshot(dst) == before


def test_leftovers_of_killed_runs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (src,) = make_synthetic(tmp_path / "src", [2], 20)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / ".pack-00003.npy.tmp-4242").write_bytes(b"half")
    (dst / ".mmpool.json.tmp-4242").write_bytes(b"{")
    (dst / "pack-00007.npy").write_bytes(b"orphan")  # committed by a run killed before its manifest update
    with caplog.at_level(logging.INFO, logger="mmpool"):
        convert(src, dst, progress=False)
    assert temp_files(dst) == []
    assert (dst / "pack-00007.npy").read_bytes() == b"orphan"
    assert [p.file for p in read_manifest(dst).packs] == ["pack-00008.npy"]
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", f"removing {dst / '.mmpool.json.tmp-4242'}, left over by an interrupted run") in messages
    assert ("INFO", f"removing {dst / '.pack-00003.npy.tmp-4242'}, left over by an interrupted run") in messages
    assert (
        "WARNING",
        f"{dst / 'pack-00007.npy'} is not in mmpool.json: ignored (delete it to reclaim the space)",
    ) in messages
    assert_converted(dst, synthetic_source(range(2), 20))


# --------------------------------------------------------------------------- a killed converter


def test_killed_converter_keeps_finished_packs(tmp_path: Path) -> None:
    shards = 200
    (src,) = make_synthetic(tmp_path / "src", [shards], 50)
    dst = tmp_path / "dst"
    # pack size 1 byte: one pack (and one manifest rewrite) per shard, about 10 ms each, so the run
    # lasts seconds while the first manifest appears after the first pack.
    cmd = [sys.executable, str(REPO / "tools" / "convert_shards.py"), str(src), str(dst), "--pack-size", "1", "--quiet"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (dst / "mmpool.json").exists():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the converter wrote no manifest in 120 s"
            time.sleep(0.001)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
        if child.stderr:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    m = read_manifest(dst)
    done = len(m.shards)
    assert 1 <= done < shards
    assert [s.number for s in m.shards] == list(range(done))
    Catalog([dst])
    assert verify_dirs([dst], progress=False) == []
    assert_converted(dst, synthetic_source(range(done), 50))

    summary = convert(src, dst, pack_size=1, progress=False)
    assert (summary.shards_converted, summary.shards_skipped) == (shards - done, done)
    assert temp_files(dst) == []
    assert verify_dirs([dst], progress=False) == []
    assert_converted(dst, synthetic_source(range(shards), 50))


def test_failure_after_committed_packs_keeps_them(tmp_path: Path) -> None:
    (src,) = make_synthetic(tmp_path / "src", [4], 30)
    arrays = expected(2, 30)
    arrays["wdl"][11, 1] = np.inf
    write_legacy_shard(src / "shard_00002.npz", arrays)
    dst = tmp_path / "dst"
    with pytest.raises(ShardError, match=r"'wdl' row 11"):
        convert(src, dst, pack_size=1, progress=False)
    m = read_manifest(dst)
    assert [p.file for p in m.packs] == ["pack-00000.npy", "pack-00001.npy"]
    assert [s.number for s in m.shards] == [0, 1]
    assert sorted(p.name for p in dst.iterdir()) == ["mmpool.json", "pack-00000.npy", "pack-00001.npy"]

    write_legacy_shard(src / "shard_00002.npz", expected(2, 30))  # fixed
    summary = convert(src, dst, pack_size=1, progress=False)
    assert (summary.shards_converted, summary.shards_skipped) == (2, 2)
    assert_converted(dst, synthetic_source(range(4), 30))


# --------------------------------------------------------------------------- errors


@pytest.fixture
def converted(tmp_path: Path) -> tuple[Path, Path]:
    """A source with shards 0 and 1 and a destination holding them."""
    (src,) = make_synthetic(tmp_path / "src", [2], 40)
    dst = tmp_path / "dst"
    convert(src, dst, progress=False)
    return src, dst


def fails_cleanly(src: Path, dst: Path, exc: type[Exception], **kwargs: object) -> str:
    """Run convert expecting ``exc``; asserts dst is unchanged; returns the message."""
    before = snapshot(dst)
    with pytest.raises(exc) as err:
        convert(src, dst, progress=False, **kwargs)  # type: ignore[arg-type]
    assert snapshot(dst) == before
    assert temp_files(dst) == []
    return str(err.value)


@pytest.mark.parametrize("fresh", [False, True])
def test_schema_differs_between_shards(converted: tuple[Path, Path], tmp_path: Path, fresh: bool) -> None:
    src, dst = converted
    dst = tmp_path / "new" if fresh else dst
    write_legacy_shard(src / "shard_00002.npz", expected(2, 40, channels=2))
    msg = fails_cleanly(src, dst, ConfigError)
    ref = f"the first shard {str(src / 'shard_00000.npz')!r}" if fresh else str(dst / "mmpool.json")
    assert msg == (
        f"{str(src / 'shard_00002.npz')!r}: its fields differ from {ref}, so it cannot share one record schema "
        f"with it:\n  field 'planes' is uint8 (2, 8, 8) here but uint8 (4, 8, 8) in {ref}: --pad only lengthens "
        "the last axis; take the larger schema as the reference (--like a directory holding it, or convert those "
        "shards first)"
    )
    assert not (tmp_path / "new").exists()


def test_schema_differs_from_manifest(converted: tuple[Path, Path], tmp_path: Path) -> None:
    _, dst = converted
    arrays = expected(5, 40)
    arrays["extra"] = np.zeros(40, np.float32)
    del arrays["wdl"]
    src3 = tmp_path / "src3"
    src3.mkdir()
    write_legacy_shard(src3 / "shard_5.npz", arrays)
    msg = fails_cleanly(src3, dst, ConfigError)
    where = dst / "mmpool.json"
    assert msg == (
        f"{str(src3 / 'shard_5.npz')!r}: its fields differ from {where}, so it cannot share one record schema "
        f"with it:\n  field 'wdl' (float32 (3,) in {where}) is missing: --fill wdl=VALUE adds it"
        "\n  field 'extra' (float32 ()) is not in {where}: --drop extra leaves it out".replace("{where}", str(where))
    )


def test_empty_shard(converted: tuple[Path, Path]) -> None:
    src, dst = converted
    write_legacy_shard(src / "shard_00002.npz", {k: v[:0] for k, v in expected(2, 5).items()})
    msg = fails_cleanly(src, dst, ShardError)
    assert msg == f"shard {str(src / 'shard_00002.npz')!r} is an empty shard (0 rows)"


def test_nonfinite_values(converted: tuple[Path, Path]) -> None:
    src, dst = converted
    arrays = expected(2, 40)
    arrays["wdl"][7, 2] = np.nan
    write_legacy_shard(src / "shard_00002.npz", arrays)
    msg = fails_cleanly(src, dst, ShardError)
    assert msg == (
        f"shard {str(src / 'shard_00002.npz')!r}: field 'wdl' row 7 holds a non-finite value (nan); fix or drop that row"
    )
    summary = convert(src, dst, allow_nonfinite=True, progress=False)
    assert (summary.shards_converted, summary.shards_skipped) == (1, 2)
    source = synthetic_source(range(2), 40) | {2: arrays}
    cat = Catalog([dst])
    assert np.isnan(ShardStore(cat).gather_rows(np.array([2]), np.array([7]))["wdl"][0, 2])
    assert_converted(dst, source)


def test_object_arrays(converted: tuple[Path, Path]) -> None:
    src, dst = converted
    arrays = expected(2, 40)
    np.savez(src / "shard_00002.npz", planes=arrays["planes"], move=arrays["move"].astype(object))
    msg = fails_cleanly(src, dst, ShardError)
    assert msg.startswith(f"shard {str(src / 'shard_00002.npz')!r}: field 'move' has dtype object")


def test_truncated_input(converted: tuple[Path, Path]) -> None:
    src, dst = converted
    path = src / "shard_00002.npy"
    write_legacy_shard(path, expected(2, 40))
    size = path.stat().st_size
    os.truncate(path, size - 100)
    msg = fails_cleanly(src, dst, ShardError)
    assert msg == f"shard {str(path)!r} is truncated: {size - 100} bytes, its header needs {size}"


def test_truncated_zip(converted: tuple[Path, Path]) -> None:
    src, dst = converted
    path = src / "shard_00002.npz"
    write_legacy_shard(path, expected(2, 40))
    os.truncate(path, path.stat().st_size // 2)
    msg = fails_cleanly(src, dst, ShardError)
    assert msg.startswith(f"cannot read shard {str(path)!r}: BadZipFile")
    assert zipfile.is_zipfile(src / "shard_00001.npz")


@pytest.mark.parametrize("suffix", ["h5", "pt", "npy", "npz"])
def test_unreadable_input(converted: tuple[Path, Path], suffix: str) -> None:
    src, dst = converted
    path = src / f"shard_00002.{suffix}"
    path.write_bytes(b"this is not a shard at all" * 10)
    msg = fails_cleanly(src, dst, ShardError)
    assert msg.startswith(f"cannot read shard {str(path)!r}: ")


def test_no_number_in_name_is_numbered_in_order(converted: tuple[Path, Path]) -> None:
    src, dst = converted
    write_legacy_shard(src / "latest.npz", expected(2, 40))
    convert(src, dst, progress=False)
    m = read_manifest(dst)
    assert [(s.number, s.source) for s in m.shards][-1] == (2, "latest.npz")
    assert_converted(dst, synthetic_source(range(3), 40))


def test_empty_source(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(ConfigError, match="no shard files in"):
        convert(tmp_path / "src", tmp_path / "dst", progress=False)
    assert not (tmp_path / "dst").exists()


# --------------------------------------------------------------------------- workers


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_workers_give_the_same_records(tmp_path: Path, fmt: str) -> None:
    (src,) = make_synthetic(tmp_path / "src", [9], 200)
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = convert(src, one, fmt=fmt, pack_size=120_000, workers=1, progress=False)
    s2 = convert(src, two, fmt=fmt, pack_size=120_000, workers=2, progress=False)
    assert (s1.shards_converted, s1.records, s1.packs_written, s1.bytes) == (9, 1800, 5, s2.bytes)
    assert (s2.shards_converted, s2.records, s2.packs_written) == (9, 1800, 5)
    m1, m2 = read_manifest(one), read_manifest(two)
    # Pack order in the manifest follows completion; the shards, their packs and their bytes are the same.
    key = lambda m: [(s.number, m.packs[s.pack].file, s.first_row, s.rows, s.crc32) for s in m.shards]  # noqa: E731
    assert key(m1) == key(m2)
    assert sorted(p.file for p in m2.packs) == [p.file for p in m1.packs]
    if fmt == "npy":
        for p in m1.packs:
            assert (one / p.file).read_bytes() == (two / p.file).read_bytes()
    assert_converted(two, synthetic_source(range(9), 200))
    assert verify_dirs([two], progress=False) == []


def test_workers_failure_keeps_a_consistent_directory(tmp_path: Path) -> None:
    (src,) = make_synthetic(tmp_path / "src", [6], 40)
    arrays = expected(3, 40)
    arrays["wdl"][5, 0] = -np.inf
    write_legacy_shard(src / "shard_00003.npz", arrays)
    dst = tmp_path / "dst"
    with pytest.raises(ShardError, match=r"shard_00003.npz'?: field 'wdl' row 5"):
        convert(src, dst, pack_size=1, workers=2, progress=False)
    assert temp_files(dst) == []
    on_disk = sorted(p.name for p in dst.glob("pack-*"))
    if (dst / "mmpool.json").exists():
        m = read_manifest(dst)
        assert sorted(p.file for p in m.packs) == on_disk  # every finished pack is recorded
        assert 3 not in [s.number for s in m.shards]
        assert verify_dirs([dst], progress=False) == []
    else:
        assert on_disk == []
    write_legacy_shard(src / "shard_00003.npz", expected(3, 40))
    convert(src, dst, pack_size=1, workers=2, progress=False)
    assert_converted(dst, synthetic_source(range(6), 40))


def test_manifest_is_plain_json(tmp_path: Path) -> None:
    (src,) = make_synthetic(tmp_path / "src", [1], 10)
    convert(src, tmp_path / "dst", progress=False)
    doc = json.loads((tmp_path / "dst" / "mmpool.json").read_text())
    assert doc["format"] == "mmpool" and doc["version"] == 1 and doc["pack_format"] == "npy"
    assert doc["schema"]["itemsize"] == ITEMSIZE
    assert [f["name"] for f in doc["schema"]["fields"]] == list(FIELDS)
