"""The one-time converter: legacy shards of one directory -> pack files and a manifest (see ``mmpool.format.manifest``).

Phases: list and number the inputs (``mmpool.convert.sources``), scan every new shard's header or game's first bytes
(cheap, so a bad directory fails before anything is written), fix the reference schema and what each shard needs
to take it (``mmpool.convert.adapt``), group consecutive new shards into packs, then convert pack by pack. The manifest is rewritten after each committed pack, so a
killed run keeps what it finished and a rerun converts only the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmpool.convert import adapt, lc0
from mmpool.convert.legacy import SHARD_SUFFIXES, ShardInfo, check_finite, read_shard, scan_shard
from mmpool.convert.sources import ORDERS, list_files, number_files, order_names
from mmpool.errors import ConfigError
from mmpool.format.manifest import (
    MANIFEST_NAME,
    PACK_SUFFIX,
    SOURCES_SUFFIX,
    Manifest,
    PackEntry,
    Schema,
    ShardEntry,
    read_manifest,
    read_sources,
    write_manifest,
    write_pack,
    write_sources,
)

log = logging.getLogger("mmpool")

PACK_NAME = re.compile(r"^pack-(\d+)\.(npy|h5|sources\.json)$")
LC0_SUFFIXES = (lc0.GAME_SUFFIX, lc0.ARCHIVE_SUFFIX)
# lc0 records are ~8.4 KB: 25,000 of them (~210 MB) make a shard as large in bytes as ~700k positions of 300 B.
LC0_ROWS_PER_SHARD = 25_000
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
class ShardJob:
    """One shard to write: a legacy file (``info``) or consecutive lc0 games (``games``), and what to do to its
    fields to give it the directory's schema (``adapted``). Picklable, holds no data."""

    number: int
    source: str
    rows: int
    fields: dict[str, tuple[np.dtype, tuple[int, ...]]]
    info: ShardInfo | None = None
    games: tuple[lc0.Game, ...] = ()
    adapted: tuple[str, ...] = ()

    def parts(self) -> list[tuple[str, int]]:
        """(game name, first row inside the shard) of each game."""
        firsts = np.cumsum([0] + [g.rows for g in self.games[:-1]])
        return [(g.name, int(first)) for g, first in zip(self.games, firsts)]


@dataclass(frozen=True)
class PackTask:
    """One pack to write: its final path and the shards (in order) that fill it. Picklable, holds no data."""

    path: Path
    kind: str
    schema: Schema
    shards: tuple[ShardJob, ...]
    allow_nonfinite: bool
    fill: dict[str, np.ndarray]

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


def group_into_packs(shards: list[ShardJob], itemsize: int, pack_size: int) -> list[list[ShardJob]]:
    """Group consecutive shards into packs of at most ``pack_size`` record bytes (a larger shard gets its own)."""
    groups: list[list[ShardJob]] = []
    current: list[ShardJob] = []
    size = 0
    for job in shards:
        nbytes = job.rows * itemsize
        if current and size + nbytes > pack_size:
            groups.append(current)
            current, size = [], 0
        current.append(job)
        size += nbytes
    if current:
        groups.append(current)
    return groups


def _shard_arrays(job: ShardJob, allow_nonfinite: bool) -> dict[str, np.ndarray] | np.ndarray:
    """A shard's source data, read and checked (in the worker process that writes its pack): arrays by field, or
    for lc0 games the records themselves, in the aligned layout of their version."""
    if job.info is not None:
        arrays = read_shard(job.info)
        if not allow_nonfinite:
            check_finite(arrays, job.info.path)
        return arrays
    # The aligned record has the packed struct's offsets (lc0 aligns every field), plus tail padding: one
    # strided byte copy per game instead of one copy per field.
    records = np.zeros(job.rows, dtype=Schema.from_fields(job.fields).dtype)
    raw = records.view(np.uint8).reshape(job.rows, -1)
    first = 0
    for game in job.games:
        packed = lc0.read_game(game, allow_nonfinite)
        raw[first : first + game.rows, : packed.dtype.itemsize] = packed.view(np.uint8).reshape(game.rows, -1)
        first += game.rows
    return records


def convert_pack(task: PackTask, on_rows: Callable[[int], None] | None = None) -> tuple[PackEntry, list[ShardEntry]]:
    """Read the task's shards, write and commit its pack; returns its entry and shard entries (``pack`` = 0).

    Runs in worker processes too: reads, decompression and writes happen here, only the small entries travel back.
    """

    def shards() -> Iterator[tuple[int, str, dict[str, np.ndarray] | np.ndarray]]:
        for job in task.shards:
            arrays = _shard_arrays(job, task.allow_nonfinite)
            if job.adapted:
                if isinstance(arrays, np.ndarray):
                    arrays = {name: arrays[name] for name in arrays.dtype.names or ()}
                arrays = adapt.apply(arrays, task.schema, task.fill, job.rows)
            yield job.number, job.source, arrays
            if on_rows is not None:
                on_rows(job.rows)

    pack, entries = write_pack(task.path, task.kind, task.schema, task.rows, shards())  # type: ignore[arg-type]
    log.debug("wrote %s: %d shards, %d records", task.path, len(entries), task.rows)
    return pack, [replace(e, adapted=p.adapted) for e, p in zip(entries, task.shards)]


