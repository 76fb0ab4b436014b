"""Looking at converted directories: ``inspect_dirs`` summarises them, ``verify_dirs`` re-checks every byte."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmpool.errors import ConfigError, ShardError
from mmpool.format.manifest import (
    HDF5_DATASET,
    Manifest,
    PackEntry,
    ShardEntry,
    check_pack_file,
    read_manifest,
    read_sources,
)
from mmpool.store.ranges import to_range

CHUNK_BYTES = 16 << 20  # per read: large enough for sequential speed, small enough to keep memory flat


def inspect_dirs(dirs: Sequence[str | Path]) -> str:
    """A human-readable summary of each converted directory (format, schema, shards, records, packs)."""
    blocks = []
    for d in dirs:
        m = read_manifest(Path(d))
        records = sum(s.rows for s in m.shards)
        numbers = to_range([s.number for s in m.shards]) or "none"
        lines = [
            f"{d}",
            f"  pack format: {m.pack_format}",
            f"  schema: {len(m.schema.fields)} fields, {m.schema.itemsize} bytes per record",
            *("  " + line for line in m.schema.describe().splitlines()),
            f"  shards: {len(m.shards)} (numbers {numbers})",
            f"  records: {records:,}",
            f"  bytes: {sum(p.bytes for p in m.packs):,}",
            f"  packs: {len(m.packs)}",
            *(f"    {p.file}  {p.rows:,} records  {p.bytes:,} bytes" for p in m.packs),
        ]
        lines.append(f"  numbering: {m.numbering}")
        lines += _adaptations(m)
        lines += _sources(Path(d), m)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _adaptations(m: Manifest) -> list[str]:
    """One line per adaptation (pad, fill, drop) and the shards it was applied to."""
    by_step: dict[str, list[int]] = {}
    for s in m.shards:
        for step in s.adapted:
            by_step.setdefault(step, []).append(s.number)
    if not by_step:
        return []
    return ["  adapted to the schema:", *(f"    {step}: shards {to_range(n)}" for step, n in by_step.items())]


def _sources(d: Path, m: Manifest) -> list[str]:
    """The number <-> source map: one line per shard, its source file (or its games and their first rows)."""
    parts = read_sources(d, m)
    lines = ["  shard sources (number: source):"]
    for s in m.shards:
        games = parts.get(s.number)
        if games:
            sidecar = m.packs[s.pack].sources
            lines.append(
                f"    {s.number}: {len(games)} games, {games[0][0]} .. {games[-1][0]} (rows of each: {sidecar})"
            )
        else:
            lines.append(f"    {s.number}: {s.source}")
    return lines


def _raw_chunks(path: Path, offset: int, start: int, stop: int) -> Iterator[bytes]:
    """Bytes ``offset+start .. offset+stop`` of a file, in CHUNK_BYTES reads."""
    with open(path, "rb") as f:
        f.seek(offset + start)
        left = stop - start
        while left > 0:
            block = f.read(min(CHUNK_BYTES, left))
            if not block:
                raise ShardError(f"{path}: file ended {left} bytes early; restore it or convert the shards again")
            left -= len(block)
            yield block


class _PackReader:
    """Sequential record bytes of one pack: plain reads at the data offset, or h5py for chunked HDF5 packs."""

    def __init__(self, path: Path, kind: str, pack: PackEntry, itemsize: int) -> None:
        self.path = path
        self.itemsize = itemsize
        self.offset: int | None = pack.data_offset
        self.dset = None
        self._file = None
        if kind == "hdf5":
            import h5py

            try:
                self._file = h5py.File(path, "r")
                dset = self._file[HDF5_DATASET]
            except (OSError, KeyError) as exc:
                self.close()
                raise ShardError(f"{path}: cannot open HDF5 pack ({exc})") from exc
            if dset.dtype.itemsize != itemsize or len(dset) != pack.rows:
                self.close()
                raise ShardError(
                    f"{path}: dataset '{HDF5_DATASET}' holds {len(dset)} records of {dset.dtype.itemsize} bytes, "
                    f"the manifest says {pack.rows} of {itemsize}"
                )
            if dset.chunks is None and dset.compression is None and dset.id.get_offset() is not None:
                self.offset = int(dset.id.get_offset())
            else:
                self.offset, self.dset = None, dset

    def chunks(self, first: int, stop: int) -> Iterator[memoryview | bytes]:
        """The bytes of records ``first..stop-1``, a bounded chunk at a time."""
        if self.dset is None:
            assert self.offset is not None
            yield from _raw_chunks(self.path, self.offset, first * self.itemsize, stop * self.itemsize)
            return
        step = max(1, CHUNK_BYTES // self.itemsize)
        for lo in range(first, stop, step):
            hi = min(stop, lo + step)
            buf = np.zeros(hi - lo, dtype=self.dset.dtype)  # zeros: padding bytes as the converter wrote them
            self.dset.read_direct(buf, np.s_[lo:hi])
            yield memoryview(buf.view(np.uint8).reshape(-1).data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _verify_pack(d: Path, m: Manifest, index: int, shards: list[ShardEntry], bar: tqdm) -> list[str]:
    pack = m.packs[index]
    try:
        path = check_pack_file(d, pack)
        reader = _PackReader(path, m.pack_format, pack, m.schema.itemsize)
    except ShardError as exc:
        return [f"{d}: {exc}"]
    problems = []
    try:
        for s in sorted(shards, key=lambda s: s.first_row):
            crc = 0
            for block in reader.chunks(s.first_row, s.first_row + s.rows):
                crc = zlib.crc32(block, crc)
                bar.update(len(block))
            if crc & 0xFFFFFFFF != s.crc32:
                problems.append(
                    f"{d}: shard {s.number} ({s.source}) in {pack.file} rows {s.first_row}-{s.first_row + s.rows - 1}: "
                    f"crc32 {crc & 0xFFFFFFFF:08x}, the manifest says {s.crc32:08x}; "
                    "the pack is corrupt: restore it or convert the shards again"
                )
    except ShardError as exc:
        problems.append(f"{d}: {exc}")
    finally:
        reader.close()
    return problems


def verify_dirs(dirs: Sequence[str | Path], progress: bool = True) -> list[str]:
    """Check every pack of every directory (presence, size, per-shard crc32); returns the problems, [] if none."""
    problems: list[str] = []
    manifests: list[tuple[Path, Manifest]] = []
    for d in map(Path, dirs):
        try:
            manifests.append((d, read_manifest(d)))
        except (ConfigError, ShardError) as exc:  # not converted, or a broken manifest: a problem to report
            problems.append(str(exc))
    total = sum(s.rows * m.schema.itemsize for _, m in manifests for s in m.shards)
    with tqdm(total=total, unit="B", unit_scale=True, desc="verify", disable=not progress) as bar:
        for d, m in manifests:
            by_pack: dict[int, list[ShardEntry]] = {}
            for s in m.shards:
                by_pack.setdefault(s.pack, []).append(s)
            for index in range(len(m.packs)):
                problems += _verify_pack(d, m, index, by_pack.get(index, []), bar)
    return problems
