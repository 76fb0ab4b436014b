"""Benchmark: streaming from a cold page cache, with and without read-ahead of newly activated rows.

    python tools/bench_coldcache.py --scale small|large [--out bench_out] [--data bench_out/data]

All in one run, on the same converted data and the same seed (StreamingMixedShardDataset in this process, batches
of 1024, one whole epoch):

- warm: every pack in the page cache (read once beforehand);
- cold, prefetch: every pack evicted first (``posix_fadvise(DONTNEED)``), then streamed with ``prefetch=True``
  (rows entering the pool are read ahead in a background thread, ``mmpool.store.readahead``);
- cold, no prefetch: evicted again, streamed with ``prefetch=False`` (pages fault in as the random gathers touch
  them, plus what the kernel reads around a fault: ``read_ahead_kb`` of the device);
- the two cold streams again with the kernel's read-around off (``MADV_RANDOM`` on every mapping): what a device or
  file system with little read-ahead gives, and what the prefetch is there for;
- disk: the largest pack read sequentially after evicting it: the rate the disk can deliver.

Each stream reports examples/s over the epoch (median of the rounds, which alternate the order of the streams),
the record bytes it delivered per second, and the time to its first batch (the first pool fill, which with prefetch
waits for its rows to be read). The table gives the ratios to the warm stream, to the cold stream without prefetch
(same read-around) and to the disk's sequential rate. The cold streams must return
exactly the warm stream's records (the ids in order are hashed and compared). Writes ``OUT/coldcache.json``.

The data is its own cache entry under ``--data``, so evicting it does not disturb other benchmarks' warm data.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import mmap
import os
import sys
import time
from pathlib import Path

import benchdata as bd  # a sibling module: tools/ is on the path of a script run from it
import numpy as np

import mmpool.store.gather
from mmpool.stream.dataset import StreamingMixedShardDataset

BATCH = 1024
SCALES = {
    "small": {"records": [1_500_000, 500_000], "shards": [300, 100], "pack_size": "256M", "pool": 500_000, "rounds": 2},
    "large": {
        "records": [12_000_000, 4_000_000],
        "shards": [600, 200],
        "pack_size": "1G",
        "pool": 2_000_000,
        "rounds": 1,
    },
}
# name: (label, evict first, prefetch, kernel read-around)
STREAMS = {
    "warm": ("warm", False, True, True),
    "cold_prefetch": ("cold, prefetch", True, True, True),
    "cold_no_prefetch": ("cold, no prefetch", True, False, True),
    "cold_prefetch_no_ra": ("cold, prefetch, no read-around", True, True, False),
    "cold_no_prefetch_no_ra": ("cold, no prefetch, no read-around", True, False, False),
}
BASELINE = {
    "cold_prefetch": "cold_no_prefetch",
    "cold_no_prefetch": "cold_no_prefetch",
    "cold_prefetch_no_ra": "cold_no_prefetch_no_ra",
    "cold_no_prefetch_no_ra": "cold_no_prefetch_no_ra",
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def resident(paths: list[Path]) -> float:
    """Fraction of the files' pages in the page cache (mincore over read-only mappings)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    cached = total = 0
    for path in paths:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        view = np.frombuffer(mm, dtype=np.uint8)
        pages = -(-len(mm) // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        ok = libc.mincore(ctypes.c_void_p(view.ctypes.data), len(mm), vec) == 0
        del view
        mm.close()
        if not ok:
            return float("nan")
        cached += int(np.frombuffer(vec, dtype=np.uint8).astype(bool).sum())
        total += pages
    return cached / max(1, total)


def read_ahead_kb(path: Path) -> int | None:
    """The read-ahead window of the block device holding ``path`` (what one MADV_WILLNEED call reads at most)."""
    dev = os.stat(path).st_dev
    base = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
    for queue in (f"{base}/queue", f"{base}/../queue"):  # a disk, or a partition of one
        try:
            with open(f"{queue}/read_ahead_kb") as f:
                return int(f.read())
        except (OSError, ValueError):
            continue
    return None


def disk_rate(path: Path) -> float:
    """Bytes per second of a sequential read of ``path`` from a cold cache."""
    bd.evict([path])
    t0 = time.perf_counter()
    nbytes = bd.warm([path])
    return nbytes / (time.perf_counter() - t0)


@contextlib.contextmanager
def no_read_around():
    """Every pack the store maps gets ``MADV_RANDOM``: a page fault reads that page only, nothing around it."""
    real = mmpool.store.gather._open

    def open_random(ref, itemsize):
        mapped = real(ref, itemsize)
        mapped.mm.madvise(mmap.MADV_RANDOM)  # npy packs: a _Mapped
        return mapped

    mmpool.store.gather._open = open_random
    try:
        yield
    finally:
        mmpool.store.gather._open = real


def stream(dirs: list[Path], pool: int, prefetch: bool, seed: int = 11) -> dict:
    """One epoch: examples/s, record bytes/s, time to the first batch, and a hash of the ids in stream order."""
    ds = StreamingMixedShardDataset(dirs, pool_size=pool, batch_size=BATCH, random_seed=seed, prefetch=prefetch)
    itemsize = ds.catalog.schema.itemsize
    digest = hashlib.blake2b(digest_size=16)
    examples, first = 0, None
    t0 = time.perf_counter()
    for batch in ds:
        if first is None:
            first = time.perf_counter() - t0
        ids = batch["id"].numpy()
        digest.update(ids.tobytes())
        examples += len(ids)
    seconds = time.perf_counter() - t0
    return {
        "examples": examples,
        "seconds": seconds,
        "examples_per_s": examples / seconds,
        "bytes_per_s": examples * itemsize / seconds,
        "first_batch_s": first,
        "ids_hash": digest.hexdigest(),
    }


def run(scale: str, data_root: Path, out_dir: Path) -> dict:
    cfg = SCALES[scale]
    dirs = bd.converted_dataset(data_root, cfg["records"], cfg["shards"], cfg["pack_size"])
    packs = bd.pack_files(dirs)
    largest = max(packs, key=lambda p: p.stat().st_size)
    log(
        f"coldcache[{scale}]: {bd.record_count(dirs):,} records in {len(packs)} packs "
        f"({sum(p.stat().st_size for p in packs) / 1e9:.2f} GB), pool {cfg['pool']:,}"
    )

    disk = disk_rate(largest)
    log(f"  disk: {disk / 1e6:.0f} MB/s sequential ({largest.name})")
    runs: dict[str, list[dict]] = {name: [] for name in STREAMS}
    evicted: dict[str, float] = {}
    for k in range(cfg["rounds"]):
        for name in list(STREAMS) if k % 2 == 0 else list(STREAMS)[::-1]:
            label, cold, prefetch, read_around = STREAMS[name]
            if cold:
                bd.evict(packs)
                evicted[name] = max(evicted.get(name, 0.0), resident(packs))
            else:
                bd.warm(packs)
            with contextlib.nullcontext() if read_around else no_read_around():
                runs[name].append(stream(dirs, cfg["pool"], prefetch=prefetch))
            log(f"  round {k + 1}, {label}: {runs[name][-1]['examples_per_s'] / 1e6:.2f}M examples/s")
    rate = {name: bd.median([r["examples_per_s"] for r in rs]) for name, rs in runs.items()}
    warm = runs["warm"][0]
    rows = []
    for name, (label, *_rest) in STREAMS.items():
        rs = runs[name]
        base = BASELINE.get(name)
        rows.append(
            {
                "stream": label,
                "examples_per_s": rate[name],
                "mb_per_s": bd.median([r["bytes_per_s"] for r in rs]) / 1e6,
                "first_batch_s": bd.median([r["first_batch_s"] for r in rs]),
                "vs_warm": rate[name] / rate["warm"],
                "vs_cold_no_prefetch": rate[name] / rate[base] if base else None,
                "vs_disk": bd.median([r["bytes_per_s"] for r in rs]) / disk,
                "identical_to_warm": all(r["ids_hash"] == warm["ids_hash"] for r in rs),
            }
        )
    rows.append(
        {
            "stream": "disk, sequential read",
            "examples_per_s": None,
            "mb_per_s": disk / 1e6,
            "first_batch_s": None,
            "vs_warm": None,
            "vs_cold_no_prefetch": None,
            "vs_disk": 1.0,
            "identical_to_warm": None,
        }
    )
    details = {
        "records": bd.record_count(dirs),
        "packs": len(packs),
        "pool": cfg["pool"],
        "batch": BATCH,
        "pack_bytes": sum(p.stat().st_size for p in packs),
        "dirs": [str(d) for d in dirs],
        "resident_after_evict": evicted,
        "read_ahead_kb": read_ahead_kb(largest),
        "runs": runs,
        "rounds": cfg["rounds"],
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
    }
    doc = {
        "benchmark": "coldcache",
        "scale": scale,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": rows,
        "details": details,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "coldcache.json").write_text(json.dumps(doc, indent=1, default=float))
    return doc


def table(doc: dict) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    out = [
        "| stream | examples/s | record MB/s | first batch (s) | vs warm | vs cold, no prefetch | vs disk | "
        "same records as warm |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["rows"]:
        same = "-" if r["identical_to_warm"] is None else ("yes" if r["identical_to_warm"] else "NO")
        out.append(
            f"| {r['stream']} | {f(r['examples_per_s'], ',.0f')} | {f(r['mb_per_s'], ',.0f')} | "
            f"{f(r['first_batch_s'], '.3f')} | {f(r['vs_warm'], '.2f')} | "
            f"{f(r['vs_cold_no_prefetch'], '.2f')} | {f(r['vs_disk'], '.2f')} | {same} |"
        )
    d = doc["details"]
    out += [
        "",
        f"- {d['records']:,} records in {d['packs']} packs ({d['pack_bytes'] / 1e9:.2f} GB), pool "
        f"{d['pool']:,}, batches of {d['batch']}, one epoch in one process, median of {d['rounds']} round(s); "
        f"load average {d['load_avg'][0]:.1f} on {d['cpus']} CPUs",
        f"- after each eviction at most {max(d['resident_after_evict'].values()):.1%} of the packs' pages were "
        f"cached; the disk's read_ahead_kb is {d['read_ahead_kb']} (what the kernel reads around a page fault, "
        "and at most per MADV_WILLNEED call)",
        "- vs cold, no prefetch: against the cold stream without prefetch with the same read-around setting",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=list(SCALES), default="small")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--data", default=str(bd.DEFAULT_ROOT))
    args = p.parse_args(argv)
    doc = run(args.scale, Path(args.data), Path(args.out))
    print(table(doc))
    print(f"\nwritten: {Path(args.out) / 'coldcache.json'}")
    return 0 if all(r["identical_to_warm"] is not False for r in doc["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