def _legacy_jobs(src: Path, files: list[str], old: Manifest | None, order: str) -> tuple[list[ShardJob], str]:
    """Scan the legacy files not yet converted and number them; returns their jobs and the numbering rule."""
    known = {s.source: s.number for s in old.shards} if old else {}
    gone = sorted(set(known) - set(files))
    if gone:
        log.warning(
            "%s: %d converted shards' source files are no longer there (e.g. %r, shard %d); their converted "
            "records stay (a renamed file is converted again under a new number)",
            src,
            len(gone),
            gone[0],
            known[gone[0]],
        )
    numbers, rule = number_files(files, known, old.numbering if old else None, order, src)
    jobs = []
    for name, number in sorted(numbers.items(), key=lambda item: item[1]):
        info = scan_shard(src / name, number)
        jobs.append(ShardJob(number, name, info.rows, info.fields, info=info))
    return jobs, rule


def _game_jobs(
    src: Path, dst: Path, files: list[str], old: Manifest | None, order: str, rows_per_shard: int
) -> tuple[list[ShardJob], str]:
    """Scan the lc0 games not yet converted and group them, in ``order``, into shards of about
    ``rows_per_shard`` rows (whole games; a shard holds one record version), numbered after the existing ones."""
    known = {name for parts in (read_sources(dst, old).values() if old else ()) for name, _ in parts}
    games = {g.name: g for g in lc0.list_games(src, files) if g.name not in known}
    ordered = order_names(list(games), order, src)
    scanned = [
        lc0.scan_game(games[name]) for name in tqdm(ordered, desc="scan", unit="game", disable=len(ordered) < 1000)
    ]
    jobs: list[ShardJob] = []
    number = max((s.number for s in old.shards), default=-1) + 1 if old else 0
    group: list[lc0.Game] = []
    for k, game in enumerate(scanned):
        group.append(game)
        last = k + 1 == len(scanned)
        if last or sum(g.rows for g in group) >= rows_per_shard or scanned[k + 1].version != game.version:
            rows = sum(g.rows for g in group)
            jobs.append(ShardJob(number, group[0].name, rows, lc0.fields_of(game.version), games=tuple(group)))
            number, group = number + 1, []
    if jobs:
        log.info(
            "%s: %d new games in %d shards, numbered from %d in %s order",
            src,
            len(scanned),
            len(jobs),
            jobs[0].number,
            order,
        )
    return jobs, f"order:{order}"


def _reference(
    jobs: list[ShardJob], old: Manifest | None, like: Path | None, flags: adapt.Adapt, dst: Path, src: Path
) -> tuple[Schema, str]:
    """The schema every shard must take, and how messages name it: the existing manifest's, else ``like``'s,
    else the first shard's (without the fields to drop)."""
    theirs = read_manifest(like) if like is not None else None
    if old is not None:
        if theirs is not None and theirs.schema != old.schema:
            raise ConfigError(
                f"--like {like}: {dst} already holds shards of another schema; its own schema is the reference. "
                f"Its schema:\n{old.schema.describe()}\n{like}:\n{theirs.schema.describe()}\n"
                "Convert into a new directory to take the other schema."
            )
        return old.schema, str(dst / MANIFEST_NAME)
    if theirs is not None:
        return theirs.schema, f"{Path(like) / MANIFEST_NAME} (--like)"  # type: ignore[arg-type]
    first = jobs[0]
    return Schema.from_fields(flags.reference(first.fields)), f"the first shard {str(src / first.source)!r}"


