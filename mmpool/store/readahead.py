"""ReadAhead: reads the rows that enter the pool sequentially, in a background thread, so that gathers find them cached.

Rows enter the pool a range at a time (``IndexPool``'s ``on_activate``); the gathers that follow touch them at random.
Reading a range front to back costs the disk's sequential rate (~925 MB/s here) instead of one random read per record
(~8.5k records/s here with 16 threads). The thread reads with ``os.sendfile`` to ``/dev/null``: the pages land in the
page cache without a copy to user space, in one system call per chunk with the GIL released. The chunks are large
(32 MB) because the thread needs the GIL between them, and the gathering thread holds it for a whole batch (numpy's
take does not release it, page faults included): with 1 MB reads it read 18 MB/s here. Chunks the page cache already
holds cost only the kernel's walk over their pages (no copy, no disk). The thread holds at most two descriptors (the
pack it reads and /dev/null), and no mapping: the store's bound on open packs holds.

It reads at most ``budget`` bytes ahead of what the gathers have consumed: more would push out of the page cache
rows read earlier and not gathered yet. When more is queued than the budget allows, the oldest queued ranges are
dropped (their rows have the shortest time left in the pool; the store reads them with per-record hints instead):
with a window bigger than the cache, the newest rows are the ones worth reading ahead.

``ready_lo[shard] <= row < ready_hi[shard]``: rows known to be read (a shard's ranges enter in increasing order).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("mmpool")
CHUNK = 32 << 20  # bytes per read (see the module docstring); the thread stops within one chunk


@dataclass
class _Range:
    shard: int
    lo: int
    hi: int
    path: str
    offset: int  # file offset of row lo
    length: int


class ReadAhead:
    """A background reader of row ranges, at most ``budget`` bytes ahead of the gathers."""

    def __init__(self, budget: int, num_shards: int) -> None:
        self.budget = max(CHUNK, int(budget))
        self.ready_lo = np.zeros(num_shards, dtype=np.int64)
        self.ready_hi = np.zeros(num_shards, dtype=np.int64)
        self.read_bytes = 0  # bytes read from disk (chunks found cached are not counted)
        self.dropped_bytes = 0  # bytes of ranges dropped for the budget
        self._queue: collections.deque[_Range] = collections.deque()
        self._queued = 0  # bytes in the queue
        self._ahead = 0  # bytes read (or found cached) and not yet consumed
        self._busy = False  # a range is being read
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    def submit(self, r: _Range) -> None:
        """Queue a range; drop the oldest queued ranges when the queue would go over the budget."""
        with self._cond:
            self._queue.append(r)
            self._queued += r.length
            while len(self._queue) > 1 and self._queued + self._ahead > self.budget:
                old = self._queue.popleft()
                self._queued -= old.length
                self.dropped_bytes += old.length
            if self._thread is None:
                self._stop = False
                self._thread = threading.Thread(target=self._run, name="mmpool-readahead", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def consumed(self, nbytes: int) -> None:
        """The gathers consumed ``nbytes`` of records: the thread may read that much further."""
        with self._cond:
            self._ahead = max(0, self._ahead - nbytes)
            self._cond.notify_all()

    @property
    def caught_up(self) -> bool:
        """Whether every range submitted (and not dropped) has been read."""
        return not self._queue and not self._busy and self.dropped_bytes == 0

    def close(self) -> None:
        """Stop the thread (it finishes the chunk it is reading) and forget what was queued."""
        with self._cond:
            self._stop = True
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        sink = os.open(os.devnull, os.O_WRONLY)
        try:
            self._loop(sink)
        finally:
            os.close(sink)

    def _loop(self, sink: int) -> None:
        while True:
            with self._cond:
                if self._stop or not self._queue:
                    self._thread = None  # a later submit starts a new thread
                    return
                r = self._queue.popleft()
                self._queued -= r.length
                self._busy = True
            try:
                done = self._read(r, sink)
            except OSError as exc:  # reading ahead is only advice: the gathers read the rows themselves
                log.debug("read-ahead of %s failed: %s", r.path, exc)
                done = False
            with self._cond:
                if done:
                    if self.ready_hi[r.shard] != r.lo:
                        self.ready_lo[r.shard] = r.lo
                    self.ready_hi[r.shard] = r.hi
                self._busy = False

    def _read(self, r: _Range, sink: int) -> bool:
        fd = os.open(r.path, os.O_RDONLY)
        try:
            for at in range(0, r.length, CHUNK):
                n = min(CHUNK, r.length - at)
                with self._cond:
                    while not self._stop and self._ahead + n > self.budget:
                        self._cond.wait(0.1)
                    if self._stop:
                        return False
                    self._ahead += n
                done = 0
                while done < n:  # sendfile may move less than asked
                    moved = os.sendfile(sink, fd, r.offset + at + done, n - done)
                    if moved == 0:
                        break  # end of file: the pack is shorter than its manifest says; the gathers will tell
                    done += moved
                self.read_bytes += done
        finally:
            os.close(fd)
        return True
