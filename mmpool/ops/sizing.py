"""Planning a run before it starts: how large a pool fits under a memory cap, what it costs, what it maps, and how
long it takes to build.

    size_run(dirs, max_memory_gb=5, pool_size=None, workers=0, batch_size=1024) -> Sizing   (``mmpool plan DIR...``)

Memory is counted the way the running stream counts it (``mmpool.stream.memory``): anonymous memory of the training process
and its DataLoader workers. The baseline is this process with torch imported. A forked worker shares the parent's
pages; where the kernel reports proportional anonymous memory (``Pss_Anon``) they count once over the group and a
worker adds only what it writes (``WORKER_BYTES``, measured); where it does not, ``rss - shared`` counts the
baseline again in every worker. On top come the pool (8 bytes an entry, split between the workers) and the gathered
batch buffers of every process that gathers (the same ``4 x batch x record`` the dataset reserves).

The pool window is derived from the schedule, not guessed: the pool of one participant is replayed with shard counts
only (fill in activation order, draw until below the refill threshold, refill, release exhausted packs as the dataset
does), and the window is what the pool spans right after the refill where it spans the most: the shards with entries
in it, the packs those shards live in (a pack is mapped whole, from its first activated row until no entry of it is
left), and the record bytes of those shards (the page-cache working set all workers share).

The page cache: the window's records are gathered at random, so they are read from disk again and again unless they
all fit in the memory the page cache may use (the memory cgroup's limit where one applies, else RAM, less anonymous
memory). The plan warns when they do not, and ``probe_seconds`` > 0 measures the rate of random batches through the
store (per-record hints, as the stream reads rows it has not read ahead): the rate to expect when the window does not
fit, once the part that is cached is accounted for.

The build time is the time of the first fill of one participant's pool, calibrated by timing ``IndexPool.fill`` of
1M and 4M entries on this machine.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import mmap
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpool.config import BATCH_BUFFERS, PREFETCH_BATCHES, StreamConfig
from mmpool.errors import check_int
from mmpool.sampling.entries import ENTRY_BYTES
from mmpool.sampling.pool import IndexPool, participant_pool, pool_capacity
from mmpool.sampling.schedule import Segments, Weights, interleave, slice_rows, split_epoch
from mmpool.store.catalog import Catalog
from mmpool.store.gather import ShardStore
from mmpool.store.pagecache import cache_limit
from mmpool.stream.memory import GIB, anon_bytes

HEADROOM = 32 << 20  # left free under the cap: what a process allocates between this plan and the pool
# What a DataLoader worker writes of its own (pages copied on write, its interpreter's allocations), pool aside:
# measured 8 MB each with torch 2.13 on Linux 6.18 (1, 2 and 4 workers); 12 MB leaves a margin.
WORKER_BYTES = 12 << 20
MAX_REFILLS = 5000  # refills replayed for the window; the window forms within the first few dozen
_CALIBRATE = (1 << 20, 1 << 22)


@dataclass(frozen=True)
class Sizing:
    """The figures of one configuration (per rank). Bytes are bytes, times are seconds."""

    dirs: list[str]
    records: int
    shards: int
    packs: int
    itemsize: int
    factor: int  # symmetries per position (augmentation)
    world_size: int
    workers: int  # DataLoader workers (0: the main process streams)
    batch_size: int
    max_memory_bytes: int
    baseline_bytes: int  # anonymous memory of the training process before the pool
    baseline_given: bool  # given by the caller (else measured: this process, with torch imported)
    worker_bytes: int  # what each DataLoader worker adds to the count, pool and batches aside
    batch_bytes: int  # gathered batch buffers of one gathering process
    max_pool_size: int  # the largest pool_size that fits under the cap
    pool_size: int  # the pool_size planned (asked for, or the largest useful one that fits)
    pool_entries: int  # entries the pool actually holds (a pool never outgrows its participant's epoch)
    refill_threshold: int
    window_shards: int  # shards with entries in one participant's pool at its widest
    window_packs: int  # packs mapped at once by one process
    window_mapped_bytes: int  # their mapped bytes (address space of one process; file-backed, not counted)
    window_shard_bytes: int  # record bytes of the window's shards: the page-cache working set of all workers
    max_open_packs: int
    refills_replayed: int
    refills_total: int
    build_seconds: float  # first fill of one participant's pool
    fill_ns_per_entry: float  # calibration at 1M entries
    cache_bytes: int  # memory the page cache may use (cgroup limit or RAM, less anonymous memory)
    cache_source: str  # where that limit comes from
    probe_rate: float | None = None  # records/s of random batches through the store (None: not probed)
    probe_cached: float | None = None  # fraction of the probed rows that were cached before they were read

    @property
    def window_fits_cache(self) -> bool:
        return self.window_shard_bytes <= self.cache_bytes

    @property
    def gatherers(self) -> int:
        return max(1, self.workers)

    @property
    def pool_bytes(self) -> int:
        return self.pool_entries * ENTRY_BYTES

    @property
    def expected_bytes(self) -> int:
        """Anonymous memory the cap will count: baseline, workers, batch buffers and the pool."""
        return (
            self.baseline_bytes + self.workers * self.worker_bytes + self.gatherers * self.batch_bytes + self.pool_bytes
        )

    @property
    def fits(self) -> bool:
        return self.pool_size <= self.max_pool_size

    def __str__(self) -> str:
        who = (
            "the training process"
            if not self.workers
            else f"the training process and its {self.workers} DataLoader worker{'s' * (self.workers > 1)}"
        )
        ranks = f" per rank (world size {self.world_size})" if self.world_size > 1 else ""
        sym = f", {self.factor} symmetries" if self.factor > 1 else ""
        lines = [
            f"plan for {len(self.dirs)} director{'ies' if len(self.dirs) > 1 else 'y'}: {self.records:,} records "
            f"of {self.itemsize} B in {self.shards:,} shards, {self.packs:,} packs{sym}",
            f"memory cap {self.max_memory_bytes / GIB:.2f} GiB, anonymous memory of {who}{ranks}:",
            f"  baseline  {_size(self.baseline_bytes)}      ("
            + ("given" if self.baseline_given else "this process, with torch imported")
            + ")",
            *(
                [
                    f"  workers   {_size(self.worker_bytes)} x {self.workers}  (what each worker writes of its own"
                    + (
                        "; without Pss_Anon, rss - shared counts the parent's pages again)"
                        if self.worker_bytes > WORKER_BYTES
                        else ")"
                    )
                ]
                if self.workers
                else []
            ),
            f"  batches   {_size(self.batch_bytes)} x {self.gatherers}  ({BATCH_BUFFERS} + {PREFETCH_BATCHES} made ahead x batch "
            f"{self.batch_size:,} x {self.itemsize} B per gathering process)",
            f"  pool      {_size(self.pool_bytes)}      ({self.pool_entries:,} entries x {ENTRY_BYTES} B; "
            f"refill below {self.refill_threshold:,})",
            f"  total     {_size(self.expected_bytes)}      of {self.max_memory_bytes / GIB:.2f} GiB",
        ]
        if self.fits:
            lines.append(
                f"pool_size={self.pool_size:,} fits; the largest pool that fits is {self.max_pool_size:,} entries"
            )
        else:
            lines.append(
                f"pool_size={self.pool_size:,} does NOT fit: the largest pool that fits is "
                f"{self.max_pool_size:,} entries; lower pool_size or raise --max-memory-gb"
            )
        if self.pool_entries < self.pool_size:
            lines.append(
                f"  (the pool holds the whole epoch: {self.pool_entries:,} entries; a larger pool adds nothing)"
            )
        lines.append(
            f"pool window (one participant, at its widest): {self.window_shards:,} shards in {self.window_packs:,} "
            f"packs; {_size(self.window_mapped_bytes).strip()} mapped per process (file-backed, not counted); "
            f"page-cache working set {_size(self.window_shard_bytes).strip()} (the records of those shards)"
        )
        if self.window_packs > self.max_open_packs:
            lines.append(
                f"  warning: the window spans {self.window_packs} packs but max_open_packs="
                f"{self.max_open_packs}: packs will be unmapped and mapped again; raise max_open_packs"
            )
        if self.refills_replayed < self.refills_total:
            lines.append(f"  (window from the first {self.refills_replayed:,} of {self.refills_total:,} refills)")
        cache = (
            f"page cache: window {_size(self.window_shard_bytes).strip()} against {_size(self.cache_bytes).strip()} "
            f"the page cache may use ({self.cache_source}, less anonymous memory)"
        )
        if self.window_fits_cache:
            lines.append(cache + ": fits; once read, the window is gathered from RAM")
        else:
            share = self.cache_bytes / max(1, self.window_shard_bytes)
            lines.append(
                cache + f": does NOT fit: about {1 - share:.0%} of the gathers read from disk; lower pool_size "
                f"(to about {int(self.pool_entries * share * 0.9):,} entries) or raise the memory limit"
            )
        if self.probe_rate is not None and self.probe_cached is not None:
            note = (
                "; the packs were mostly cached, so this measured the cache, not the disk"
                if self.probe_cached > 0.5
                else ""
            )
            lines.append(
                f"  random-read probe: {self.probe_rate:,.0f} records/s in batches of {self.batch_size:,} "
                f"({self.probe_cached:.0%} of the probed rows were cached){note}"
            )
            if not self.window_fits_cache and self.probe_cached <= 0.5:
                share = min(1.0, self.cache_bytes / max(1, self.window_shard_bytes))
                lines.append(
                    f"  expected disk-bound rate: about {self.probe_rate / (1 - share * 0.999):,.0f} records/s"
                )
        workers = f"each of {self.gatherers} workers builds its part in parallel, " if self.workers > 1 else ""
        took = f"{self.build_seconds * 1000:.0f} ms" if self.build_seconds < 1 else f"{self.build_seconds:.1f} s"
        lines.append(
            f"build: about {took} for the first fill ({workers}calibrated at "
            f"{self.fill_ns_per_entry:.1f} ns per entry on this machine)"
        )
        return "\n".join(lines)


def size_run(
    dirs: Sequence[str | Path],
    max_memory_gb: float = 5.0,
    pool_size: int | None = None,
    workers: int = 0,
    batch_size: int = 1024,
    *,
    factor: int = 1,
    world_size: int = 1,
    refill_threshold: int | None = None,
    shard_ranges: Sequence[str] | str | None = None,
    weights: Weights = "shards",
    max_open_packs: int = 64,
    baseline_gb: float | None = None,
    seed: int = 0,
    probe_seconds: float = 0.0,
) -> Sizing:
    """Size one rank of a StreamingMixedShardDataset run over ``dirs`` (see the module docstring).

    ``pool_size`` None plans the largest pool that fits, but no larger than the entries of an epoch.
    ``baseline_gb`` None measures this process, with torch imported (a training process imports it anyway).
    ``probe_seconds`` > 0 reads random batches of records for about that long (the expected disk-bound rate).
    """
    check_int("workers", workers, 0)
    check_int("factor", factor, 1)
    # The dataset's own checks of the parameters they share (pool_size and refill_threshold again once known).
    config = StreamConfig(
        tuple(str(d) for d in dirs),
        shard_ranges,
        pool_size=2 if pool_size is None else pool_size,
        refill_threshold=None if pool_size is None else refill_threshold,
        max_memory_gb=max_memory_gb,
        random_seed=seed,
        batch_size=batch_size,
        weights=weights,
        rank=0,
        world_size=world_size,
        max_open_packs=max_open_packs,
    )
    cat = Catalog(config.data_dirs, shard_ranges, weights)
    cap = int(max_memory_gb * GIB)
    parts = max(1, workers)
    segments, _ = split_epoch(cat.shard_dir, cat.shard_rows, cat.weights, world_size * parts)
    mine = segments[:parts]  # rank 0's participants; every rank's are as large, to a row
    baseline = _baseline() if baseline_gb is None else int(baseline_gb * GIB)
    batch_bytes = config.batch_buffer_bytes(cat.schema.itemsize)
    worker_bytes = WORKER_BYTES if _pss_counted() else baseline + WORKER_BYTES
    max_pool = max(0, (cap - HEADROOM - baseline - workers * worker_bytes - parts * batch_bytes) // ENTRY_BYTES)
    epoch_entries = sum(s.positions for s in mine) * factor
    if pool_size is None:
        pool_size = max(2, min(max_pool, epoch_entries))
    config = dataclasses.replace(config, pool_size=int(pool_size), refill_threshold=refill_threshold)
    pool_size, refill_threshold = config.pool_size, config.threshold
    # As the dataset splits them: each participant's pool is a share of the rank's, never above its epoch.
    share, threshold = participant_pool(pool_size, refill_threshold, parts)
    capacity = [pool_capacity(share, s.positions, factor) for s in mine]
    mine = [interleave(s, cat.shard_dir, cat.weights, slice_rows(c, factor)) for s, c in zip(mine, capacity)]
    window = _window(cat, mine[0], capacity[0], min(threshold, capacity[0]), factor, batch_size, max_open_packs, seed)
    fill_ns = _calibrate()
    build = _fill_seconds(capacity[0], fill_ns) * -(-parts // max(1, os.cpu_count() or 1))
    limit = cache_limit()
    probe = _probe(cat, batch_size, probe_seconds, seed) if probe_seconds > 0 else (None, None)
    return Sizing(
        dirs=[str(d) for d in cat.dirs],
        records=int(cat.shard_rows.sum()),
        shards=cat.num_shards,
        packs=len(cat.packs),
        itemsize=cat.schema.itemsize,
        factor=int(factor),
        world_size=int(world_size),
        workers=int(workers),
        batch_size=int(batch_size),
        max_memory_bytes=cap,
        baseline_bytes=baseline,
        baseline_given=baseline_gb is not None,
        worker_bytes=worker_bytes,
        batch_bytes=batch_bytes,
        max_pool_size=int(max_pool),
        pool_size=pool_size,
        pool_entries=int(sum(capacity)),
        refill_threshold=int(refill_threshold),
        max_open_packs=int(max_open_packs),
        build_seconds=build,
        fill_ns_per_entry=fill_ns[0],
        cache_bytes=limit.available,
        cache_source=limit.source,
        probe_rate=probe[0],
        probe_cached=probe[1],
        **window,
    )


def _probe(cat: Catalog, batch_size: int, seconds: float, seed: int) -> tuple[float, float]:
    """Records/s of random batches through the store for about ``seconds``, and the fraction of those rows that
    were cached before they were read."""
    rng = np.random.default_rng(seed)
    store = ShardStore(cat)
    cum = np.cumsum(cat.shard_rows)
    n = cached = 0
    t0 = time.perf_counter()
    try:
        while n == 0 or time.perf_counter() - t0 < seconds:
            g = rng.integers(0, int(cum[-1]), batch_size)
            shards = np.searchsorted(cum, g, side="right")
            rows = g - (cum[shards] - cat.shard_rows[shards])
            t = time.perf_counter()
            cached += int(store.cached(shards, rows).sum())
            t0 += time.perf_counter() - t  # the residency test is not part of the rate
            store.gather_rows(shards, rows)
            n += batch_size
    finally:
        store.close()
    return n / (time.perf_counter() - t0), cached / n


def _size(nbytes: int) -> str:
    """``'  12.3 MB'`` or ``'   4.21 GiB'``: ten characters, so the memory lines align."""
    return f"{nbytes / GIB:7.2f} GiB" if nbytes >= GIB else f"{nbytes / (1 << 20):7.1f} MB"


def _baseline() -> int:
    """Anonymous memory of this process once torch is imported (as it is in any training process)."""
    import torch  # noqa: F401  (imported for its memory, not used)

    return anon_bytes()


def _pss_counted() -> bool:
    """Whether the kernel reports ``Pss_Anon`` (Linux >= 5.10): then a worker's shared pages count once."""
    try:
        with open("/proc/self/smaps_rollup", "rb") as f:
            return any(line.startswith(b"Pss_Anon:") for line in f)
    except OSError:
        return False


