"""The memory cap: anonymous memory of the training process and its DataLoader workers, watched with psutil.

A process that maps files has their cached pages in its RSS; that is page cache the kernel can drop, so it is
reported beside the cap, not counted against it. Counted is ``rss - shared`` (Linux: resident pages that are not
file-backed or shared memory), summed over the main process and its children.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import psutil

from mmpool.errors import MemoryLimitExceeded

GB = 1 << 30


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


def measure(in_worker: bool = False) -> list[ProcessMemory]:
    """Memory of the training process (the parent, when called in a DataLoader worker) and its children."""
    out = []
    for proc, role in _group(in_worker):
        try:
            info = proc.memory_info()
        except psutil.Error:  # a worker that just exited
            continue
        role = "this process" if proc.pid == os.getpid() else role
        out.append(ProcessMemory(proc.pid, role, info.rss - info.shared, info.shared))
    return out


def anon_bytes() -> int:
    """Anonymous memory of this process alone."""
    info = psutil.Process().memory_info()
    return info.rss - info.shared


class MemoryGuard:
    """Checks the cap at most every ``interval`` seconds; ``check`` is cheap to call once per batch."""

    def __init__(self, cap_bytes: int, interval: float = 0.5, in_worker: bool = False) -> None:
        self.cap = cap_bytes
        self.interval = interval
        self.in_worker = in_worker
        self.next_check = 0.0
        self.peak = 0

    def check(self, context: str = "", force: bool = False) -> int:
        """Raise MemoryLimitExceeded (with ``context`` in the report) when over the cap; returns the total counted."""
        now = time.monotonic()
        if not force and now < self.next_check:
            return self.peak
        self.next_check = now + self.interval
        procs = measure(self.in_worker)
        total = sum(p.anon for p in procs)
        self.peak = max(self.peak, total)
        if total > self.cap:
            raise MemoryLimitExceeded(report(self.cap, procs, context))
        return total


def report(cap: int, procs: list[ProcessMemory], context: str) -> str:
    """The text of a MemoryLimitExceeded: cap, totals, per process anonymous and file-backed memory, context."""
    total = sum(p.anon for p in procs)
    lines = [
        f"memory cap exceeded: {total / GB:.2f} GB of anonymous memory counted against max_memory_gb={cap / GB:.2f}",
        "  process      pid      anonymous (counted)   file-backed (page cache, not counted)",
    ]
    lines += [f"  {p.role:<12} {p.pid:<8} {p.anon / GB:>8.3f} GB           {p.file_backed / GB:>8.3f} GB" for p in procs]
    if context:
        lines.append("  " + context)
    lines.append(
        "  fix: raise max_memory_gb, lower pool_size, use fewer DataLoader workers, or free memory held elsewhere"
    )
    return "\n".join(lines)
