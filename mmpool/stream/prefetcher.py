"""Prefetcher: prepares the next batches of a stream in a background thread while the training step runs.

The stream's generator runs in the thread and puts each batch, with the position it leaves the stream at, into a
queue of ``depth`` batches; ``next()`` takes them in order. A training step that releases the GIL (a forward and
backward pass in torch, a GPU wait) then overlaps with the next gathers, so the loop does not wait for data.

The position handed to the user is that of the last batch taken, not of the last one prepared: a state saved
between two steps resumes right after the batch the step just used. ``close()`` stops the thread (it finishes the
batch it is preparing) and closes the generator in that thread, which unmaps the packs and stops the read-ahead.
An error in the stream is raised by the ``next()`` that would have returned the batch.

Batches are not prepared across an epoch's end: the stream calls ``drained()`` there, which waits until the user
has taken the epoch's last batch and asked for one more. What happens between epochs (the statistics start afresh, new shards are read
from the manifests) then happens when the user asks for the next epoch's first batch, as without prefetching.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import Any

_END = object()
_WAIT = 0.05  # seconds between checks of the stop flag while the queue is full


class Prefetcher:
    """``depth`` batches of ``gen`` prepared ahead; ``where()`` is called after each batch for its position."""

    def __init__(self, gen: Generator[Any, None, None], where: Callable[[], Any], depth: int) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gen: Generator[Any, None, None] | None = gen
        self._where = where
        self._done = False
        self._asked = 0  # next() calls
        self._made = 0  # batches put in the queue
        self._demand = threading.Condition()

    def next(self) -> tuple[Any, Any]:
        """The next batch and the position after it; StopIteration (with the final position) at the end."""
        if self._done:
            raise StopIteration
        with self._demand:
            self._asked += 1
            self._demand.notify_all()
        if self._thread is None:  # started at the first item, so that an iterator never used costs nothing
            gen, self._gen = self._gen, None
            self._thread = threading.Thread(target=self._produce, args=(gen,), name="mmpool-prefetch", daemon=True)
            self._thread.start()
        item = self._queue.get()
        if item[0] is _END:
            self._done = True
            self._thread.join()
            if item[1] is not None:
                raise item[1]
            raise StopIteration(item[2])
        return item

    def drained(self) -> None:
        """Wait (in the thread) until every batch prepared has been taken and one more asked for, or closed."""
        with self._demand:
            while self._asked <= self._made and not self._stop.is_set():
                self._demand.wait(_WAIT)

    def _produce(self, gen: Generator[Any, None, None]) -> None:
        """The thread: run the generator, hand its batches over, always close it here (its ``finally`` frees the
        stream's resources in the thread that ran it)."""
        end: tuple[Any, ...]
        try:
            for batch in gen:
                if not _put(self._queue, (batch, self._where()), self._stop):
                    return
                with self._demand:
                    self._made += 1
            end = (_END, None, self._where())
        except BaseException as exc:  # handed to the consumer, raised there
            end = (_END, exc, None)
        finally:
            gen.close()
        _put(self._queue, end, self._stop)

    def close(self) -> None:
        """Stop the thread and wait for it (idempotent)."""
        self._done = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        elif self._gen is not None:
            self._gen.close()
            self._gen = None


def _put(out: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=_WAIT)
            return True
        except queue.Full:
            continue
    return False