def pack_map_bytes(cat: Catalog) -> np.ndarray:
    """Bytes the store maps for each pack of the catalog (the records, from the allocation boundary before them)."""
    return np.array(
        [p.entry.data_offset % mmap.ALLOCATIONGRANULARITY + p.entry.rows * cat.schema.itemsize for p in cat.packs],
        dtype=np.int64,
    )


def _window(
    cat: Catalog, segs: Segments, capacity: int, threshold: int, factor: int, step: int, max_open_packs: int, seed: int
) -> dict[str, int]:
    """Replay one participant's pool with per-shard counts; the window right after the refill where it is widest.

    Mirrors ``IndexPool`` and ``StreamingMixedShardDataset._epoch``: fill to capacity in activation order; draw
    ``step`` entries at a time until the pool is below the threshold (drawn all at once here: the counts a uniform
    draw without replacement gives do not depend on how it is split); refill; then unmap the packs whose segments
    are all activated and which have no entry left. A pack is mapped from its first activated row on.
    """
    rng = np.random.default_rng(seed)
    num_packs = len(cat.packs)
    seg_pack = cat.shard_pack[segs.shard]
    pack_last = np.full(num_packs, -1, dtype=np.int64)
    pack_last[seg_pack] = np.arange(len(seg_pack))
    map_bytes = pack_map_bytes(cat)
    counts = np.zeros(cat.num_shards, dtype=np.int64)  # pool entries per shard
    per_pack = np.zeros(num_packs, dtype=np.int64)  # pool entries per pack
    mapped = np.zeros(num_packs, dtype=bool)
    live = np.empty(0, dtype=np.int64)  # shards with entries in the pool
    lo, hi, shard = segs.lo.tolist(), segs.hi.tolist(), segs.shard.tolist()
    seg, row, size = 0, (lo[0] if lo else 0), 0
    best = {"window_shards": 0, "window_packs": 0, "window_mapped_bytes": 0, "window_shard_bytes": 0}
    entries_per_cycle = max(1, capacity - threshold)
    total = -(-segs.positions * factor // entries_per_cycle)
    refills = 0
    while seg < len(shard) and refills < MAX_REFILLS:
        positions = (capacity - size) // factor
        added = []
        while positions and seg < len(shard):
            g = shard[seg]
            take = min(hi[seg] - row, positions)
            counts[g] += take * factor
            per_pack[seg_pack[seg]] += take * factor
            mapped[seg_pack[seg]] = True
            size += take * factor
            positions -= take
            row += take
            added.append(g)
            if row == hi[seg]:
                seg += 1
                row = lo[seg] if seg < len(shard) else 0
        refills += 1
        mapped &= ~((pack_last < seg) & (per_pack == 0))
        live = np.union1d(live, np.array(added, dtype=np.int64))
        live = live[counts[live] > 0]
        # More packs than the store keeps open: it holds max_open_packs of them (here the largest) at a time.
        mapped_bytes = int(np.sort(map_bytes[mapped])[::-1][:max_open_packs].sum())
        if mapped_bytes > best["window_mapped_bytes"] or (
            mapped_bytes == best["window_mapped_bytes"] and len(live) > best["window_shards"]
        ):
            best = {
                "window_shards": len(live),
                "window_packs": int(mapped.sum()),
                "window_mapped_bytes": mapped_bytes,
                "window_shard_bytes": int(cat.shard_rows[live].sum()) * cat.schema.itemsize,
            }
        if seg >= len(shard):
            break  # no refill follows: the pool only drains from here
        n = min(size, ((size - threshold) // step + 1) * step) if size >= threshold else min(size, step)
        drawn = rng.multivariate_hypergeometric(counts[live], n, method="marginals")
        counts[live] -= drawn
        np.subtract.at(per_pack, cat.shard_pack[live], drawn)
        size -= n
    best["refills_replayed"] = refills
    best["refills_total"] = max(refills, int(total)) if seg < len(shard) else refills
    return best


@functools.lru_cache(maxsize=1)
def _calibrate() -> tuple[float, float]:
    """Nanoseconds per entry of a first ``IndexPool.fill`` (activation and shuffle) of 1M and of 4M entries, timed
    once per process."""
    out = []
    for n in _CALIBRATE:
        segs = Segments(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.full(1, n, dtype=np.int64))
        best = math.inf
        for _ in range(2):
            pool = IndexPool(segs, n, n // 2, 1, np.random.default_rng(0), 1)
            t0 = time.perf_counter()
            pool.fill()
            best = min(best, time.perf_counter() - t0)
            del pool
        out.append(best / n * 1e9)
    return out[0], out[1]


def _fill_seconds(entries: int, ns: tuple[float, float]) -> float:
    """Scale the calibration: per-entry cost grows as the pool leaves the CPU caches (1M to 4M), then stays."""
    (n1, n4), (t1, t4) = _CALIBRATE, ns
    if entries <= n1:
        per = t1
    elif entries >= n4:
        per = t4
    else:
        per = t1 + (t4 - t1) * math.log(entries / n1) / math.log(n4 / n1)
    return entries * per * 1e-9
