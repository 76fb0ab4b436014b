"""Benchmark: how well the stream mixes directories and games, and what the finer mix costs.

    python tools/bench_mixing.py [--scale small|large] [--rounds 7] [--data DIR] [--out DIR]

1. Directory shares (index work only, one participant, batches of 1024, weights 3:1 over 2 directories of
   50k-row shards; pools of 10, 40 and 100 shards' worth, and the README's peer scale of 100k-row shards and a
   2M pool): the worst share error over consecutive windows of 10,000 examples and the distinct shards per batch,
   for mmpool 0.2's activation (whole shards enter the pool at once), the default mix (shards enter in slices),
   ``mix="stratified"``, and a uniform global shuffle of the same records (three permutations: the floor).
2. The cost of the finer activation on samples/s: the same converted data (2M records of 280 B, 40 shards, warm)
   streamed with whole-shard activation, with slices, and stratified, rounds alternating the order; ratios are
   medians of the per-round ratios, per wall second and per CPU second of the process, on one core.
3. Games: KataGo-layout rows (8.4 KB) whose shards hold whole games in order (~200 positions a game), streamed
   with ``game_field="globalTargetsNC[41:47]"`` at three pool sizes, against the same rows read in order and a
   global shuffle: distinct games per batch and the most positions of one game in a batch.

Whole-shard activation is mmpool 0.2's behaviour, reproduced by making a slice larger than any shard
(``schedule.MIN_SLICE_ROWS``): the library has no switch for it. Writes ``OUT/mixing.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import benchdata as bd
import numpy as np

from mmpool.convert.converter import convert
from mmpool.sampling import schedule
from mmpool.sampling.entries import shard_of
from mmpool.sampling.plan import RunSpec, epoch_plan
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.stream.stats import WINDOW
from mmpool.testing.synthetic import katago_rows

BATCH = 1024
WEIGHTS = np.array([0.75, 0.25])
# (shards per directory, rows per shard, pool): pools of 10, 40 and 100 shards' worth, then the peers' scale.
SCALES = [((24, 8), 50_000, 500_000), ((72, 24), 50_000, 2_000_000), ((240, 80), 50_000, 5_000_000)]
PEER_SCALE = ((30, 10), 100_000, 2_000_000)
HASH = slice(41, 47)  # KataGo's game hash channels of globalTargetsNC


@contextlib.contextmanager
def whole_shards() -> Iterator[None]:
    """mmpool 0.2's activation: one slice per shard (a slice longer than any shard)."""
    saved = schedule.MIN_SLICE_ROWS
    schedule.MIN_SLICE_ROWS = 1 << 40
    try:
        yield
    finally:
        schedule.MIN_SLICE_ROWS = saved


def shard_stream(shards: tuple[int, ...], rows: int, pool: int, mix: str) -> tuple[np.ndarray, np.ndarray]:
    """The shard of every entry of one participant's epoch, in stream order, and every shard's directory."""
    shard_dir = np.repeat(np.arange(len(shards)), shards)
    shard_rows = np.full(len(shard_dir), rows, dtype=np.int64)
    run = RunSpec(
        seed=1, world_size=1, workers=1, pool_size=pool, refill_threshold=pool * 3 // 4, factor=1, step=BATCH,
        batched=True, drop_last=False, max_positions=None, weights=WEIGHTS, shard_dir=shard_dir, mix=mix,
    )  # fmt: skip
    p = run.pool(epoch_plan(shard_dir, shard_rows, run), 0, 0, len(shard_dir))
    p.fill()
    parts = []
    while len(b := p.take(BATCH, p.fill)):
        parts.append(shard_of(b))
    return np.concatenate(parts).astype(np.int64), shard_dir


def mix_figures(shards: np.ndarray, shard_dir: np.ndarray) -> dict:
    """Worst |share - weight| over windows of WINDOW examples, and distinct shards per batch."""
    n = len(shards) // WINDOW
    dirs = shard_dir[shards[: n * WINDOW]].reshape(n, WINDOW)
    share = np.stack([np.bincount(w, minlength=2) for w in dirs]) / WINDOW
    b = len(shards) // BATCH
    per_batch = np.sort(shards[: b * BATCH].reshape(b, BATCH), axis=1)
    distinct = 1 + np.count_nonzero(np.diff(per_batch, axis=1), axis=1)
    return {"worst_share_error": float(np.abs(share - WEIGHTS).max()), "shards_per_batch": float(distinct.mean())}


