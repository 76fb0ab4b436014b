"""Benchmark: the pool and the stream (issues 3 and 4).

    python tools/bench_stream.py --scale small|large [--out bench_out] [--data bench_out/data]

(a) The pool, in a fresh subprocess: anonymous memory (psutil ``rss - shared``) per pool entry, before/after
    building the stream and drawing its first batch (target <= 10 bytes); time from constructing the dataset to
    its first batch against a plain numpy shuffle of as many uint64 (target <= 2x); the worst refill stall, from
    ``IndexPool.fill`` directly (an epoch twice the pool) and from the stream (the longest gap between consecutive
    batches while the pool refills), against the same shuffle (target <= 1x).
(b) Batch mode (batches of 1024), one process, page cache warm: examples/s against ``torch.index_select`` of the
    same number of uniformly random rows from the same record bytes held in RAM (target >= 0.5).
(c) Two DataLoader workers (``batch_size`` in the dataset, ``DataLoader(batch_size=None)``) against one process
    (target >= 1.6x). With 2 cores, the main process that consumes the batches shares them with the workers.
(d) 8-fold ``Dihedral`` augmentation (planes and move) against none, same data (target >= 0.5).

Speeds are ratios of contenders timed in the same run, in alternating rounds (medians of the per-round ratios),
because the machine is shared. Where the RAM copy and the warm page cache cannot both hold the data ((b) at the
large scale), the baseline's rounds run first, then the stream's, and the best round of each is compared.
torch runs on one thread (``torch.set_num_threads(1)``); mmpool's work is numpy. Timed batches follow untimed ones
(the pool built, the packs' page tables filled in): steady state.
Scales: small = 4M records (3M + 1M in 600 + 200 shards), pool 2M; large = 40M records (30M + 10M), pool 40M.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import benchdata as bd  # a sibling module: tools/ is on the path of a script run from it
import numpy as np
import psutil
import torch
from torch.utils.data import DataLoader

from mmpool.augment.dihedral import Dihedral
from mmpool.sampling.pool import IndexPool
from mmpool.sampling.schedule import Segments
from mmpool.stream.dataset import StreamingMixedShardDataset

BATCH = 1024
SCALES = {
    "small": {
        "records": [3_000_000, 1_000_000],
        "shards": [600, 200],
        "pack_size": "1G",
        "pool": 2_000_000,
        "batches": 2400,
        "rounds": 16,
        "stall_batches": 4000,
        "dl_batches": 2400,
        "warmup": 300,
    },
    "large": {
        "records": [30_000_000, 10_000_000],
        "shards": [600, 200],
        "pack_size": "1G",
        "pool": 40_000_000,
        "batches": 6000,
        "rounds": 24,
        "stall_batches": 25_000,
        "dl_batches": 4800,
        "warmup": 1500,
    },
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def dataset(dirs: list[Path], pool: int, seed: int = 0, augment: bool = False) -> StreamingMixedShardDataset:
    aug = Dihedral(planes=("planes",), square_indices=("move",)) if augment else None
    return StreamingMixedShardDataset(
        dirs, pool_size=pool, batch_size=BATCH, random_seed=seed, augmentation=aug, num_epochs=None, max_memory_gb=8.0
    )


def shuffle_seconds(n: int, repeats: int = 3) -> float:
    """Median seconds of ``np.random.default_rng().shuffle`` of ``n`` uint64 (the baseline of pool building)."""
    out = []
    for r in range(repeats):
        a = np.arange(n, dtype=np.uint64)
        t = time.perf_counter()
        np.random.default_rng(r).shuffle(a)
        out.append(time.perf_counter() - t)
        del a
    return bd.median(out)


def anon_bytes() -> int:
    """psutil ``rss - shared`` of this process: its anonymous memory (cheap, unlike reading smaps_rollup)."""
    info = psutil.Process().memory_info()
    return info.rss - info.shared


class Peak:
    """Samples this process's anonymous memory every few milliseconds in a thread; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.peak = anon_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, anon_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, anon_bytes())


# --------------------------------------------------------------------------- (a) the pool, in a fresh process


def child_pool(cfg: dict, dirs: list[Path]) -> dict:
    """Run in a fresh interpreter: memory per entry and time to first batch, then the baseline shuffle."""
    pool = cfg["pool"]
    gc.collect()
    before = anon_bytes()
    peak = Peak()
    t = time.perf_counter()
    ds = dataset(dirs, pool)
    it = iter(ds)
    next(it)
    first = time.perf_counter() - t
    after = anon_bytes()
    peak_anon = peak.stop()
    entries = ds.stats().pool_entries + BATCH  # the first batch was drawn from the pool
    del it, ds
    gc.collect()
    shuffle = shuffle_seconds(pool)
    return {
        "entries": entries,
        "anon_before": before,
        "anon_after": after,
        "anon_peak": peak_anon,
        "bytes_per_entry": (after - before) / entries,
        "peak_bytes_per_entry": (peak_anon - before) / entries,
        "first_batch_s": first,
        "shuffle_s": shuffle,
    }