def _tidy(dst: Path, old: Manifest | None) -> int:
    """Delete temporaries of killed runs, warn about unreferenced packs; returns the next free pack number."""
    for tmp in sorted(dst.glob(".*.tmp-*")):
        log.info("removing %s, left over by an interrupted run", tmp)
        tmp.unlink(missing_ok=True)
    referenced = {name for p in old.packs for name in (p.file, p.sources) if name} if old else set()
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
    recursive: bool = False,
    order: str = "natural",
    like: str | Path | None = None,
    pad: Sequence[str] = (),
    fill: Sequence[str] = (),
    drop: Sequence[str] = (),
    rows_per_shard: int = LC0_ROWS_PER_SHARD,
) -> ConvertSummary:
    """Convert the shards of ``src`` into packs in ``dst`` (incremental: converted shards are skipped).

    Inputs are legacy shards (``.npz .npy .pt .h5``, one file a shard, numbered as ``mmpool.convert.sources`` says,
    ``order`` choosing the order when names do not number them) or lc0 games (``.gz`` files and ``.tar``
    archives of them, grouped into shards of about ``rows_per_shard`` rows), in ``src`` or, with ``recursive``,
    its subdirectories too. ``like`` (a converted directory) gives the record schema to convert to when ``dst``
    has none yet; ``pad``, ``fill`` (``FIELD=VALUE``) and ``drop`` resolve differences (``mmpool.convert.adapt``).

    Raises ConfigError for bad parameters or shards that need a flag, ShardError for bad files; nothing is
    written when a scan check fails, and a failed pack leaves the manifest as it was.
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
    if rows_per_shard < 1:
        raise ConfigError(f"rows_per_shard={rows_per_shard}: must be at least 1")
    if order not in ORDERS:
        raise ConfigError(f"order {order!r}: use one of {', '.join(ORDERS)}")
    if dst.exists() and not dst.is_dir():
        raise ConfigError(f"{dst} is not a directory: give a directory for the converted packs")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ConfigError(f"{dst}: the destination must be another directory than the shards")
    flags = adapt.Adapt.parse(pad, fill, drop)

    # Phase 1: list, number, scan (headers only) and check; nothing is written before this passes.
    files = list_files(src, set(SHARD_SUFFIXES) | set(LC0_SUFFIXES), recursive, exclude=dst)
    games = [f for f in files if f.lower().endswith(LC0_SUFFIXES)]
    if games and len(games) != len(files):
        other = next(f for f in files if not f.lower().endswith(LC0_SUFFIXES))
        raise ConfigError(
            f"{src} holds lc0 games ({games[0]!r}) and other shards ({other!r}): convert each kind from its own "
            "directory into its own destination"
        )
    old = read_manifest(dst) if (dst / MANIFEST_NAME).exists() else None
    if old is not None and old.pack_format != fmt:
        raise ConfigError(
            f"{dst} holds {old.pack_format} packs; convert into it with --format {old.pack_format} "
            f"or use another directory for {fmt}"
        )
    if games:
        new, numbering = _game_jobs(src, dst, files, old, order, rows_per_shard)
    else:
        new, numbering = _legacy_jobs(src, files, old, order)
    # Converted inputs still there: legacy files by name; for games, the shards already in the manifest.
    converted = (len(files) - len(new)) if not games else (len(old.shards) if old else 0)
    log.info("%s: %d shards, %d already converted, %d to convert", src, converted + len(new), converted, len(new))
    if new:
        how = (
            "the last integer of each file name" if numbering == "last-integer" else f"{numbering.split(':')[1]} order"
        )
        log.info("%s: shard numbers %d.. given by %s (numbering %s)", src, new[0].number, how, numbering)
    if not new:
        dst.mkdir(parents=True, exist_ok=True)
        _tidy(dst, old)
        return ConvertSummary(0, converted, 0, 0, time.perf_counter() - start, 0.0, 0)
    schema, ref_where = _reference(new, old, Path(like) if like is not None else None, flags, dst, src)
    fill_values = flags.check(schema, ref_where)
    new = [replace(p, adapted=flags.steps(schema, p.fields, repr(str(src / p.source)), ref_where)) for p in new]
    adapted = sum(1 for p in new if p.adapted)
    if adapted:
        log.info(
            "%s: %d of %d new shards adapted to %s: %s",
            src,
            adapted,
            len(new),
            ref_where,
            "; ".join(sorted({step for p in new for step in p.adapted})),
        )

    dst.mkdir(parents=True, exist_ok=True)
    next_pack = _tidy(dst, old)
    tasks = [
        PackTask(
            dst / f"pack-{next_pack + k:05d}{PACK_SUFFIX[fmt]}", fmt, schema, tuple(group), allow_nonfinite, fill_values
        )
        for k, group in enumerate(group_into_packs(new, schema.itemsize, pack_size))
    ]
    by_path = {t.path.name: t for t in tasks}
    packs = list(old.packs) if old else []
    shards = list(old.shards) if old else []
    written: list[PackEntry] = []

    def commit(pack: PackEntry, entries: list[ShardEntry]) -> None:
        # The pack is already durable under its final name; the manifest now starts referring to it.
        task = by_path[pack.file]
        if any(p.games for p in task.shards):
            name = Path(pack.file).stem + SOURCES_SUFFIX
            pack = replace(pack, sources=write_sources(dst / name, {p.number: p.parts() for p in task.shards}))
        index = len(packs)
        packs.append(pack)
        shards.extend(replace(s, pack=index) for s in entries)
        shards.sort(key=lambda s: s.number)
        write_manifest(dst, Manifest(fmt, schema, tuple(packs), tuple(shards), numbering))  # type: ignore[arg-type]
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
        len(new), converted, total, nbytes, seconds, nbytes / 1e6 / seconds if seconds > 0 else 0.0, len(written)
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