def bench_shares(scales: list) -> list[dict]:
    rows = []
    for shards, n, pool in scales:
        row: dict = {"shards": list(shards), "shard_rows": n, "pool_size": pool, "pool_in_shards": pool // n}
        t = time.process_time()
        with whole_shards():
            s, shard_dir = shard_stream(shards, n, pool, "pool")
        row["whole shards (0.2)"] = {**mix_figures(s, shard_dir), "index_cpu_s": time.process_time() - t}
        for mix in ("pool", "stratified"):
            t = time.process_time()
            s, shard_dir = shard_stream(shards, n, pool, mix)
            row[mix] = {**mix_figures(s, shard_dir), "index_cpu_s": time.process_time() - t}
        floors = [mix_figures(np.random.default_rng(k).permutation(s), shard_dir) for k in range(3)]
        row["global shuffle"] = {
            "worst_share_error": float(np.mean([f["worst_share_error"] for f in floors])),
            "worst_share_error_range": [min(f["worst_share_error"] for f in floors),
                                        max(f["worst_share_error"] for f in floors)],
            "shards_per_batch": float(np.mean([f["shards_per_batch"] for f in floors])),
        }  # fmt: skip
        row["default_vs_shuffle"] = row["pool"]["worst_share_error"] / row["global shuffle"]["worst_share_error"]
        rows.append(row)
        print(share_line(row), flush=True)
    return rows


def share_line(row: dict) -> str:
    cells = [
        f"{name} {row[name]['worst_share_error']:.4f} / {row[name]['shards_per_batch']:.1f}"
        for name in ("whole shards (0.2)", "pool", "stratified", "global shuffle")
    ]
    return (
        f"{row['shards']} x {row['shard_rows']:,} rows, pool {row['pool_size']:,} ({row['pool_in_shards']} shards): "
        + "; ".join(cells)
        + f"; default / shuffle {row['default_vs_shuffle']:.2f}; index work of the epoch (CPU s, with the figures): "
        + ", ".join(f"{k} {row[k]['index_cpu_s']:.2f}" for k in ("whole shards (0.2)", "pool", "stratified"))
    )


# ----- 2. samples/s -----


def epoch_rate(dirs: list[Path], pool: int, mix: str) -> tuple[float, float]:
    """Examples per second of one epoch: per wall second, and per CPU second of the process (all its threads;
    steadier than wall time on a shared machine)."""
    ds = StreamingMixedShardDataset(dirs, pool_size=pool, batch_size=BATCH, random_seed=2, mix=mix)
    wall, cpu = time.perf_counter(), time.process_time()
    n = sum(len(b["id"]) for b in ds)
    return n / (time.perf_counter() - wall), n / (time.process_time() - cpu)


def bench_speed(data: Path, rounds: int, records: tuple[int, int]) -> dict:
    """Whole shards, slices and stratified streamed in turn, ``rounds`` times (the order alternates); the ratios
    are medians of the per-round ratios, so a round slowed by other jobs weighs less."""
    dirs = bd.converted_dataset(data, records, (30, 10), pack_size="256M")
    bd.warm(bd.pack_files(dirs))
    # On one core (the machine's other jobs then mostly run on the other): unpinned, the rounds of the same code
    # differed by 10-15% here; pinned, by 2-5%.
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(cores)})
    try:
        return _speed_rounds(dirs, rounds, records)
    finally:
        os.sched_setaffinity(0, cores)


def _speed_rounds(dirs: list[Path], rounds: int, records: tuple[int, int]) -> dict:
    pool = sum(records) // 4
    names = ["whole shards (0.2)", "pool", "stratified"]
    wall: dict[str, list[float]] = {k: [] for k in names}
    cpu: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if name == "whole shards (0.2)":
                with whole_shards():
                    w, c = epoch_rate(dirs, pool, "pool")
            else:
                w, c = epoch_rate(dirs, pool, name)
            wall[name].append(w)
            cpu[name].append(c)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}/s" for k, v in wall.items()), flush=True)

    def ratio(rates: dict[str, list[float]], a: str, b: str) -> float:
        return bd.median([x / y for x, y in zip(rates[a], rates[b])])

    def best(a: str, b: str) -> float:  # as timeit does: the fastest round is the least disturbed one
        return max(wall[a]) / max(wall[b])

    return {
        "records": list(records),
        "pool": pool,
        "samples_per_s": wall,
        "samples_per_cpu_s": cpu,
        "median": {k: bd.median(v) for k, v in wall.items()},
        "slices_vs_whole": ratio(wall, "pool", "whole shards (0.2)"),
        "slices_vs_whole_best": best("pool", "whole shards (0.2)"),
        "stratified_vs_default_best": best("stratified", "pool"),
        "slices_vs_whole_cpu": ratio(cpu, "pool", "whole shards (0.2)"),
        "stratified_vs_default": ratio(wall, "stratified", "pool"),
        "stratified_vs_default_cpu": ratio(cpu, "stratified", "pool"),
    }


