"""Benchmark of resuming: fast-forward from a saved state against streaming to the same point.

Builds converted data directly with write_pack/write_manifest (records of the synthetic dtype, only the ``id``
field filled: a fast-forward never reads records, and the stream only copies them), streams ``--resume-at``
examples uninterrupted, saves the state, then times a fresh dataset from ``load_state_dict`` to its first item
and checks that item is the one the uninterrupted stream yields next.

With ``--ranks N --new-ranks M`` it benchmarks an elastic resume instead: N ranks (simulated one after the other
in this process) stream ``--resume-at`` examples between them and save their states; then rank 0 of an M-rank run
loads the list of all N states and is timed to its first item, against the time the N ranks took to stream there
(one rank's share, what the job spent, and all of it), and its first batch is checked to hold no example the N
ranks yielded.

Example: python tools/bench_resume.py                       (12M records, 2 dirs, 240 shards, pool 2M, at 10M)
         python tools/bench_resume.py --root /data/bench --keep --mode single
         python tools/bench_resume.py --ranks 8 --new-ranks 6 (10M examples into the epoch, 8 ranks -> 6)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mmpool.format.manifest import MANIFEST_NAME, Manifest, Schema, write_manifest, write_pack
from mmpool.testing.synthetic import position_dtype


def build(root: Path, records: int, shards: int, dirs: int, shards_per_pack: int) -> list[Path]:
    """``dirs`` converted directories holding ``shards`` shards (split evenly) of ``records`` records in all."""
    dtype = position_dtype()
    schema = Schema.from_dtype(dtype)
    rows = records // shards
    out = []
    for d in range(dirs):
        dst = root / f"dir{d}"
        out.append(dst)
        count = shards // dirs + (d < shards % dirs)
        if (dst / MANIFEST_NAME).exists():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        packs, entries = [], []
        for first in range(0, count, shards_per_pack):
            numbers = range(first, min(count, first + shards_per_pack))
            blocks = ((n, f"shard_{n:05d}.npy", {"id": (d << 40) | (n << 20) | np.arange(rows)}) for n in numbers)
            # Only ``id`` is given: write_pack leaves the other fields zero.
            pack, written = write_pack(dst / f"pack-{len(packs):05d}.npy", "npy", schema, rows * len(numbers), blocks)
            entries += [replace(e, pack=len(packs)) for e in written]
            packs.append(pack)
        write_manifest(dst, Manifest("npy", schema, tuple(packs), tuple(entries)))
        print(f"built {dst}: {count} shards of {rows} records in {len(packs)} packs", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="where to build the data (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the data (reused when --root already holds it)")
    parser.add_argument("--records", type=int, default=12_000_000)
    parser.add_argument("--shards", type=int, default=240)
    parser.add_argument("--dirs", type=int, default=2)
    parser.add_argument("--shards-per-pack", type=int, default=64)
    parser.add_argument("--pool", type=int, default=2_000_000)
    parser.add_argument("--resume-at", type=int, default=10_000_000, help="examples into the epoch")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--ranks", type=int, default=1, help="ranks of the saved run")
    parser.add_argument("--new-ranks", type=int, default=None, help="ranks of the resumed run (default: --ranks)")
    parser.add_argument(
        "--mode",
        choices=("batch", "single"),
        default="batch",
        help="batch: the dataset yields batches; single: single examples (drawn chunk_size at a time)",
    )
    args = parser.parse_args(argv)

    from mmpool.stream.dataset import StreamingMixedShardDataset

    root = args.root or Path(tempfile.mkdtemp(prefix="mmpool-bench-resume-"))
    try:
        dirs = build(root, args.records, args.shards, args.dirs, args.shards_per_pack)
        batch = args.mode == "batch"
        kwargs = dict(
            pool_size=args.pool,
            random_seed=0,
            batch_size=args.batch_size if batch else None,
            chunk_size=args.batch_size,
        )
        if args.ranks > 1 or (args.new_ranks or 1) > 1:
            return elastic(dirs, kwargs, args)
        steps = args.resume_at // args.batch_size if batch else args.resume_at
        at = steps * args.batch_size if batch else steps

        ds = StreamingMixedShardDataset(dirs, **kwargs)
        it = iter(ds)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            next(it)
        t_stream, c_stream = time.perf_counter() - t0, time.process_time() - c0
        state = json.loads(json.dumps(ds.state_dict()))
        expected = next(it)["id"]
        del it, ds

        ds = StreamingMixedShardDataset(dirs, **kwargs)
        t0, c0 = time.perf_counter(), time.process_time()
        ds.load_state_dict(state)
        first = next(iter(ds))["id"]
        t_resume, c_resume = time.perf_counter() - t0, time.process_time() - c0
        same = bool((np.asarray(first) == np.asarray(expected)).all())

        header(args, [state])
        print(
            f"uninterrupted stream to example {at:,}: {t_stream:.2f} s wall, {c_stream:.2f} s CPU "
            f"({at / t_stream / 1e6:.2f} M examples/s)"
        )
        print(
            f"resume (load_state_dict to first item) at example {at:,}: {t_resume:.3f} s wall, {c_resume:.3f} s CPU "
            f"= {t_resume / t_stream:.3f} x the uninterrupted stream (CPU: {c_resume / c_stream:.3f} x); "
            f"first item identical: {same}"
        )
        return verdict(same and t_resume <= 2.0, "at most 2 s, identical first item")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def header(args: argparse.Namespace, states: list[dict]) -> None:
    print(
        f"data: {args.records:,} records, {args.shards} shards in {args.dirs} dirs; pool {args.pool:,} per rank; "
        f"mode {args.mode}, {args.batch_size} per {'batch' if args.mode == 'batch' else 'draw'}"
    )
    print(f"state: {len(states)} x {len(json.dumps(states[0]))} bytes of JSON")
    print(
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores "
        "(wall times grow with it; CPU times much less)"
    )


def elastic(dirs: list[Path], kwargs: dict, args: argparse.Namespace) -> int:
    """N ranks stream to ``--resume-at`` between them; rank 0 of M resumes from the list of their states."""
    from mmpool.stream.dataset import StreamingMixedShardDataset

    old, new = args.ranks, args.new_ranks or args.ranks
    per_rank = args.resume_at // old
    steps = per_rank // args.batch_size if args.mode == "batch" else per_rank
    states, seen = [], []
    t_stream = c_stream = 0.0
    for rank in range(old):
        ds = StreamingMixedShardDataset(dirs, rank=rank, world_size=old, **kwargs)
        it = iter(ds)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(steps):
            seen.append(np.asarray(next(it)["id"]).reshape(-1))
        t_stream += time.perf_counter() - t0
        c_stream += time.process_time() - c0
        states.append(json.loads(json.dumps(ds.state_dict())))
        it.close()
    at = sum(len(s) for s in seen)

    ds = StreamingMixedShardDataset(dirs, rank=0, world_size=new, **kwargs)
    t0, c0 = time.perf_counter(), time.process_time()
    ds.load_state_dict(states)
    first = np.asarray(next(iter(ds))["id"]).reshape(-1)
    t_resume, c_resume = time.perf_counter() - t0, time.process_time() - c0
    fresh = not np.isin(first, np.concatenate(seen)).any() and len(np.unique(first)) == len(first)

    header(args, states)
    rank_wall, rank_cpu = t_stream / old, c_stream / old
    print(
        f"{old} ranks streaming to example {at:,} between them: {t_stream:.2f} s wall, {c_stream:.2f} s CPU in all, "
        f"{rank_wall:.2f} s wall a rank ({at / t_stream / 1e6:.2f} M examples/s)\n"
        f"elastic resume {old} -> {new} ranks (load_state_dict of the {old} states to rank 0's first item): "
        f"{t_resume:.3f} s wall, {c_resume:.3f} s CPU = {t_resume / rank_wall:.3f} x a rank's stream "
        f"(CPU: {c_resume / rank_cpu:.3f} x), {t_resume / t_stream:.3f} x all of it; "
        f"first batch holds only examples not yielded before: {fresh}"
    )
    return verdict(fresh and t_resume <= 3.0, "at most 3 s, first batch new")


def verdict(ok: bool, target: str) -> int:
    print("PASS" if ok else "FAIL", f"(target: {target})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