def fill_stalls(pool_size: int, refills: int = 6) -> dict:
    """Seconds of every ``IndexPool.fill`` over an epoch of twice the pool, drawing batches of 1024 in between."""
    per_shard = 50_000
    shards = -(-2 * pool_size // per_shard)
    seg = Segments(np.arange(shards), np.zeros(shards, np.int64), np.full(shards, per_shard, np.int64))
    pool = IndexPool(seg, pool_size, pool_size * 3 // 4, 1, np.random.default_rng(0), shards)
    t = time.perf_counter()
    pool.fill()
    first = time.perf_counter() - t
    times = []
    while len(times) < refills and pool.data_left:
        while pool.size >= pool.threshold:
            pool.draw(BATCH)
        t = time.perf_counter()
        pool.fill()
        times.append(time.perf_counter() - t)
    return {"first_fill_s": first, "refill_s": times}


def stream_gaps(dirs: list[Path], pool: int, batches: int) -> dict:
    """Gaps between consecutive batches of an 8-fold augmented stream (so the epoch outgrows the pool and the
    pool refills), after the first batch."""
    ds = dataset(dirs, pool, seed=3, augment=True)
    it = iter(ds)
    next(it)
    gaps = np.empty(batches)
    t = time.perf_counter()
    for i in range(batches):
        next(it)
        now = time.perf_counter()
        gaps[i] = now - t
        t = now
    refills = ds.stats().refills
    del it
    return {
        "max_gap_s": float(gaps.max()),
        "median_gap_s": float(np.median(gaps)),
        "refills": refills,
        "batches": batches,
        "worst_gaps_s": np.sort(gaps)[-5:].tolist(),
    }


def run_child(args: argparse.Namespace, what: str) -> dict:
    cmd = [sys.executable, __file__, "--scale", args.scale, "--out", args.out, "--child", what]
    if args.data:
        cmd += ["--data", args.data]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_pool(cfg: dict, dirs: list[Path], args: argparse.Namespace) -> tuple[list[dict], dict]:
    bd.warm(dirs)
    log(f"(a) pool of {cfg['pool']:,}: memory and time to first batch, in a fresh process (page cache warm)")
    child = run_child(args, "pool")
    log(
        f"(a) {child['bytes_per_entry']:.2f} B/entry, first batch {child['first_batch_s']:.2f}s, "
        f"shuffle {child['shuffle_s']:.2f}s"
    )
    log("(a) refill stalls: IndexPool.fill directly")
    fills = fill_stalls(cfg["pool"])
    shuffle = shuffle_seconds(cfg["pool"])
    log(f"(a) refills {[f'{x:.3f}' for x in fills['refill_s']]} s; shuffle here {shuffle:.3f}s")
    log(f"(a) refill stalls: from an augmented stream, {cfg['stall_batches']} batches")
    gaps = stream_gaps(dirs, cfg["pool"], cfg["stall_batches"])
    log(
        f"(a) stream: {gaps['refills']} refills, worst gap {gaps['max_gap_s']:.3f}s, "
        f"median {gaps['median_gap_s'] * 1e3:.2f}ms"
    )
    n = f"{cfg['pool'] / 1e6:g}M"
    rows = [
        bd.result(
            f"pool of {n}: anonymous bytes per entry (fresh process, after first batch)",
            child["bytes_per_entry"],
            10.0,
            10.0,
            "B",
            higher_is_better=False,
            ratio=child["bytes_per_entry"],
            note=f"ratio column = bytes per entry; peak while building {child['peak_bytes_per_entry']:.2f} "
            f"B/entry; baseline column = the 10-byte budget",
        ),
        bd.result(
            f"pool of {n}: seconds to first batch vs numpy shuffle of {n} uint64",
            child["first_batch_s"],
            child["shuffle_s"],
            2.0,
            "s",
            higher_is_better=False,
            note="dataset construction + pool build + first gather, page cache warm; shuffle timed in the same "
            "fresh process",
        ),
        bd.result(
            f"pool of {n}: worst IndexPool.fill refill vs shuffle of {n}",
            max(fills["refill_s"]),
            shuffle,
            1.0,
            "s",
            higher_is_better=False,
            note=f"{len(fills['refill_s'])} refills of an epoch twice the pool, threshold 3/4",
        ),
        bd.result(
            f"pool of {n}: worst gap between batches while refilling (stream) vs shuffle of {n}",
            gaps["max_gap_s"],
            shuffle,
            1.0,
            "s",
            higher_is_better=False,
            note=f"8-fold augmented stream, {gaps['batches']} batches, {gaps['refills']} refills; "
            f"median gap {gaps['median_gap_s'] * 1e3:.2f} ms",
        ),
    ]
    return rows, {"child": child, "fills": fills, "shuffle_s": shuffle, "stream_gaps": gaps}


# --------------------------------------------------------------------------- (b, c, d) throughput


class EmptyBatches(torch.utils.data.IterableDataset):
    """Yields a fresh batch-sized buffer and does nothing else: the DataLoader's own per-batch cost (shared memory,
    file-descriptor handshake), the ceiling of any dataset's throughput through worker processes."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def __iter__(self):
        while True:
            yield {"move": torch.from_numpy(np.empty(self.nbytes, dtype=np.uint8))[:BATCH]}


def timed(it, batches: int, cpu: list[float] | None = None) -> float:
    """Examples per second over the next ``batches`` batches of an iterator (and per CPU second of this thread,
    appended to ``cpu``)."""
    t, c = time.perf_counter(), time.thread_time()
    n = 0
    for _ in range(batches):
        n += len(next(it)["move"])
    if cpu is not None:
        cpu.append(n / (time.thread_time() - c))
    return n / (time.perf_counter() - t)


def index_select_rate(
    data: torch.Tensor, batches: int, rng: np.random.Generator, cpu: list[float] | None = None
) -> float:
    idx = torch.from_numpy(rng.integers(0, data.shape[0], size=(batches, BATCH), dtype=np.int64))
    t, c = time.perf_counter(), time.thread_time()
    for i in idx:
        torch.index_select(data, 0, i)
    if cpu is not None:
        cpu.append(idx.numel() / (time.thread_time() - c))
    return idx.numel() / (time.perf_counter() - t)


def alternate(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Each contender's rate in every round, the order alternating from round to round."""
    out: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            out[name].append(contenders[name]())
    return out


def paired(res: dict[str, list[float]], a: str, b: str) -> float:
    return bd.median(np.array(res[a]) / np.array(res[b]))


def bench_throughput(cfg: dict, dirs: list[Path]) -> tuple[list[dict], dict]:
    pool, rounds = cfg["pool"], cfg["rounds"]
    per_round = cfg["batches"] // rounds
    total_bytes = sum(cfg["records"]) * 280
    large = total_bytes > 4 << 30
    rng = np.random.default_rng(7)
    # Untimed batches first: the pool is built and the packs' page tables filled in (a fresh mapping takes a
    # minor fault per folio the first time it is touched; the RAM copy's pages were all written when loaded).
    warmup = cfg["warmup"]
    details: dict = {"warmup_batches": warmup}

    # (b) one process vs torch.index_select in RAM.
    plain = dataset(dirs, pool, seed=1)  # before the RAM copy: the dataset refuses a pool that cannot fit
    log(f"(b) loading the in-RAM copy{' (evicting the page cache as it goes)' if large else ''}")
    data = bd.load_records(dirs, drop_cache=large)
    cpu_base: list[float] = []
    cpu_mine: list[float] = []
    if large:
        base = alternate({"ram": lambda: index_select_rate(data, per_round, rng, cpu_base)}, rounds)["ram"]
        del data
        gc.collect()
        bd.warm(dirs)
        it = iter(plain)
        timed(it, warmup)  # pool built, packs mapped: the rest is steady state
        mine = alternate({"stream": lambda: timed(it, per_round, cpu_mine)}, rounds)["stream"]
        # Not paired, so the best round of each: the speed of each when the machine disturbs it least.
        ratio_b = max(mine) / max(base)
    else:
        bd.warm(dirs)
        it = iter(plain)
        timed(it, warmup)
        res = alternate(
            {
                "ram": lambda: index_select_rate(data, per_round, rng, cpu_base),
                "stream": lambda: timed(it, per_round, cpu_mine),
            },
            rounds,
        )
        base, mine = res["ram"], res["stream"]
        ratio_b = paired(res, "stream", "ram")
        del data
        gc.collect()
    resident = bd.resident_fraction(dirs)
    cpu_ratio = bd.median(cpu_mine) / bd.median(cpu_base)
    log(
        f"(b) stream {bd.median(mine) / 1e6:.2f}M/s, index_select {bd.median(base) / 1e6:.2f}M/s; per CPU second "
        f"{bd.median(cpu_mine) / 1e6:.2f}M vs {bd.median(cpu_base) / 1e6:.2f}M; packs {resident:.1%} in page cache"
    )
    details["b"] = {
        "index_select": base,
        "stream": mine,
        "index_select_cpu": cpu_base,
        "stream_cpu": cpu_mine,
        "resident_after": resident,
    }

    # (d) 8-fold augmentation vs none, same data, alternating rounds on both live iterators.
    log("(d) Dihedral x8 vs none")
    aug_it = iter(dataset(dirs, pool, seed=2, augment=True))
    timed(aug_it, warmup)
    res_d = alternate({"aug": lambda: timed(aug_it, per_round), "plain": lambda: timed(it, per_round)}, rounds)
    ratio_d = paired(res_d, "aug", "plain")
    aug_it = None  # frees the pool (the lambdas above name it, so no del)
    gc.collect()
    log(f"(d) augmented {bd.median(res_d['aug']) / 1e6:.2f}M/s, plain {bd.median(res_d['plain']) / 1e6:.2f}M/s")
    details["d"] = res_d

    # (c) 2 DataLoader workers vs one process.
    log("(c) DataLoader, 2 workers vs one process")
    per_round_c = cfg["dl_batches"] // rounds
    loader = DataLoader(dataset(dirs, pool, seed=4), batch_size=None, num_workers=2, prefetch_factor=4)
    dl_it = iter(loader)
    timed(dl_it, warmup)  # both workers have built their pools and mapped the packs
    res_c = alternate({"workers": lambda: timed(dl_it, per_round_c), "one": lambda: timed(it, per_round_c)}, rounds)
    ratio_c = paired(res_c, "workers", "one")
    dl_it = loader = None  # stops the workers
    empty_it = iter(DataLoader(EmptyBatches(BATCH * 280), batch_size=None, num_workers=2, prefetch_factor=4))
    for _ in range(4):
        next(empty_it)
    ceiling = bd.median([timed(empty_it, per_round_c) for _ in range(3)])
    del empty_it
    log(f"(c) DataLoader ceiling (2 workers yielding empty {BATCH * 280 // 1024} KB batches): {ceiling / 1e6:.2f}M/s")
    res_c["ceiling"] = ceiling
    log(f"(c) 2 workers {bd.median(res_c['workers']) / 1e6:.2f}M/s, one process {bd.median(res_c['one']) / 1e6:.2f}M/s")
    details["c"] = res_c
    it = None  # frees the pool

    how = (
        "one after the other (the RAM copy and the page cache cannot both hold the data), best round of each"
        if large
        else "paired rounds, median of the per-round ratios"
    )
    rows = [
        bd.result(
            "stream examples/s, batch mode, one process (vs torch.index_select in RAM)",
            max(mine) if large else bd.median(mine),
            max(base) if large else bd.median(base),
            0.5,
            "examples/s",
            ratio=ratio_b,
            note=f"pool {pool:,}, {sum(cfg['records']):,} records in 800 shards / 2 dirs, batches of {BATCH}, "
            f"warm cache ({resident:.1%} of the packs still cached after), {warmup} batches of warm-up, "
            f"1 thread; {rounds} rounds of "
            f"{per_round} batches, {how}; per second of thread CPU time (medians) "
            f"{bd.median(cpu_mine) / 1e6:.2f}M vs {bd.median(cpu_base) / 1e6:.2f}M: ratio {cpu_ratio:.2f}",
        ),
        bd.result(
            "stream examples/s, 2 DataLoader workers (vs one process)",
            bd.median(res_c["workers"]),
            bd.median(res_c["one"]),
            1.6,
            "examples/s",
            ratio=ratio_c,
            note="2 cores: the main process consuming the batches shares them with the 2 workers; "
            "DataLoader(batch_size=None, num_workers=2, prefetch_factor=4). The DataLoader alone, 2 "
            f"workers yielding fresh {BATCH * 280 // 1024} KB buffers and doing nothing else, reached "
            f"{ceiling / 1e6:.2f}M examples/s in this run: its ceiling",
        ),
        bd.result(
            "stream examples/s, Dihedral x8 (planes + move) vs none",
            bd.median(res_d["aug"]),
            bd.median(res_d["plain"]),
            0.5,
            "examples/s",
            ratio=ratio_d,
        ),
    ]
    return rows, details


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bd.add_common_args(p, SCALES)
    p.add_argument("--skip", choices=["pool", "throughput"], action="append", default=[])
    p.add_argument("--child", choices=["pool"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cfg = SCALES[args.scale]
    torch.set_num_threads(1)
    data_root = bd.data_root(args)
    dirs = bd.converted_dataset(data_root, cfg["records"], cfg["shards"], cfg["pack_size"])
    if args.child == "pool":
        print(json.dumps(child_pool(cfg, dirs)))
        return 0
    rows, details = [], {"scale": cfg}
    if "pool" not in args.skip:
        r, details["pool"] = bench_pool(cfg, dirs, args)
        rows += r
    if "throughput" not in args.skip:
        r, details["throughput"] = bench_throughput(cfg, dirs)
        rows += r
    path = bd.save(args.out, "stream", args.scale, rows, details)
    print(f"## stream ({args.scale})\n\n{bd.table(rows)}\n\nresults: {path}")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