# ----- 3. games -----


def selfplay_dirs(root: Path, shards: int, rows: int) -> tuple[list[Path], np.ndarray]:
    """2 directories of KataGo-layout shards holding whole games in order; returns them and every row's game
    hash (by directory, shard, row: the order the catalog numbers them)."""
    dirs, hashes = [], []
    for d in range(2):
        src, dst = root / f"selfplay{d}", root / f"selfplay{d}.mm"
        for k in range(shards):
            path = src / f"data{k}_0.npz"
            if not path.exists():
                src.mkdir(parents=True, exist_ok=True)
                np.savez(path, **katago_rows(rows, seed=100 * d + k, game_length=200))
            with np.load(path) as z:
                hashes.append(z["globalTargetsNC"][:, HASH])
        if not (dst / "manifest.json").exists():
            convert(src, dst, progress=False)
        dirs.append(dst)
    return dirs, np.concatenate(hashes)


def game_figures(games: np.ndarray) -> dict:
    """Mean distinct games per batch and the most positions of one game in a batch, from game ids in order."""
    b = len(games) // BATCH
    per_batch = np.sort(games[: b * BATCH].reshape(b, BATCH), axis=1)
    starts = np.ones_like(per_batch, dtype=bool)
    starts[:, 1:] = per_batch[:, 1:] != per_batch[:, :-1]
    largest = max(int(np.diff(np.append(np.flatnonzero(s), BATCH)).max()) for s in starts)
    return {"games_per_batch": float(starts.sum(axis=1).mean()), "max_game_positions": largest}


def bench_games(data: Path, shards: int, rows: int, pools: list[int]) -> list[dict]:
    dirs, hashes = selfplay_dirs(data / "games", shards, rows)
    _, game = np.unique(hashes, axis=0, return_inverse=True)
    game = game.ravel()
    out = [{"stream": "read in order (shards one after another)", **game_figures(game)}]
    out.append({"stream": "global shuffle", **game_figures(np.random.default_rng(0).permutation(game))})
    for pool in pools:
        for mix in ("pool", "stratified"):
            ds = StreamingMixedShardDataset(
                dirs, pool_size=pool, batch_size=BATCH, random_seed=3, mix=mix, game_field="globalTargetsNC[41:47]"
            )
            t = time.perf_counter()
            for _ in ds:
                pass
            stats = ds.stats()
            out.append(
                {
                    "stream": f"mmpool {mix}, pool {pool:,}",
                    "games_per_batch": stats.games_per_batch,
                    "max_game_positions": stats.max_game_positions,
                    "seconds": time.perf_counter() - t,
                }
            )
            print(f"{out[-1]['stream']}: {stats.mixing()}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--data", default=str(bd.DEFAULT_ROOT))
    p.add_argument("--out", default="bench_out")
    p.add_argument("--scale", choices=["small", "large"], default="large", help="small: small sizes, one round")
    args = p.parse_args(argv)
    data = Path(args.data)
    if args.scale == "small":
        scales, speed_records, games = [((24, 8), 5_000, 50_000)], (150_000, 50_000), (2, 2_000, [4_096])
        args.rounds = 1
    else:
        scales, speed_records, games = [*SCALES, PEER_SCALE], (1_500_000, 500_000), (6, 4_000, [4_096, 16_384, 40_000])
    report = {"shares": bench_shares(scales)}
    report["speed"] = bench_speed(data, args.rounds, speed_records)
    sp = report["speed"]
    print(
        f"samples/s, median of per-round ratios (per CPU second; best round against best round): slices / whole "
        f"shards {sp['slices_vs_whole']:.3f} ({sp['slices_vs_whole_cpu']:.3f}; {sp['slices_vs_whole_best']:.3f}), "
        f"stratified / default {sp['stratified_vs_default']:.3f} ({sp['stratified_vs_default_cpu']:.3f}; "
        f"{sp['stratified_vs_default_best']:.3f})",
        flush=True,
    )
    report["games"] = bench_games(data, *games)
    for g in report["games"]:
        print(f"{g['stream']}: {g['games_per_batch']:.1f} games a batch, at most {g['max_game_positions']} of one")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mixing.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'mixing.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
