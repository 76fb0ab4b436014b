"""Benchmark data: converted (and legacy) synthetic datasets, built once and cached by their parameters.

    converted_dataset(root, records_per_dir=[3_000_000, 1_000_000], shards_per_dir=[600, 200], pack_size="1G")
        -> [root/conv-.../dir0, root/conv-.../dir1]

Converted directories are written directly (records from ``make_positions``, packed with the library's
``write_pack`` and ``write_manifest``), pack by pack and shard by shard, so 40M records (~11 GB) never sit in RAM at once. The files
are exactly what ``mmpool convert`` makes from ``make_synthetic`` shards of the same seed: same schema, same record
bytes, same ids ``(dir << 40) | (shard << 20) | row``, same per-shard CRCs. A cache entry is complete only when its
``.complete`` marker exists; an incomplete one (a killed build) is deleted and rebuilt.

``legacy_dataset`` caches ``make_synthetic`` shard directories (the input of conversion benchmarks) the same way.

Page-cache helpers: ``warm`` reads files once so later gathers hit RAM; ``evict`` drops their cached pages
(``posix_fadvise(DONTNEED)``); ``resident_fraction`` says how much of them is cached (``mincore``);
``load_records`` copies every record, in catalog order, into one in-RAM ``uint8 (N, itemsize)`` tensor for the
``torch.index_select`` baselines.

Results: ``result`` makes one table row (mmpool, baseline, ratio, target, pass), ``table`` the markdown table,
``save`` the JSON file ``OUT/{name}-{scale}.json`` that ``tools/bench.py`` collects into its report.

    python tools/benchdata.py --records 30000000 10000000 --shards 600 200     (build the 40M set ahead of time)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from mmpool.format.manifest import (
    MANIFEST_NAME,
    Manifest,
    PackEntry,
    Schema,
    ShardEntry,
    read_manifest,
    write_manifest,
    write_pack,
)
from mmpool.testing.synthetic import make_positions, make_synthetic

DEFAULT_ROOT = Path("bench_out") / "data"
CACHE_VERSION = 1
COMPLETE = ".complete"
_ROW_BITS = 20
_SHARD_BITS = 20
_CHUNK = 16 << 20


def _size(size: int | str) -> int:
    from mmpool.convert.converter import parse_size

    return parse_size(size)


def _split(total: int, parts: int) -> list[int]:
    base, rem = divmod(total, parts)
    return [base + (i < rem) for i in range(parts)]


def _schema(channels: int) -> Schema:
    one = make_positions(1, 0, channels=channels)
    return Schema.from_fields({k: (v.dtype, v.shape[1:]) for k, v in one.items()})


def _write_pack(
    path: Path, schema: Schema, shards: list[tuple[int, int, int]], seed: int, channels: int
) -> tuple[dict, list[dict]]:
    """Write one pack of shards ``(dir_index, number, rows)``; returns its entry and shard entries (as dicts)."""

    def arrays() -> Iterator[tuple[int, str, dict[str, np.ndarray]]]:
        for d, number, n in shards:
            ids = (d << (_SHARD_BITS + _ROW_BITS)) | (number << _ROW_BITS)
            yield number, f"shard_{number:05d}.npz", make_positions(n, seed, id_base=ids, channels=channels)

    pack, entries = write_pack(path, "npy", schema, sum(n for _, _, n in shards), arrays())
    return pack.__dict__, [{k: v for k, v in e.__dict__.items() if k != "pack"} for e in entries]


def _plan(counts: list[int], itemsize: int, pack_size: int) -> list[list[tuple[int, int]]]:
    """Consecutive shards ``(number, rows)`` grouped into packs of at most ``pack_size`` record bytes."""
    groups: list[list[tuple[int, int]]] = []
    current: list[tuple[int, int]] = []
    size = 0
    for number, n in enumerate(counts):
        if current and size + n * itemsize > pack_size:
            groups.append(current)
            current, size = [], 0
        current.append((number, n))
        size += n * itemsize
    if current:
        groups.append(current)
    return groups


def _ready(path: Path, params: dict) -> bool:
    marker = path / COMPLETE
    if marker.is_file():
        try:
            return json.loads(marker.read_text()) == params
        except ValueError:
            pass
    return False


def _fresh(path: Path) -> None:
    """Delete an incomplete cache entry (only ever a directory under the bench data root named by us)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def converted_dataset(
    root: str | Path = DEFAULT_ROOT,
    records_per_dir: Sequence[int] = (3_000_000, 1_000_000),
    shards_per_dir: Sequence[int] = (600, 200),
    pack_size: int | str = "1G",
    channels: int = 4,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> list[Path]:
    """Converted directories ``dir0, dir1, ...`` holding ``records_per_dir[d]`` records in ``shards_per_dir[d]``
    shards (rows split as evenly as possible), built once and cached under ``root``.

    ``workers`` processes write packs in parallel (generation is CPU-bound); each holds one shard at a time.
    """
    records = [int(r) for r in records_per_dir]
    shards = [int(s) for s in shards_per_dir]
    if len(records) != len(shards) or not records:
        raise ValueError(f"records_per_dir {records} and shards_per_dir {shards} must be non-empty and as long")
    pack_bytes = _size(pack_size)
    params = {
        "version": CACHE_VERSION,
        "records": records,
        "shards": shards,
        "pack_size": pack_bytes,
        "channels": channels,
        "seed": seed,
    }
    tag = "-".join(f"{r}x{s}" for r, s in zip(records, shards))
    base = Path(root) / f"conv-{tag}-p{pack_bytes >> 20}M-c{channels}-s{seed}-v{CACHE_VERSION}"
    dirs = [base / f"dir{d}" for d in range(len(records))]
    if _ready(base, params):
        return dirs
    _fresh(base)
    t0 = time.perf_counter()
    schema = _schema(channels)
    jobs = []  # (dir index, pack index, path, [(d, number, rows)])
    for d, (total, count) in enumerate(zip(records, shards)):
        if not 0 < count < 1 << _SHARD_BITS or not 0 < -(-total // count) < 1 << _ROW_BITS:
            raise ValueError(f"dir{d}: {total} records in {count} shards does not fit the synthetic id fields")
        dirs[d].mkdir(parents=True)
        for k, group in enumerate(_plan(_split(total, count), schema.itemsize, pack_bytes)):
            jobs.append((d, k, dirs[d] / f"pack-{k:05d}.npy", [(d, num, n) for num, n in group]))
    results: dict[tuple[int, int], tuple[dict, list[dict]]] = {}
    done_rows, all_rows = 0, sum(records)

    def done(d: int, k: int, group: list, result: tuple[dict, list[dict]]) -> None:
        nonlocal done_rows
        results[(d, k)] = result
        done_rows += sum(n for _, _, n in group)
        if progress:
            rate = done_rows / max(1e-9, time.perf_counter() - t0)
            print(
                f"\rbenchdata: {done_rows:,}/{all_rows:,} records ({rate / 1e6:.2f}M/s)",
                end="",
                file=sys.stderr,
                flush=True,
            )

    if workers <= 1 or len(jobs) == 1:
        for d, k, path, group in jobs:
            done(d, k, group, _write_pack(path, schema, group, seed, channels))
    else:
        # spawn: a fresh interpreter, whatever (torch, threads) the caller has loaded.
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {
                pool.submit(_write_pack, path, schema, group, seed, channels): (d, k, group)
                for d, k, path, group in jobs
            }
            for fut in cf.as_completed(futures):
                done(*futures[fut], fut.result())
    if progress:
        print(file=sys.stderr)
    for d in range(len(records)):
        keys = sorted(k for dd, k in results if dd == d)
        packs, entries = [], []
        for k in keys:
            pack, shard_dicts = results[(d, k)]
            packs.append(PackEntry(**pack))
            entries += [ShardEntry(pack=len(packs) - 1, **s) for s in shard_dicts]
        write_manifest(dirs[d], Manifest("npy", schema, tuple(packs), tuple(entries)))
    (base / COMPLETE).write_text(json.dumps(params))
    if progress:
        print(f"benchdata: built {base} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return dirs


def legacy_dataset(
    root: str | Path = DEFAULT_ROOT,
    shards_per_dir: Sequence[int] = (48,),
    rows_per_shard: int = 10_000,
    fmt: str = "npz",
    seed: int = 0,
    channels: int = 4,
) -> list[Path]:
    """Legacy shard directories (``make_synthetic``), cached under ``root``: the input of conversion benchmarks."""
    shards = [int(s) for s in shards_per_dir]
    params = {
        "version": CACHE_VERSION,
        "shards": shards,
        "rows": rows_per_shard,
        "fmt": fmt,
        "seed": seed,
        "channels": channels,
    }
    base = Path(root) / f"legacy-{'x'.join(map(str, shards))}-r{rows_per_shard}-{fmt}-c{channels}-s{seed}"
    dirs = [base / f"dir{d}" for d in range(len(shards))]
    if _ready(base, params):
        return dirs
    _fresh(base)
    make_synthetic(base, shards, rows_per_shard, fmt=fmt, seed=seed, channels=channels)
    (base / COMPLETE).write_text(json.dumps(params))
    return dirs


# --------------------------------------------------------------------------- page cache


def add_common_args(p: argparse.ArgumentParser, scales: Iterable[str]) -> None:
    """The options every benchmark tool takes, so tools/bench.py can run them all alike."""
    p.add_argument("--scale", choices=sorted(scales), default="small")
    p.add_argument("--out", default="bench_out", help="where results go (default bench_out)")
    p.add_argument("--data", default=None, help="benchmark data cache (default OUT/data)")


def data_root(args: argparse.Namespace) -> Path:
    """Where the benchmark data is cached: ``--data``, else OUT/data."""
    return Path(args.data) if args.data else Path(args.out) / "data"


def pack_files(dirs: Iterable[str | Path]) -> list[Path]:
    """The pack files of converted directories, in manifest order."""
    out = []
    for d in dirs:
        out += [Path(d) / p.file for p in read_manifest(Path(d)).packs]
    return out


def _files(paths: Iterable[str | Path]) -> list[Path]:
    """Files themselves, or the pack files of converted directories (those holding a manifest)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir() and (p / MANIFEST_NAME).exists():
            out += pack_files([p])
        elif p.is_dir():
            out += sorted(q for q in p.iterdir() if q.is_file())
        else:
            out.append(p)
    return out


def warm(paths: Iterable[str | Path]) -> int:
    """Read files (or converted directories' packs) once so their pages are cached; returns the bytes read."""
    buf = bytearray(_CHUNK)
    total = 0
    for path in _files(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while n := os.readv(fd, [buf]):
                total += n
        finally:
            os.close(fd)
    return total


def evict(paths: Iterable[str | Path]) -> None:
    """Drop the cached pages of files (or converted directories' packs): the next read goes to disk.

    Only clean pages can be dropped: the files must have been written out (packs are fsynced when committed)."""
    for path in _files(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(paths: Iterable[str | Path]) -> float:
    """Fraction of the files' (or converted directories' packs') pages now in the page cache (``mincore``)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    page = os.sysconf("SC_PAGE_SIZE")
    have = total = 0
    for path in _files(paths):
        size = path.stat().st_size
        if size == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
            pages = -(-size // page)
            vec = (ctypes.c_ubyte * pages)()
            try:
                if libc.mincore(addr, size, vec) != 0:
                    raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            finally:
                libc.munmap(addr, size)
            have += int((np.frombuffer(vec, dtype=np.uint8) & 1).sum())
            total += pages
        finally:
            os.close(fd)
    return have / total if total else 1.0


def record_count(dirs: Sequence[str | Path]) -> int:
    """Records in the converted directories."""
    return sum(s.rows for d in dirs for s in read_manifest(Path(d)).shards)


def load_records(dirs: Sequence[str | Path], drop_cache: bool = False):
    """Every record of the directories, in catalog order (directory, then shard number), as one in-RAM
    ``torch.uint8`` tensor ``(N, itemsize)``; global row ``i`` is the ``i``-th record of the catalog.

    ``drop_cache`` evicts each pack from the page cache after copying it, so the RAM copy and the page
    cache never both hold the whole dataset (the 40M-record baseline).
    """
    import torch

    manifests = [read_manifest(Path(d)) for d in dirs]
    itemsize = manifests[0].schema.itemsize
    total = sum(s.rows for m in manifests for s in m.shards)
    out = torch.empty((total, itemsize), dtype=torch.uint8)
    dst = out.numpy()
    at = 0  # first global row of the directory
    for d, m in zip(dirs, manifests):
        # Catalog order inside a directory is ascending shard number, the manifest's order.
        starts = at + np.concatenate([[0], np.cumsum([s.rows for s in m.shards])])
        for p, pack in enumerate(m.packs):
            path = Path(d) / pack.file
            rows = np.memmap(path, dtype=np.uint8, mode="r", offset=pack.data_offset, shape=(pack.rows, itemsize))
            for i, s in enumerate(m.shards):
                if s.pack == p:
                    dst[starts[i] : starts[i] + s.rows] = rows[s.first_row : s.first_row + s.rows]
            del rows
            if drop_cache:
                evict([path])
        at = int(starts[-1])
    return out


# --------------------------------------------------------------------------- results


def result(
    metric: str,
    mmpool: float,
    baseline: float,
    target: float,
    unit: str = "",
    note: str = "",
    higher_is_better: bool = True,
    ratio: float | None = None,
) -> dict:
    """One row of a benchmark table: ``ratio = mmpool / baseline`` passes when ``>= target`` (or ``<=`` when
    lower is better, e.g. times and bytes)."""
    if ratio is None:
        ratio = mmpool / baseline if baseline else float("inf")
    ok = ratio >= target if higher_is_better else ratio <= target
    return {
        "metric": metric,
        "mmpool": mmpool,
        "baseline": baseline,
        "ratio": ratio,
        "unit": unit,
        "target": f"{'>=' if higher_is_better else '<='} {target:g}",
        "pass": bool(ok),
        "note": note,
    }


def _fmt(x: float, unit: str) -> str:
    if isinstance(x, str):
        return x
    if unit in ("rows/s", "examples/s", "B"):
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:.2f}{suffix} {unit}"
        return f"{x:.2f} {unit}"
    return f"{x:.3g} {unit}".strip()


def table(rows: Sequence[dict]) -> str:
    """The markdown table of result rows."""
    out = ["| metric | mmpool | baseline | ratio | target | pass/fail |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(
            f"| {r['metric']} | {_fmt(r['mmpool'], r['unit'])} | {_fmt(r['baseline'], r['unit'])} | "
            f"{r['ratio']:.2f} | {r['target']} | {'pass' if r['pass'] else 'FAIL'} |"
        )
    notes = [f"- {r['metric']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(out + ([""] + notes if notes else []))


def save(out_dir: str | Path, name: str, scale: str, rows: Sequence[dict], details: dict) -> Path:
    """Write ``out_dir/{name}-{scale}.json`` (rows, details, when, command) and return its path."""
    path = Path(out_dir) / f"{name}-{scale}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "scale": scale,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "rows": list(rows),
        "details": details,
    }
    path.write_text(json.dumps(doc, indent=1, default=float))
    return path


def median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64)))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="build (or find) a cached benchmark dataset")
    p.add_argument("--root", default=str(DEFAULT_ROOT))
    p.add_argument("--records", type=int, nargs="+", default=[3_000_000, 1_000_000])
    p.add_argument("--shards", type=int, nargs="+", default=[600, 200])
    p.add_argument("--pack-size", default="1G")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    for d in converted_dataset(args.root, args.records, args.shards, args.pack_size, workers=args.workers):
        print(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
