"""Bounded resources and the cold page cache: descriptors stay under the process's file limit however many packs
there are; newly activated rows are really read ahead; a cold stream returns exactly what a warm one does."""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmpool.convert.converter import convert
from mmpool.format.manifest import read_manifest
from mmpool.store.catalog import Catalog
from mmpool.store.gather import ShardStore
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.testing.synthetic import make_synthetic

REPO = Path(__file__).resolve().parent.parent


def build(root: Path, counts: list[int], rows: int, pack_size: int | str, channels: int = 1) -> list[Path]:
    out = []
    for src in make_synthetic(root / "src", counts, rows, channels=channels):
        convert(src, root / "conv" / src.name, pack_size=pack_size, progress=False)
        out.append(root / "conv" / src.name)
    return out


def pack_paths(dirs: list[Path]) -> list[Path]:
    return [d / p.file for d in dirs for p in read_manifest(d).packs]


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (written pages are flushed first: dirty pages are not dropped)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident(path: Path) -> float:
    """Fraction of the file's pages in the page cache (mincore over a fresh read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        view = np.frombuffer(mm, dtype=np.uint8)
        pages = -(-len(mm) // mmap.PAGESIZE)
        vec = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(view.ctypes.data), len(mm), vec) != 0:
            pytest.skip(f"mincore failed: {os.strerror(ctypes.get_errno())}")
        del view
        return float(np.frombuffer(vec, dtype=np.uint8).astype(bool).mean())
    finally:
        mm.close()


def stream_ids(dirs: list[Path], **kwargs) -> np.ndarray:
    ds = StreamingMixedShardDataset(dirs, batch_size=100, random_seed=7, **kwargs)
    return np.concatenate([b["id"].numpy() for b in ds])


# --------------------------------------------------------------------------- descriptors

FD_SCRIPT = r"""
import json, resource, sys
import numpy as np, psutil, torch
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.store.gather import fd_count

dirs, limit, runs = sys.argv[1:3], int(sys.argv[3]), json.loads(sys.argv[4])
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
for max_open, workers in runs:
    ds = StreamingMixedShardDataset(dirs, pool_size=6000, batch_size=64, random_seed=3, max_open_packs=max_open)
    loader = iter(ds) if workers == 0 else torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers)
    ids, most, most_worker, mapped = [], 0, 0, 0
    try:
        for batch in loader:
            ids.append(batch["id"].numpy().copy())  # a copy: a shared tensor from a worker holds a descriptor
            most = max(most, fd_count())
            mapped = max(mapped, loader.store.open_packs if workers == 0 else 0)
            for child in psutil.Process().children():
                try:
                    most_worker = max(most_worker, child.num_fds())
                except psutil.Error:
                    pass
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        continue
    finally:
        del loader, ds
    ids = np.concatenate(ids)
    print(json.dumps({"ids": len(ids), "unique": len(np.unique(ids)), "most_fds": most,
                      "most_worker_fds": most_worker, "open_packs": mapped,
                      "limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))
"""


@pytest.fixture(scope="module")
def many_packs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """150 packs (one per shard): more than a process limited to 64 descriptors can hold open at once."""
    root = tmp_path_factory.mktemp("many")
    return build(root, [100, 50], 40, pack_size=1)


def test_descriptors_stay_under_the_file_limit(many_packs: list[Path]) -> None:
    assert len(pack_paths(many_packs)) == 150
    # One subprocess, three streams of a whole epoch. The pool (6000 entries) holds the whole epoch, so all 150
    # packs have rows pooled at once: bounded to 8 open packs in the process, then with 2 DataLoader workers;
    # last the control, without the bound.
    proc = subprocess.run(
        [sys.executable, "-c", FD_SCRIPT, *map(str, many_packs), "64", json.dumps([[8, 0], [8, 2], [1000, 0]])],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    main, workers, unbounded = (json.loads(line) for line in proc.stdout.strip().splitlines()[-3:])
    for out in (main, workers):
        assert "error" not in out, out["error"]
        assert out["limit"] == 64
        assert out["ids"] == out["unique"] == 6000  # every record exactly once
        assert out["most_fds"] < 64 and out["most_worker_fds"] < 64
    assert main["open_packs"] <= 8
    # Without the bound the same stream runs out of descriptors, and the message says why and what to do.
    assert unbounded["error"].startswith("ShardError: ")
    assert "run out of file descriptors" in unbounded["error"] and "lower max_open_packs" in unbounded["error"]


# --------------------------------------------------------------------------- cold page cache


@pytest.fixture(scope="module")
def cold_data(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("cold")
    return build(root, [12, 6], 3000, pack_size="1M")


def test_dataset_reads_ahead_every_row_entering_the_pool(cold_data: list[Path], monkeypatch) -> None:
    ds = StreamingMixedShardDataset(cold_data, pool_size=5000, batch_size=128, random_seed=1)
    calls: list[tuple[int, int, int]] = []
    real = ShardStore.prefetch
    monkeypatch.setattr(
        ShardStore, "prefetch", lambda self, s, lo, hi: (calls.append((s, lo, hi)), real(self, s, lo, hi))
    )
    it = iter(ds)
    next(it)
    assert calls  # the first fill read its rows ahead before the first batch
    for _ in it:
        pass
    covered = np.zeros(ds.catalog.num_shards, dtype=np.int64)
    for s, lo, hi in calls:
        covered[s] += hi - lo
    np.testing.assert_array_equal(covered, ds.catalog.shard_rows)  # each row once, every row
    starts = {}
    for s, lo, hi in calls:  # in order inside each shard: ranges follow one another
        assert starts.get(s, 0) == lo
        starts[s] = hi


def test_prefetch_reads_the_whole_range(tmp_path: Path) -> None:
    """One MADV_WILLNEED call reads at most the kernel's read-ahead window (read_ahead_kb); the store advises in
    chunks, so a range far larger than that window is read in full."""
    (d,) = build(tmp_path, [1], 300_000, pack_size="1G")  # one 26 MB pack
    (path,) = pack_paths([d])
    evict([path])
    if resident(path) > 0.05:
        pytest.skip("this file system does not drop cached pages (tmpfs?)")
    store = ShardStore(Catalog([d]))
    store.prefetch(0, 0, 300_000)
    deadline = time.monotonic() + 10
    while resident(path) < 0.95 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert resident(path) >= 0.95


@pytest.mark.parametrize("prefetch", [True, False])
def test_cold_stream_returns_the_warm_records(cold_data: list[Path], prefetch: bool) -> None:
    warm = stream_ids(cold_data, pool_size=4000)
    packs = pack_paths(cold_data)
    evict(packs)
    cold_before = max(resident(p) for p in packs)
    cold = stream_ids(cold_data, pool_size=4000, prefetch=prefetch)
    np.testing.assert_array_equal(cold, warm)
    assert len(np.unique(warm)) == len(warm) == 54_000
    if cold_before > 0.05:
        pytest.skip("this file system does not drop cached pages (tmpfs?): the stream was not cold")
