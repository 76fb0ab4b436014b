"""Benchmark: data bigger than the page cache, in a memory cgroup, against what the disk and the engines' trainers do.

    python tools/bench_bigdata.py [--record 8k|5.5k] [--limit-mb 1500] [--seconds 20] [--data DIR] [--out DIR]

Every measurement runs in a child process inside a memory cgroup (v1, ``/sys/fs/cgroup/memory``; needs root) whose
limit bounds the page cache too, after the files it reads were evicted (``posix_fadvise(DONTNEED)``). In one run:

- random ``pread`` of one record at a time over the packs, with 1, 4 and 16 threads: the disk's random rate;
- a sequential read of the packs: the disk's sequential rate (records/s);
- mmpool, window bigger than the cache (pool of ``3 x limit`` bytes of records): records/s over ``--seconds``;
- mmpool, window that fits (pool of ``limit / 3`` bytes), cold: records/s over the first 40 s, and the time to the
  first batch against the time the first pool's rows take to read sequentially;
- ``torch.index_select`` of the same record size in RAM (no cgroup; as many records as the window that fits);
- the engines' trainer way (KataGo's ``data_processing_pytorch.py`` after ``shuffle.py``): shuffled ``.npz`` files
  with bit-packed planes read one after another with one prefetch thread, planes unpacked (``np.unpackbits``) and
  cast to float32 per file, batches sliced in order; beside it the shuffle step that wrote those files (a full
  rewrite of the window: KataGo's scatter of rows to random output files, then a shuffle of each): time and peak
  memory (``ru_maxrss`` of the child that ran it).

Records are the synthetic schema (``mmpool.testing.synthetic``) with 130 planes (8,344 B, lc0's V6 is 8,356 B) or 86 planes
(5,528 B, KataGo's rows are 5.5-8.4 KB). Writes ``OUT/bigdata-{record}.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import benchdata as bd
import numpy as np

RECORDS = {"8k": 130, "5.5k": 86}  # planes (channels) of the synthetic schema
ROWS = [540_000, 180_000]
SHARDS = [108, 36]
BATCH = 1024
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
NPZ_ROWS = 5_000  # rows per shuffled .npz file: unpacked to float32 a file is ~170 MB at 8 KB, and must fit the cgroup


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- children (run inside the cgroup)


def child_preads(dirs: list[str], threads: int, seconds: float, itemsize: int) -> dict:
    """Random reads of one record each, ``threads`` at a time, for ``seconds``."""
    packs = bd.pack_files(dirs)
    fds = [os.open(p, os.O_RDONLY) for p in packs]
    sizes = [os.fstat(fd).st_size // itemsize - 1 for fd in fds]
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def run(k: int) -> None:
        rng = np.random.default_rng(k)
        buf = bytearray(itemsize)
        n = 0
        while time.perf_counter() < stop:
            i = int(rng.integers(len(fds)))
            os.preadv(fds[i], [buf], 128 + int(rng.integers(sizes[i])) * itemsize)
            n += 1
        counts[k] = n

    t0 = time.perf_counter()
    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"records_per_s": sum(counts) / (time.perf_counter() - t0)}


def child_sequential(dirs: list[str], itemsize: int, seconds: float) -> dict:
    """Sequential read of the packs (1 MB reads) for at most ``seconds``."""
    buf = bytearray(1 << 20)
    total = 0
    t0 = time.perf_counter()
    for path in bd.pack_files(dirs):
        fd = os.open(path, os.O_RDONLY)
        try:
            while (n := os.readv(fd, [buf])) and time.perf_counter() - t0 < seconds:
                total += n
        finally:
            os.close(fd)
        if time.perf_counter() - t0 >= seconds:
            break
    return {"records_per_s": total / itemsize / (time.perf_counter() - t0), "bytes": total}


def child_stream(dirs: list[str], pool: int, seconds: float, hints: bool) -> dict:
    """mmpool for ``seconds``: records/s, time to the first batch, what was read ahead and hinted."""
    import functools

    import mmpool.stream.iterator
    from mmpool.store.gather import ShardStore
    from mmpool.stream.dataset import StreamingMixedShardDataset

    if not hints:  # page faults with the kernel's read-around, no hints
        mmpool.stream.iterator.ShardStore = functools.partial(ShardStore, cold_hints=False)  # type: ignore[misc]
    ds = StreamingMixedShardDataset(dirs, pool_size=pool, batch_size=BATCH, random_seed=5, num_epochs=None)
    it = iter(ds)
    n, first = 0, None
    t0 = time.perf_counter()
    for batch in it:
        if first is None:
            first = time.perf_counter() - t0
        n += len(batch["id"])
        if time.perf_counter() - t0 >= seconds:
            break
    took = time.perf_counter() - t0
    store = it.store
    ra = store.read_ahead
    it.close()
    return {
        "records_per_s": n / took,
        "first_batch_s": first,
        "records": n,
        "hinted_rows": store.hinted_rows,
        "read_ahead_bytes": ra.read_bytes if ra else 0,
        "read_ahead_dropped": ra.dropped_bytes if ra else 0,
        "read_ahead_budget": ra.budget if ra else 0,
        "major_faults": resource.getrusage(resource.RUSAGE_SELF).ru_majflt,
        "cpu_user_s": resource.getrusage(resource.RUSAGE_SELF).ru_utime,
        "cpu_sys_s": resource.getrusage(resource.RUSAGE_SELF).ru_stime,
        "wall_s": took,
    }


def child_index_select(dirs: list[str], rows: int, seconds: float) -> dict:
    """``torch.index_select`` of random batches from ``rows`` records in RAM."""
    import torch

    data = bd.load_records(dirs)[:rows].clone()
    rng = np.random.default_rng(1)
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.index_select(data, 0, torch.from_numpy(rng.integers(0, rows, BATCH)))
        n += BATCH
    return {"records_per_s": n / (time.perf_counter() - t0)}


def _katago_fields(records: np.ndarray) -> dict[str, np.ndarray]:
    """A KataGo-style row: bit-packed planes (one byte per 8 squares) and the other fields as they are."""
    planes = records["planes"]
    return {
        "binaryInputNCHWPacked": np.packbits(planes.reshape(len(planes), planes.shape[1], -1), axis=2),
        "policyTargetsNCMove": records["move"],
        "globalTargetsNC": records["wdl"],
        "id": records["id"],
    }


def child_shuffle(dirs: list[str], out: str, buckets: int) -> dict:
    """KataGo's shuffle step over the whole window: read every record once, scatter each row to a random output
    file (pass 1, to temporary files), then load, shuffle and write each output file as ``.npz`` (pass 2)."""
    from mmpool.format.manifest import read_manifest

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    temps = [open(out_dir / f"tmp{b}.bin", "wb") for b in range(buckets)]
    dtype = None
    for d in dirs:
        man = read_manifest(Path(d))
        dtype = man.schema.dtype
        for pack in man.packs:
            data = np.memmap(Path(d) / pack.file, dtype=dtype, mode="r", offset=pack.data_offset, shape=(pack.rows,))
            for at in range(0, pack.rows, 50_000):
                part = np.array(data[at : at + 50_000])
                fields = _katago_fields(part)
                row = np.empty(len(part), dtype=[(k, v.dtype, v.shape[1:]) for k, v in fields.items()])
                for k, v in fields.items():
                    row[k] = v
                where = rng.integers(0, buckets, len(part))
                order = np.argsort(where, kind="stable")
                bounds = np.searchsorted(where[order], np.arange(buckets + 1))
                for b in range(buckets):
                    temps[b].write(row[order[bounds[b] : bounds[b + 1]]].tobytes())
            del data
    for f in temps:
        f.close()
    assert dtype is not None
    row_dtype = row.dtype
    for b in range(buckets):
        path = out_dir / f"tmp{b}.bin"
        rows = np.fromfile(path, dtype=row_dtype)
        rows = rows[rng.permutation(len(rows))]
        np.savez(out_dir / f"data{b}.npz", **{k: rows[k] for k in row_dtype.names})
        path.unlink()
        del rows
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def child_trainer(npz_dir: str, seconds: float) -> dict:
    """KataGo's trainer loop: shuffled files one after another, one prefetch thread loading the next file, planes
    unpacked and cast to float32 per file, batches sliced in order."""
    import torch

    files = sorted(Path(npz_dir).glob("data*.npz"))
    loaded: queue.Queue = queue.Queue(maxsize=1)

    def prefetch() -> None:
        for path in files:
            with np.load(path) as z:
                loaded.put({k: z[k] for k in z.files})
        loaded.put(None)

    threading.Thread(target=prefetch, daemon=True).start()
    n, first = 0, None
    t0 = time.perf_counter()
    while (arrays := loaded.get()) is not None and time.perf_counter() - t0 < seconds:
        packed = arrays["binaryInputNCHWPacked"]
        planes = np.unpackbits(packed, axis=2)[:, :, :64].astype(np.float32)
        tensors = {
            "planes": torch.from_numpy(planes),
            "move": torch.from_numpy(arrays["policyTargetsNCMove"].astype(np.int64)),
            "wdl": torch.from_numpy(arrays["globalTargetsNC"]),
        }
        for at in range(0, len(planes), BATCH):
            batch = {k: v[at : at + BATCH] for k, v in tensors.items()}
            if first is None:
                first = time.perf_counter() - t0
            n += len(batch["planes"])
    return {"records_per_s": n / (time.perf_counter() - t0), "first_batch_s": first}


CHILDREN = {
    "preads": child_preads,
    "sequential": child_sequential,
    "stream": child_stream,
    "index_select": child_index_select,
    "shuffle": child_shuffle,
    "trainer": child_trainer,
}


# --------------------------------------------------------------------------- the parent


class Cgroup:
    """A cgroup v1 memory group for benchmark children; removed on exit."""

    def __init__(self, limit: int) -> None:
        if not (CGROUP_ROOT / "cgroup.procs").exists():
            raise SystemExit(f"no cgroup v1 memory controller at {CGROUP_ROOT}: this benchmark needs one (and root)")
        self.path = CGROUP_ROOT / f"mmpool-bigdata-{os.getpid()}"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit))

    def enter(self) -> None:
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def run_child(what: str, kwargs: dict, group: Cgroup | None, evict: list | None = None) -> dict:
    if evict:
        bd.evict(evict)
    cmd = [sys.executable, __file__, "--child", what, json.dumps(kwargs)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=group.enter if group else None)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    log(f"  {what} {kwargs.get('threads', kwargs.get('pool', ''))}: {out}")
    return out


def run(args: argparse.Namespace) -> dict:
    channels = RECORDS[args.record]
    dirs = [str(d) for d in bd.converted_dataset(args.data, ROWS, SHARDS, "256M", channels=channels)]
    from mmpool.testing.synthetic import position_dtype

    itemsize = position_dtype(channels).itemsize
    limit = args.limit_mb << 20
    packs = bd.pack_files(dirs)
    total = sum(p.stat().st_size for p in packs)
    big_pool = min(sum(ROWS) - 1, 3 * limit // itemsize)
    fit_pool = limit // 3 // itemsize
    secs = args.seconds
    log(
        f"bigdata[{args.record}]: {sum(ROWS):,} records of {itemsize} B ({total / 1e9:.2f} GB), cgroup {args.limit_mb} MB"
    )
    group = Cgroup(limit)
    res: dict = {"itemsize": itemsize, "data_bytes": total, "limit": limit, "big_pool": big_pool, "fit_pool": fit_pool}
    try:
        for _ in range(args.rounds):
            for n in (1, 4, 16):
                res.setdefault(f"preads{n}", []).append(
                    run_child(
                        "preads", {"dirs": dirs, "threads": n, "seconds": secs, "itemsize": itemsize}, group, packs
                    )
                )
            res.setdefault("sequential", []).append(
                run_child("sequential", {"dirs": dirs, "itemsize": itemsize, "seconds": secs}, group, packs)
            )
            res.setdefault("stream_big", []).append(
                run_child("stream", {"dirs": dirs, "pool": big_pool, "seconds": secs, "hints": True}, group, packs)
            )
            res.setdefault("stream_fit", []).append(
                run_child("stream", {"dirs": dirs, "pool": fit_pool, "seconds": 40.0, "hints": True}, group, packs)
            )
        res["stream_big_nohints"] = run_child(
            "stream", {"dirs": dirs, "pool": big_pool, "seconds": min(secs, 10.0), "hints": False}, group, packs
        )
        bd.warm(packs)
        res["stream_warm"] = run_child("stream", {"dirs": dirs, "pool": fit_pool, "seconds": secs, "hints": True}, None)
        res["index_select"] = run_child("index_select", {"dirs": dirs, "rows": fit_pool, "seconds": secs}, None)
        npz = Path(args.data) / f"katago-shuffled-{args.record}"
        for old in npz.glob("*"):
            old.unlink()
        res["shuffle"] = run_child("shuffle", {"dirs": dirs, "out": str(npz), "buckets": sum(ROWS) // NPZ_ROWS}, None)
        res["trainer"] = run_child("trainer", {"npz_dir": str(npz), "seconds": secs}, group, sorted(npz.glob("*.npz")))
        res["npz_bytes"] = sum(p.stat().st_size for p in npz.glob("*.npz"))
    finally:
        group.remove()
    res["load_avg"] = os.getloadavg()
    return res


def rows(res: dict) -> list[dict]:
    med = {k: bd.median([x["records_per_s"] for x in v]) for k, v in res.items() if isinstance(v, list) and v}
    seq = med["sequential"]
    fit = res["stream_fit"]
    first_pool_seq_s = res["fit_pool"] * res["itemsize"] / (seq * res["itemsize"])
    return [
        bd.result(
            "stream, window 3x the cache, vs 16 threads of random pread",
            med["stream_big"],
            med["preads16"],
            0.5,
            "records/s",
            note=f"pool {res['big_pool']:,}; 1 thread {med['preads1']:,.0f}/s, 4 threads "
            f"{med['preads4']:,.0f}/s; with cold_hints=False (page faults, kernel read-around) {res['stream_big_nohints']['records_per_s']:,.0f}/s",
        ),
        bd.result(
            "stream, window that fits, cold, first 40 s, vs sequential read",
            med["stream_fit"],
            seq,
            0.5,
            "records/s",
            note=f"pool {res['fit_pool']:,}",
        ),
        bd.result(
            "stream, window that fits, cold: time to first batch vs reading the first pool sequentially",
            bd.median([x["first_batch_s"] for x in fit]),
            first_pool_seq_s,
            2.0,
            "s",
            higher_is_better=False,
        ),
        context(
            "stream, window that fits, warm (no cgroup), vs sequential read",
            res["stream_warm"]["records_per_s"],
            seq,
            "the stream's own CPU bound on this machine at this load",
        ),
        context(
            "stream, window that fits, cold, vs torch.index_select in RAM",
            med["stream_fit"],
            res["index_select"]["records_per_s"],
            "index_select without a cgroup",
        ),
        context(
            "stream, window that fits, cold, vs KataGo-style trainer over shuffled npz",
            med["stream_fit"],
            res["trainer"]["records_per_s"],
            f"npz files {res['npz_bytes'] / 1e9:.2f} GB (planes bit-packed); the shuffle step that wrote them took "
            f"{res['shuffle']['seconds']:.0f} s at a peak RSS of {res['shuffle']['peak_rss'] / 1e9:.2f} GB",
        ),
    ]


def context(metric: str, mine: float, base: float, note: str) -> dict:
    """A row without a target (target ">= 0"): a comparison to read, not to pass."""
    return bd.result(metric, mine, base, 0.0, "records/s", note=f"no target; {note}")


def main(argv: list[str] | None = None) -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](**json.loads(sys.argv[3]))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--record", choices=list(RECORDS), default="8k")
    p.add_argument("--limit-mb", type=int, default=1500)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--data", default="/work/bench_data")
    p.add_argument("--out", default="bench_out")
    args = p.parse_args(argv)
    res = run(args)
    table = rows(res)
    path = bd.save(args.out, "bigdata", args.record, table, res)
    print(bd.table(table))
    print(f"\nload average {res['load_avg']}; written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
