"""The one-time converter: legacy shards of one directory -> pack files and a manifest (see ``mmpool.format``).

Phases: scan every shard's header (cheap, so a bad directory fails before anything is written), plan packs of
consecutive new shards, then convert pack by pack. The manifest is rewritten after each committed pack, so a
killed run keeps what it finished and a rerun converts only the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmpool.errors import ConfigError, ShardError
from mmpool.format import (
    MANIFEST_NAME,
    PACK_SUFFIX,
    Manifest,
    PackEntry,
    PackWriter,
    Schema,
    ShardEntry,
    checksum,
    read_manifest,
    write_manifest,
)
from mmpool.legacy import ShardInfo, check_finite, list_shards, read_shard, scan_shard, schema_mismatch

log = logging.getLogger("mmpool")

PACK_NAME = re.compile(r"^pack-(\d+)\.(npy|h5)$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class ConvertSummary:
    """What one ``convert`` call did. ``bytes`` counts the pack files written."""

    shards_converted: int
    shards_skipped: int
    records: int
    bytes: int
    seconds: float
    mb_per_s: float
    packs_written: int

    def __str__(self) -> str:
        return (
            f"converted {self.shards_converted} shards ({self.records:,} records, {self.bytes / 1e6:.1f} MB) "
            f"into {self.packs_written} packs in {self.seconds:.1f} s ({self.mb_per_s:.1f} MB/s); "
            f"{self.shards_skipped} shards were already converted"
        )


@dataclass(frozen=True)
class PackTask:
    """One pack to write: its final path and the shards (in order) that fill it. Picklable, holds no data."""

    path: Path
    kind: str
    schema: Schema
    shards: tuple[ShardInfo, ...]
    allow_nonfinite: bool

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as ``"4096"``, ``"512M"``, ``"2G"``, ``"1.5GB"`` (binary units)."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        value = int(size)
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:I?B)?\s*", str(size), re.IGNORECASE)
        if not m:
            raise ConfigError(f"pack size {size!r}: give bytes or a size such as '512M' or '2G'")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ConfigError(f"pack size {size!r}: must be positive")
    return value


def plan_packs(shards: list[ShardInfo], itemsize: int, pack_size: int) -> list[list[ShardInfo]]:
    """Group consecutive shards into packs of at most ``pack_size`` record bytes (a larger shard gets its own)."""
    groups: list[list[ShardInfo]] = []
    current: list[ShardInfo] = []
    size = 0
    for info in shards:
        nbytes = info.rows * itemsize
        if current and size + nbytes > pack_size:
            groups.append(current)
            current, size = [], 0
        current.append(info)
        size += nbytes
    if current:
        groups.append(current)
    return groups


def convert_pack(task: PackTask, on_rows: Callable[[int], None] | None = None) -> tuple[PackEntry, list[ShardEntry]]:
    """Read the task's shards, write and commit its pack; returns its entry and shard entries (``pack`` = 0).

    Runs in worker processes too: reads and writes happen here, only the small entries travel back.
    """
    dtype = task.schema.dtype
    writer = PackWriter(task.path, dtype, task.rows, task.kind)  # type: ignore[arg-type]
    entries: list[ShardEntry] = []
    try:
        first = 0
        for info in task.shards:
            arrays = read_shard(info)
            if not task.allow_nonfinite:
                check_finite(arrays, info.path)
            # zeros, not empty: padding bytes between fields are covered by the crc and must be reproducible.
            records = np.zeros(info.rows, dtype=dtype)
            for name in dtype.names or ():
                records[name] = arrays[name]
            del arrays
            writer.write(records)
            entries.append(ShardEntry(info.number, info.path.name, 0, first, info.rows, checksum(records)))
            first += info.rows
            if on_rows is not None:
                on_rows(info.rows)
        pack = writer.commit()
    except BaseException:
        writer.abort()
        raise
    log.debug("wrote %s: %d shards, %d records", task.path, len(entries), task.rows)
    return pack, entries


def _manifest_mismatch(schema: Schema, info: ShardInfo, manifest_path: Path) -> str | None:
    """The difference between a shard's fields and the manifest's schema (field order does not matter)."""
    have = schema.field_specs()
    names = set(have)
    for name in info.fields:
        if name not in names:
            return f"field {name!r} is in {str(info.path)!r} but not in {manifest_path}"
    for name in have:
        if name not in info.fields:
            return f"field {name!r} is in {manifest_path} but missing from {str(info.path)!r}"
    # Compare through Schema so dtype spellings ('=f4', '<f4') are normalised the same way as on disk.
    ordered = {name: info.fields[name] for name in have}
    theirs = Schema.from_fields(ordered).field_specs()
    for name, (dt, shape) in have.items():
        if theirs[name] != (dt, shape):
            return (
                f"field {name!r} is {dt} {shape} in {manifest_path} but {theirs[name][0]} {theirs[name][1]} "
                f"in {str(info.path)!r}"
            )
    return None


def _check_schemas(infos: list[ShardInfo], old: Manifest | None, dst: Path) -> Schema:
    """Every shard must match the first one and the existing manifest; returns the schema to write."""
    first = infos[0]
    for info in infos[1:]:
        diff = schema_mismatch(first, info)
        if diff:
            raise ShardError(f"shards of one directory must share their fields: {diff}")
    if old is None:
        return Schema.from_fields(first.fields)
    diff = _manifest_mismatch(old.schema, first, dst / MANIFEST_NAME)
    if diff:
        raise ConfigError(
            f"{dst} already holds converted shards of another schema: {diff}. "
            f"Its schema:\n{old.schema.describe()}\nConvert into another directory."
        )
    return old.schema


def _new_shards(infos: list[ShardInfo], old: Manifest | None, dst: Path) -> list[ShardInfo]:
    """The shards not yet in the manifest; a converted number with another source file name is an error."""
    if old is None:
        return infos
    known = {s.number: s for s in old.shards}
    out = []
    for info in infos:
        done = known.get(info.number)
        if done is None:
            out.append(info)
        elif done.source != info.path.name:
            raise ConfigError(
                f"shard number {info.number}: {str(info.path)!r} but {dst / MANIFEST_NAME} already holds "
                f"shard {info.number} converted from {done.source!r}; rename one of them or convert into a new directory"
            )
    return out


def _tidy(dst: Path, old: Manifest | None) -> int:
    """Delete temporaries of killed runs, warn about unreferenced packs; returns the next free pack number."""
    for tmp in sorted(dst.glob(".*.tmp-*")):
        log.info("removing %s, left over by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)
    referenced = {p.file for p in old.packs} if old else set()
    highest = -1
    for path in sorted(dst.iterdir()):
        m = PACK_NAME.match(path.name)
        if not m:
            continue
        highest = max(highest, int(m.group(1)))
        if path.name not in referenced:
            # Probably committed by a run killed before its manifest update; never reused, never deleted.
            log.warning("%s is not in %s: ignored (delete it to reclaim the space)", path, MANIFEST_NAME)
    for name in referenced:
        m = PACK_NAME.match(name)
        if m:
            highest = max(highest, int(m.group(1)))
    return highest + 1


def convert(
    src: str | Path,
    dst: str | Path,
    fmt: str = "npy",
    pack_size: int | str = 1 << 30,
    workers: int = 1,
    allow_nonfinite: bool = False,
    progress: bool = True,
) -> ConvertSummary:
    """Convert the legacy shards of ``src`` into packs in ``dst`` (incremental: converted shards are skipped).

    Raises ConfigError for bad parameters or a ``dst`` that does not fit, ShardError for bad shard files;
    nothing is written when a scan check fails, and a failed pack leaves the manifest as it was.
    ``workers > 1`` starts spawned processes: as with any multiprocessing, a calling script must keep its
    top-level code under ``if __name__ == "__main__":``.
    """
    start = time.perf_counter()
    src, dst = Path(src), Path(dst)
    if fmt not in PACK_SUFFIX:
        raise ConfigError(f"format {fmt!r}: use one of {', '.join(PACK_SUFFIX)}")
    pack_size = parse_size(pack_size)
    if workers < 1:
        raise ConfigError(f"workers={workers}: must be at least 1")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"{dst} is not a directory: give a directory for the converted packs")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ConfigError(f"{dst}: the destination must be another directory than the shards")

    # Phase 1: scan (headers only) and check; nothing is written before this passes.
    listed = list_shards(src)
    old = read_manifest(dst) if (dst / MANIFEST_NAME).exists() else None
    if old is not None and old.pack_format != fmt:
        raise ConfigError(
            f"{dst} holds {old.pack_format} packs; convert into it with --format {old.pack_format} "
            f"or use another directory for {fmt}"
        )
    infos = [scan_shard(path, number) for number, path in listed]
    schema = _check_schemas(infos, old, dst)
    new = _new_shards(infos, old, dst)
    skipped = len(infos) - len(new)
    log.info("%s: %d shards, %d already converted, %d to convert", src, len(infos), skipped, len(new))

    dst.mkdir(parents=True, exist_ok=True)
    next_pack = _tidy(dst, old)
    if not new:
        return ConvertSummary(0, skipped, 0, 0, time.perf_counter() - start, 0.0, 0)

    tasks = [
        PackTask(dst / f"pack-{next_pack + k:05d}{PACK_SUFFIX[fmt]}", fmt, schema, tuple(group), allow_nonfinite)
        for k, group in enumerate(plan_packs(new, schema.itemsize, pack_size))
    ]
    packs = list(old.packs) if old else []
    shards = list(old.shards) if old else []
    written: list[PackEntry] = []

    def commit(pack: PackEntry, entries: list[ShardEntry]) -> None:
        # The pack is already durable under its final name; the manifest now starts referring to it.
        index = len(packs)
        packs.append(pack)
        shards.extend(replace(s, pack=index) for s in entries)
        shards.sort(key=lambda s: s.number)
        write_manifest(dst, Manifest(fmt, schema, tuple(packs), tuple(shards)))  # type: ignore[arg-type]
        written.append(pack)

    total = sum(t.rows for t in tasks)
    with tqdm(total=total, unit="rec", unit_scale=True, desc="convert", disable=not progress) as bar:
        if workers == 1 or len(tasks) == 1:
            for task in tasks:
                commit(*convert_pack(task, bar.update))
        else:
            _convert_parallel(tasks, min(workers, len(tasks)), commit, bar)

    seconds = time.perf_counter() - start
    nbytes = sum(p.bytes for p in written)
    summary = ConvertSummary(
        len(new), skipped, total, nbytes, seconds, nbytes / 1e6 / seconds if seconds > 0 else 0.0, len(written)
    )
    log.info("%s -> %s: %s", src, dst, summary)
    return summary


def _convert_parallel(
    tasks: list[PackTask], workers: int, commit: Callable[[PackEntry, list[ShardEntry]], None], bar: tqdm
) -> None:
    """Convert packs in worker processes; the manifest is updated here as they complete.

    On a failure, pending packs are cancelled, packs already running are still recorded when they succeed
    (so their files are not orphaned), and the first error is re-raised.
    """
    # spawn: workers start clean instead of inheriting the parent's threads (tqdm's monitor, torch) through fork.
    ctx = multiprocessing.get_context("spawn")
    error: BaseException | None = None
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(convert_pack, task): task for task in tasks}
        try:
            for fut in cf.as_completed(futures):
                try:
                    pack, entries = fut.result()
                except cf.CancelledError:
                    continue
                except BaseException as exc:
                    if error is None:
                        error = exc
                        for other in futures:
                            other.cancel()
                    continue
                commit(pack, entries)
                bar.update(futures[fut].rows)
        except BaseException:
            for other in futures:
                other.cancel()
            raise
    if error is not None:
        raise error
