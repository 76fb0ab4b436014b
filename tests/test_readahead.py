"""Tests for mmpool.store.readahead on its own: a ReadAhead fed row ranges of real files by hand, its real thread
reading them into the page cache, the rows it marks ready, its budget, dropped ranges, failed reads and close.

How a ShardStore uses it (prefetch, hints, the budget against 4000 shards) is tested in test_store.py.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmpool.store.pagecache import resident
from mmpool.store.readahead import CHUNK, ReadAhead, _Range

PAGE = mmap.PAGESIZE


def write_file(path: Path, pages: int) -> Path:
    """A file of ``pages`` pages, each filled with its own byte, flushed to disk."""
    with open(path, "wb") as f:
        f.write(b"".join(bytes([p % 251]) * PAGE for p in range(pages)))
        f.flush()
        os.fsync(f.fileno())
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` bytes that takes no disk space (reads give zeros)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_pages(path: Path) -> np.ndarray:
    """Whether each page of the file is in the page cache (mincore on a mapping, which reads nothing)."""
    pages = os.path.getsize(path) // PAGE
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mm, dtype=np.uint8)
    try:
        return np.array([resident(view.ctypes.data, p * PAGE, PAGE) for p in range(pages)])
    finally:
        del view
        mm.close()


def rng(shard: int, lo: int, hi: int, path: Path, row_bytes: int, first_byte: int = 0, length: int | None = None):
    """The range of rows ``lo..hi-1`` of a shard whose row ``lo`` starts at ``first_byte`` of the file."""
    n = (hi - lo) * row_bytes if length is None else length
    return _Range(shard, lo, hi, str(path), first_byte, n)


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mmpool-readahead"]


def waiting_for_budget(ra: ReadAhead) -> bool:
    """The thread took a range and waits for the gathers to consume (nothing queued behind it)."""
    with ra._cond:
        return ra._busy and not ra._queue


def saturate(ra: ReadAhead, path: Path) -> None:
    """Leave the reader a whole budget ahead of the gathers: one range of shard 0 whose manifest length is the
    budget, over a file that ends sooner (the thread counts what it reads ahead by the lengths it was given)."""
    before = ra.read_bytes
    ra.submit(_Range(0, 0, 1, str(path), 0, ra.budget))
    wait_for(lambda: ra.caught_up and ra.read_bytes > before, "the saturating range")


def test_ranges_land_in_the_page_cache_exactly_and_their_rows_are_marked_ready(tmp_path: Path) -> None:
    path = write_file(tmp_path / "pack", 64)
    evict(path)
    if resident_pages(path).any():
        pytest.skip("this file system keeps the pages cached after POSIX_FADV_DONTNEED")
    threads = len(reader_threads())
    ra = ReadAhead(1 << 30, num_shards=3)
    # Rows of one page each: shard 0's rows 0-19 are pages 8-27 (entering in two ranges, as a pool activates a
    # shard in slices), shard 2's rows 5-8 are pages 40-43.
    ra.submit(rng(0, 0, 10, path, PAGE, 8 * PAGE))
    ra.submit(rng(0, 10, 20, path, PAGE, 18 * PAGE))
    ra.submit(rng(2, 5, 9, path, PAGE, 40 * PAGE))
    wait_for(lambda: ra.caught_up, "the read-ahead")
    assert ra.read_bytes == 24 * PAGE and ra.dropped_bytes == 0
    assert ra.ready_lo.tolist() == [0, 0, 5] and ra.ready_hi.tolist() == [20, 0, 9]
    cached = resident_pages(path)
    assert cached[8:28].all() and cached[40:44].all()
    assert not cached[:8].any()  # nothing before the first range (the kernel's own read-ahead only goes forward)
    # Done with its queue, the thread ends; a later range starts a new one.
    wait_for(lambda: len(reader_threads()) == threads, "the thread to end")
    ra.submit(rng(1, 0, 2, path, PAGE, 0))
    wait_for(lambda: ra.caught_up and ra.ready_hi[1] == 2, "the second thread")
    assert ra.read_bytes == 26 * PAGE and resident_pages(path)[:2].all()
    ra.close()
    assert len(reader_threads()) == threads


def test_ready_rows_follow_each_shards_ranges(tmp_path: Path) -> None:
    """``ready_lo <= row < ready_hi``: a range that continues the ready rows extends them, one after a gap
    replaces them; every shard on its own."""
    path = write_file(tmp_path / "pack", 16)
    ra = ReadAhead(0, num_shards=2)
    steps = [
        ((0, 0, 10), [0, 0], [10, 0]),
        ((0, 10, 20), [0, 0], [20, 0]),  # continues rows 0-19
        ((1, 3, 7), [0, 3], [20, 7]),  # a shard of its own
        ((0, 30, 40), [30, 3], [40, 7]),  # a gap: rows 20-29 were not read, only 30-39 are known
        ((0, 40, 45), [30, 3], [45, 7]),
        ((1, 7, 8), [30, 3], [45, 8]),
    ]
    total = 0
    for (shard, lo, hi), want_lo, want_hi in steps:
        ra.submit(rng(shard, lo, hi, path, 100, first_byte=lo * 100))
        total += (hi - lo) * 100
        wait_for(lambda total=total: ra.caught_up and ra.read_bytes == total, f"range {shard} {lo}-{hi}")
        assert ra.ready_lo.tolist() == want_lo and ra.ready_hi.tolist() == want_hi
    ra.close()


def test_a_range_of_several_chunks_reads_no_further_than_the_budget_allows(tmp_path: Path) -> None:
    """A budget below one chunk is one chunk; a range of two chunks and 3 MiB is read a chunk at a time, each
    once the gathers have consumed the one before; its rows are ready when its last chunk is read."""
    size = 2 * CHUNK + (3 << 20)
    path = sparse_file(tmp_path / "big", size)
    ra = ReadAhead(1, num_shards=1)
    assert ra.budget == CHUNK and ReadAhead(3 * CHUNK, 1).budget == 3 * CHUNK
    ra.submit(_Range(0, 0, 1000, str(path), 0, size))
    for done in (CHUNK, 2 * CHUNK):
        wait_for(lambda done=done: ra.read_bytes >= done, f"{done} bytes")
        time.sleep(0.05)  # room for a reader that ignored its budget to overrun (no timing is asserted)
        assert ra.read_bytes == done
        assert ra.ready_hi[0] == 0 and not ra.caught_up
        ra.consumed(CHUNK)
    wait_for(lambda: ra.caught_up, "the last chunk")
    assert ra.read_bytes == size and ra.dropped_bytes == 0
    assert (ra.ready_lo[0], ra.ready_hi[0]) == (0, 1000)
    ra.close()


def test_over_the_budget_the_oldest_queued_ranges_are_dropped(tmp_path: Path) -> None:
    path = write_file(tmp_path / "pack", 4)
    ra = ReadAhead(1, num_shards=4)
    saturate(ra, path)  # a whole budget ahead: the next range waits
    assert ra.read_bytes == 4 * PAGE  # what the file held, not the length it was given
    ra.submit(rng(1, 0, 1, path, PAGE))
    wait_for(lambda: waiting_for_budget(ra), "the reader to wait for the gathers")
    ra.submit(rng(2, 0, 1, path, PAGE, PAGE))  # one range queued: kept, however far over the budget
    assert ra.dropped_bytes == 0
    ra.submit(rng(3, 0, 1, path, PAGE, 2 * PAGE))  # two queued and over the budget: the older is dropped
    assert ra.dropped_bytes == PAGE
    ra.consumed(CHUNK)
    wait_for(lambda: not ra._busy and not ra._queue, "the queue")
    assert ra.ready_hi.tolist() == [1, 1, 0, 1]  # shards 1 and 3 were read, shard 2's range was dropped
    assert ra.read_bytes == 6 * PAGE and ra.dropped_bytes == PAGE
    assert not ra.caught_up  # a range was dropped: its rows were never read
    ra.close()


def test_a_failed_read_is_skipped_and_the_next_range_is_read(tmp_path: Path, caplog) -> None:
    path = write_file(tmp_path / "pack", 4)
    ra = ReadAhead(1 << 20, num_shards=2)
    with caplog.at_level(logging.DEBUG, logger="mmpool"):
        ra.submit(rng(0, 0, 4, tmp_path / "gone", PAGE))
        ra.submit(rng(1, 0, 4, path, PAGE))
        wait_for(lambda: ra.caught_up, "the read-ahead")
    assert ra.ready_hi.tolist() == [0, 4] and ra.read_bytes == 4 * PAGE and ra.dropped_bytes == 0
    assert f"read-ahead of {tmp_path / 'gone'} failed" in caplog.text
    ra.close()


def test_close_stops_a_waiting_reader_and_forgets_its_queue(tmp_path: Path) -> None:
    path = write_file(tmp_path / "pack", 4)
    threads = len(reader_threads())
    ra = ReadAhead(1, num_shards=4)
    saturate(ra, path)
    ra.submit(rng(1, 0, 1, path, PAGE))
    wait_for(lambda: waiting_for_budget(ra), "the reader to wait for the gathers")
    ra.submit(rng(2, 0, 1, path, PAGE))
    assert len(reader_threads()) == threads + 1
    ra.close()  # returns once the thread has ended
    assert len(reader_threads()) == threads
    assert ra.ready_hi.tolist() == [1, 0, 0, 0] and ra.read_bytes == 4 * PAGE
    assert ra._queued == 0 and ra.dropped_bytes == 0
    # Submitted again after close, ranges are read by a new thread.
    ra.consumed(CHUNK)
    ra.submit(rng(3, 0, 2, path, PAGE, 2 * PAGE))
    wait_for(lambda: ra.caught_up, "the read after close")
    assert ra.ready_hi.tolist() == [1, 0, 0, 2] and ra.read_bytes == 6 * PAGE
    ra.close()
    ra.close()  # twice: nothing to stop
    assert len(reader_threads()) == threads
