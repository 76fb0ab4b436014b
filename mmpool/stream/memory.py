"""The memory cap: anonymous memory of the training process and its DataLoader workers, watched with psutil.

A process that maps files has their cached pages in its RSS; that is page cache the kernel can drop, so it is
reported beside the cap, not counted against it. Counted is the proportional anonymous memory (``Pss_Anon``: pages a
forked worker still shares with its parent count once over both; ``rss - shared`` where the kernel lacks it),
summed over the main process and its children.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from mmpool.config import StreamConfig
from mmpool.errors import ConfigError, MemoryLimitExceeded
from mmpool.sampling.entries import ENTRY_BYTES

GIB = 1 << 30


@dataclass(frozen=True)
class ProcessMemory:
    pid: int
    role: str
    anon: int  # bytes counted against the cap
    file_backed: int  # resident shared / file-backed bytes (mapped packs, libraries): not counted


def _group(in_worker: bool) -> list[tuple[psutil.Process, str]]:
    main = psutil.Process(os.getppid() if in_worker else os.getpid())
    procs = [(main, "main")]
    try:
        procs += [(c, "worker") for c in main.children()]
    except psutil.Error:
        pass
    return procs


def _pss_anon(pid: int) -> int | None:
    """Proportional anonymous memory (Linux >= 5.10), None where the kernel does not report it.

    A forked DataLoader worker shares its parent's anonymous pages until either writes them, and its ``rss - shared``
    counts all of them again: with a few workers the sum would be several times what is really held. ``Pss_Anon``
    divides each shared page between the processes sharing it, so the sum over the group counts every page once.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss_Anon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _anon(pid: int, info: Any) -> int:
    pss = _pss_anon(pid)
    return info.rss - info.shared if pss is None else pss


def measure(in_worker: bool = False) -> list[ProcessMemory]:
    """Memory of the training process (the parent, when called in a DataLoader worker) and its children."""
    out = []
    group = _group(in_worker)
    # A process alone shares no anonymous pages: its rss - shared is exact, and costs no smaps_rollup page-table
    # walk (tens of ms per GB of mapped packs).
    alone = len(group) == 1
    for proc, role in group:
        try:
            info = proc.memory_info()
        except psutil.Error:  # a worker that just exited
            continue
        role = "this process" if proc.pid == os.getpid() else role
        anon = info.rss - info.shared if alone else _anon(proc.pid, info)
        out.append(ProcessMemory(proc.pid, role, anon, info.shared))
    return out


def anon_bytes() -> int:
    """Anonymous memory of this process alone."""
    return _anon(os.getpid(), psutil.Process().memory_info())


class MemoryGuard:
    """Checks the cap at most every ``interval`` seconds; ``check`` is cheap to call once per batch."""

    def __init__(self, cap_bytes: int, interval: float = 0.5, in_worker: bool = False) -> None:
        self.cap = cap_bytes
        self.interval = interval
        self.in_worker = in_worker
        self.next_check = 0.0
        self.peak = 0

    def check(self, context: str | Callable[[], str] = "", force: bool = False) -> int:
        """Raise MemoryLimitExceeded (with ``context`` in the report) when over the cap; returns the total counted.

        ``context`` may be a function, called only for a report: the per-batch call then builds no string."""
        now = time.monotonic()
        if not force and now < self.next_check:
            return self.peak
        procs = measure(self.in_worker)
        # smaps_rollup walks the page tables of every mapped pack (~50 ms per resident GB of packs): unless told to
        # check every time (interval 0), space the checks so that they take at most ~2% of the time.
        spent = time.monotonic() - now
        self.next_check = now + (max(self.interval, 50 * spent) if self.interval > 0 else 0.0)
        total = sum(p.anon for p in procs)
        self.peak = max(self.peak, total)
        if total > self.cap:
            raise MemoryLimitExceeded(report(self.cap, procs, context() if callable(context) else context))
        return total


def report(cap: int, procs: list[ProcessMemory], context: str) -> str:
    """The text of a MemoryLimitExceeded: cap, totals, per process anonymous and file-backed memory, context."""
    total = sum(p.anon for p in procs)
    lines = [
        f"memory cap exceeded: {total / GIB:.2f} GiB of anonymous memory counted against max_memory_gb={cap / GIB:.2f}",
        "  process      pid      anonymous (counted)   file-backed (page cache, not counted)",
    ]
    lines += [
        f"  {p.role:<12} {p.pid:<8} {p.anon / GIB:>8.3f} GiB           {p.file_backed / GIB:>8.3f} GiB" for p in procs
    ]
    if context:
        lines.append("  " + context)
    lines.append(
        "  the cap counts the whole training process and its DataLoader workers (model, optimizer, everything it "
        "allocated), not only mmpool's own memory"
    )
    lines.append(
        "  fix: raise max_memory_gb, lower pool_size, use fewer DataLoader workers, or free memory held elsewhere"
    )
    return "\n".join(lines)


def refuse_if_pool_cannot_fit(config: StreamConfig, itemsize: int) -> None:
    """Refuse up front a pool whose indices alone, with the batch buffers, cannot fit under the cap."""
    cap = int(config.max_memory_gb * GIB)
    pool = config.pool_size * ENTRY_BYTES
    batch = config.batch_buffer_bytes(itemsize)
    now = anon_bytes()
    own = (
        f"mmpool's own memory: pool {config.pool_size} entries x {ENTRY_BYTES} B = {pool / GIB:.3f} GiB, "
        f"batch buffers ~{batch / GIB:.3f} GiB"
    )
    if now > cap:
        raise MemoryLimitExceeded(report(cap, measure(), f"before building any pool; {own}"))
    if now + pool + batch > cap:
        fits = (cap - now - batch) // ENTRY_BYTES
        raise ConfigError(
            f"pool_size={config.pool_size} needs {pool / GIB:.3f} GiB for its indices; with {now / GIB:.2f} GiB "
            f"already used by this process (the cap counts the whole training process) it cannot fit under "
            f"max_memory_gb={config.max_memory_gb}. The largest pool that fits is about {max(0, fits)}; lower "
            "pool_size or raise max_memory_gb"
        )
