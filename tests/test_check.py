"""Tests for mmpool.ops.check: inspect output, and verify catching corrupt, truncated and missing packs."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

import mmpool.ops.check as check
from mmpool.convert.converter import convert
from mmpool.format.manifest import Manifest, read_manifest, write_manifest
from mmpool.ops.check import inspect_dirs, verify_dirs
from mmpool.testing.synthetic import make_synthetic

ITEMSIZE = 280


def make(tmp_path: Path, fmt: str = "npy", shards: int = 4, rows: int = 200, name: str = "dst") -> Path:
    """Shards of ``rows`` rows, two per pack."""
    (src,) = make_synthetic(tmp_path / f"src-{name}", [shards], rows)
    dst = tmp_path / name
    convert(src, dst, fmt=fmt, pack_size=2 * rows * ITEMSIZE, progress=False)
    return dst


def test_inspect(tmp_path: Path) -> None:
    dst = make(tmp_path, shards=3)
    a, b = read_manifest(dst).packs
    assert inspect_dirs([dst]) == "\n".join(
        [
            f"{dst}",
            "  pack format: npy",
            "  schema: 4 fields, 280 bytes per record",
            "    planes           uint8    (4, 8, 8)      offset 0",
            "    move             int16    ()             offset 256",
            "    wdl              float32  (3,)           offset 260",
            "    id               int64    ()             offset 272",
            "  shards: 3 (numbers 0-2)",
            "  records: 600",
            f"  bytes: {a.bytes + b.bytes:,}",
            "  packs: 2",
            f"    pack-00000.npy  400 records  {4096 + 400 * ITEMSIZE:,} bytes",
            f"    pack-00001.npy  200 records  {4096 + 200 * ITEMSIZE:,} bytes",
            "  numbering: last-integer",
            "  shard sources (number: source):",
            "    0: shard_00000.npz",
            "    1: shard_00001.npz",
            "    2: shard_00002.npz",
        ]
    )


def test_inspect_several_dirs_and_gaps(tmp_path: Path) -> None:
    one = make(tmp_path, shards=2, name="one")
    two = make(tmp_path, fmt="hdf5", shards=5, name="two")
    m = read_manifest(two)
    write_manifest(two, replace(m, shards=tuple(s for s in m.shards if s.number != 2)))
    text = inspect_dirs([one, two])
    blocks = text.split("\n\n")
    assert len(blocks) == 2
    assert blocks[0].startswith(f"{one}\n  pack format: npy\n")
    assert blocks[1].startswith(f"{two}\n  pack format: hdf5\n")
    assert "  shards: 4 (numbers 0-1,3-4)\n  records: 800\n" in blocks[1]
    assert "    pack-00002.h5  200 records  " in blocks[1]


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_verify_ok(tmp_path: Path, fmt: str) -> None:
    assert verify_dirs([make(tmp_path, fmt, name="a"), make(tmp_path, fmt, name="b")], progress=False) == []


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_verify_flipped_byte(tmp_path: Path, fmt: str) -> None:
    dst = make(tmp_path, fmt)
    m = read_manifest(dst)
    shard = m.shards[3]
    pack = m.packs[shard.pack]
    assert (shard.number, pack.file, shard.first_row) == (3, f"pack-00001.{'npy' if fmt == 'npy' else 'h5'}", 200)
    at = pack.data_offset + (shard.first_row + 17) * ITEMSIZE + 100
    with open(dst / pack.file, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x10]))
    problems = verify_dirs([dst], progress=False)
    assert len(problems) == 1
    assert problems[0].startswith(f"{dst}: shard 3 (shard_00003.npz) in {pack.file} rows 200-399: crc32 ")
    assert problems[0].endswith(
        f", the manifest says {shard.crc32:08x}; the pack is corrupt: restore it or convert the shards again"
    )


def test_verify_truncated_and_missing_packs(tmp_path: Path) -> None:
    dst = make(tmp_path, shards=6)
    m = read_manifest(dst)
    size = m.packs[0].bytes
    os.truncate(dst / "pack-00000.npy", size - 1000)
    (dst / "pack-00002.npy").unlink()
    assert verify_dirs([dst], progress=False) == [
        f"{dst}: {dst / 'pack-00000.npy'}: pack file truncated: expected {size} bytes, found {size - 1000}; "
        "restore it or convert the shards again",
        f"{dst}: {dst / 'pack-00002.npy'}: pack file missing (listed in mmpool.json); "
        "restore it or convert the shards again",
    ]


def test_verify_not_converted(tmp_path: Path) -> None:
    good = make(tmp_path)
    problems = verify_dirs([tmp_path / "nothing", good], progress=False)
    assert problems == [
        f"{tmp_path / 'nothing'} does not exist: it is not a converted directory; "
        f"convert its shards first: mmpool convert SRC {tmp_path / 'nothing'}"
    ]


def test_verify_reads_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dst = make(tmp_path, shards=2, rows=300)
    reads: list[int] = []
    real = check._raw_chunks

    def spy(path: Path, offset: int, start: int, stop: int):  # type: ignore[no-untyped-def]
        for block in real(path, offset, start, stop):
            reads.append(len(block))
            yield block

    monkeypatch.setattr(check, "CHUNK_BYTES", 10_000)
    monkeypatch.setattr(check, "_raw_chunks", spy)
    assert verify_dirs([dst], progress=False) == []
    assert max(reads) == 10_000
    assert sum(reads) == 600 * ITEMSIZE


def rewrite_chunked(dst: Path, index: int) -> None:
    """Rewrite one hdf5 pack as a chunked, gzip-compressed dataset (as other tools may) and fix the manifest."""
    m = read_manifest(dst)
    path = dst / m.packs[index].file
    with h5py.File(path, "r") as f:
        data = f["records"][()]
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("records", data=data, chunks=(64,), compression="gzip")
    packs = list(m.packs)
    packs[index] = replace(packs[index], bytes=path.stat().st_size)
    write_manifest(dst, Manifest(m.pack_format, m.schema, tuple(packs), m.shards))


def test_verify_chunked_hdf5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dst = make(tmp_path, "hdf5")
    rewrite_chunked(dst, 1)
    with h5py.File(dst / "pack-00001.h5", "r") as f:
        assert f["records"].chunks == (64,) and f["records"].compression == "gzip"
    monkeypatch.setattr(check, "CHUNK_BYTES", 50 * ITEMSIZE)
    assert verify_dirs([dst], progress=False) == []
    # Corrupt one record through h5py: the crc of shard 2 (first shard of that pack) no longer matches.
    with h5py.File(dst / "pack-00001.h5", "r+") as f:
        rec = f["records"][10]
        rec["move"] = rec["move"] + 1
        f["records"][10] = rec
    m = read_manifest(dst)
    write_manifest(
        dst, replace(m, packs=(m.packs[0], replace(m.packs[1], bytes=(dst / "pack-00001.h5").stat().st_size)))
    )
    problems = verify_dirs([dst], progress=False)
    assert len(problems) == 1
    assert problems[0].startswith(f"{dst}: shard 2 (shard_00002.npz) in pack-00001.h5 rows 0-199: crc32 ")


def test_verify_hdf5_wrong_dataset(tmp_path: Path) -> None:
    dst = make(tmp_path, "hdf5", shards=2)
    path = dst / "pack-00000.h5"
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("records", data=np.zeros(5, dtype=read_manifest(dst).schema.dtype))
    m = read_manifest(dst)
    write_manifest(dst, replace(m, packs=(replace(m.packs[0], bytes=path.stat().st_size),)))
    assert verify_dirs([dst], progress=False) == [
        f"{dst}: {path}: dataset 'records' holds 5 records of 280 bytes, the manifest says 400 of 280"
    ]
