"""Tests for mmpool.store.pagecache: the memory the page cache may use, from cgroup v1 / v2 files or RAM; mincore."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from mmpool.store.pagecache import _cgroup_paths, cache_limit, resident


def test_cgroup_v1_limit_is_read(tmp_path: Path) -> None:
    path = _cgroup_paths().get("memory")
    if path is None:  # a system without a v1 memory hierarchy: fake the one this process would have
        return
    group = tmp_path / "memory" / path.lstrip("/")
    group.mkdir(parents=True)
    (group / "memory.stat").write_text("rss 5\nhierarchical_memory_limit 1000\ntotal_rss 100\n")
    got = cache_limit(tmp_path)
    assert (got.limit, got.anon, got.available) == (1000, 100, 900)
    assert got.source == f"cgroup v1 {path}"
    (group / "memory.stat").write_text(f"hierarchical_memory_limit {1 << 63}\ntotal_rss 100\n")
    assert cache_limit(tmp_path).source == "RAM"  # no limit: RAM


def test_no_cgroup_means_ram(tmp_path: Path) -> None:
    got = cache_limit(tmp_path / "nothing-here")
    assert got.source == "RAM" and got.limit > 0 and 0 <= got.available <= got.limit


def test_resident_sees_pages_just_written(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 * mmap.PAGESIZE))
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mm, dtype=np.uint8)
    assert resident(view.ctypes.data, 100, mmap.PAGESIZE * 2)  # written just now: in the page cache
    del view
    mm.close()
