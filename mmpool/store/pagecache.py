"""What the page cache can hold for this process, and which pages of a mapping it holds now.

    cache_limit() -> CacheLimit      (the memory cgroup's limit where one applies, else RAM; minus anonymous memory)
    resident(mm, start, length)      (mincore: whether every page of a range of a mapping is cached)

A memory cgroup (v1 or v2) bounds the page cache of its processes too: a dataset whose window of records is bigger
than the limit is read from disk however much RAM the machine has. Linux only; elsewhere RAM is assumed.
"""

from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a huge number (2^63 rounded down to a page)


@dataclass(frozen=True)
class CacheLimit:
    """Memory the page cache may use: ``limit`` (bytes, from ``source``) less the anonymous memory charged to it."""

    limit: int
    anon: int
    source: str  # "cgroup v1 /path", "cgroup v2 /path" or "RAM"

    @property
    def available(self) -> int:
        """Bytes left for cached file pages (at least 0)."""
        return max(0, self.limit - self.anon)


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def _stat(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            out[key] = int(value)
    except (OSError, ValueError):
        pass
    return out


def _cgroup_paths() -> dict[str, str]:
    """This process's cgroup per hierarchy: ``{"memory": "/a/b"}`` (v1) and ``{"": "/a/b"}`` (v2)."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for c in controllers.split(","):
                    out[c] = path
    except (OSError, ValueError):
        pass
    return out


def _v1(root: Path, path: str) -> CacheLimit | None:
    group = root / "memory" / path.lstrip("/")
    stat = _stat(group / "memory.stat")
    limit = stat.get("hierarchical_memory_limit")  # the smallest limit on the way up to the root
    if limit is None or limit >= _UNLIMITED:
        return None
    return CacheLimit(limit, stat.get("total_rss", stat.get("rss", 0)), f"cgroup v1 {path}")


def _v2(root: Path, path: str) -> CacheLimit | None:
    best: tuple[int, Path] | None = None
    group = root / path.lstrip("/")
    while True:  # the smallest memory.max on the way up
        try:
            text = (group / "memory.max").read_text().strip()
            if text != "max" and (best is None or int(text) < best[0]):
                best = (int(text), group)
        except (OSError, ValueError):
            pass
        if group == root or root not in group.parents:
            break
        group = group.parent
    if best is None:
        return None
    anon = _stat(best[1] / "memory.stat").get("anon", 0)
    return CacheLimit(best[0], anon, f"cgroup v2 /{best[1].relative_to(root)}")


def cache_limit(root: str | Path = "/sys/fs/cgroup") -> CacheLimit:
    """The memory cgroup's limit on this process (v1 or v2) if it is below RAM, else RAM; with the anonymous
    memory charged against it (the group's, or the whole machine's)."""
    root = Path(root)
    mem = _meminfo()
    ram = mem.get("MemTotal", 0) or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    paths = _cgroup_paths()
    found = None
    if "memory" in paths:
        found = _v1(root, paths["memory"])
    elif "" in paths:
        found = _v2(root, paths[""])
    if found is not None and found.limit < ram:
        return found
    return CacheLimit(ram, mem.get("AnonPages", 0), "RAM")


_libc: ctypes.CDLL | None = None


def _mincore() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return _libc.mincore


def resident(base: int, start: int, length: int) -> bool:
    """Whether every page of bytes ``start..start+length-1`` of a mapping at address ``base`` is in the page cache.

    ``base`` is the page-aligned address of the mapping (``np.frombuffer(mm).ctypes.data``). Where mincore fails
    (an unsupported system), the range is reported as not resident: reading it again is only slower, never wrong.
    """
    lo = start - start % mmap.PAGESIZE
    pages = -(-(start + length - lo) // mmap.PAGESIZE)
    vec = np.empty(pages, dtype=np.uint8)
    if _mincore()(base + lo, start + length - lo, vec.ctypes.data) != 0:
        return False
    return bool((vec & 1).all())
