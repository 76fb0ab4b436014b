"""Benchmark: does the training loop wait for data? A loop whose step takes 4 ms and holds no GIL
(``time.sleep(0.004)``), with batches prepared ahead (``prefetch_batches``) and without, against the steps alone.

    python tools/bench_prefetch.py [--batches 400] [--rounds 3] [--data DIR] [--out DIR]

Warm page cache, one process, batches of 1024, records of 280 B (1M records) and of 8,344 B (the bench_bigdata
set, pool 60k). Rounds alternate the order of the three timings. Writes ``OUT/prefetch-warm.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import benchdata as bd

from mmpool.stream.dataset import StreamingMixedShardDataset

STEP = 0.004
BATCH = 1024
SETS = {
    "280 B": {"records": [750_000, 250_000], "shards": [150, 50], "channels": 4, "pool": 200_000},
    "8,344 B": {"records": [540_000, 180_000], "shards": [108, 36], "channels": 130, "pool": 60_000},
}


def steps_alone(n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        time.sleep(STEP)
    return time.perf_counter() - t


def loop(dirs: list, pool: int, depth: int, n: int) -> float:
    """Seconds of ``n`` steps fed by the stream, after its first batch (the pool is built)."""
    ds = StreamingMixedShardDataset(
        dirs, pool_size=pool, batch_size=BATCH, random_seed=1, num_epochs=None, prefetch_batches=depth
    )
    it = iter(ds)
    next(it)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
        time.sleep(STEP)
    took = time.perf_counter() - t
    it.close()
    return took


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default="/work/bench_data")
    p.add_argument("--out", default="bench_out")
    args = p.parse_args(argv)
    rows, details = [], {}
    for name, cfg in SETS.items():
        dirs = bd.converted_dataset(args.data, cfg["records"], cfg["shards"], "256M", channels=cfg["channels"])
        bd.warm(dirs)
        res: dict[str, list[float]] = {"steps": [], "plain": [], "ahead": []}
        runs = {
            "steps": lambda: steps_alone(args.batches),
            "plain": lambda dirs=dirs, cfg=cfg: loop(dirs, cfg["pool"], 0, args.batches),
            "ahead": lambda dirs=dirs, cfg=cfg: loop(dirs, cfg["pool"], 2, args.batches),
        }
        for r in range(args.rounds):
            for key in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                res[key].append(runs[key]())
        ratio = {k: bd.median([a / b for a, b in zip(res[k], res["steps"])]) for k in ("plain", "ahead")}
        print(f"{name}: {res}", file=sys.stderr)
        rows.append(
            bd.result(
                f"{name}: loop with 4 ms steps, prefetch_batches=2, vs the steps alone",
                bd.median(res["ahead"]),
                bd.median(res["steps"]),
                1.10,
                "s",
                higher_is_better=False,
                ratio=ratio["ahead"],
                note=f"prefetch_batches=0: {ratio['plain']:.2f}x the steps; {args.batches} batches, "
                f"{args.rounds} rounds, ratio per round, median",
            )
        )
        details[name] = res
    details["load_avg"] = os.getloadavg()
    path = bd.save(args.out, "prefetch", "warm", rows, details)
    print(bd.table(rows))
    print(f"\nload average {details['load_avg']}; written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
