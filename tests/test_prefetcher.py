"""Tests for batches prepared ahead (``prefetch_batches``): the same batches in the same order as without, through
0 and 2 DataLoader workers; resume exact at the last batch handed over; closing (or leaving a loop) stops the
thread; an error in the stream reaches the consumer."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest
from conftest import Data
from torch.utils.data import DataLoader

from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.stream.prefetcher import Prefetcher


def make(data: Data, **kw) -> StreamingMixedShardDataset:
    kw.setdefault("random_seed", 3)
    kw.setdefault("pool_size", 2000)
    kw.setdefault("batch_size", 96)
    return StreamingMixedShardDataset(data.dirs, **kw)


def as_numpy(batches) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy().copy() for k, v in b.items()} for b in batches]


def assert_same(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], strict=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetched_batches_are_the_plain_batches(two_dirs: Data, workers: int) -> None:
    def run(depth: int) -> list[dict[str, np.ndarray]]:
        ds = make(two_dirs, prefetch_batches=depth, num_epochs=2)
        if workers == 0:
            return as_numpy(ds)
        return as_numpy(DataLoader(ds, batch_size=None, num_workers=workers))

    plain, ahead = run(0), run(3)
    assert_same(ahead, plain)
    got = {k: np.concatenate([b[k] for b in ahead]) for k in ahead[0]}
    assert len(got["id"]) == 2 * two_dirs.total
    for epoch in np.split(got["id"], 2):  # every record once per epoch
        assert np.array_equal(np.sort(epoch), two_dirs.source.ids)
    two_dirs.source.assert_matches(got)  # with its source content


def test_resume_after_prefetch_continues_at_the_last_batch_handed_over(two_dirs: Data) -> None:
    ds = make(two_dirs, prefetch_batches=4, num_epochs=2)
    it = iter(ds)
    taken = as_numpy(next(it) for _ in range(10))
    state = ds.state_dict()
    assert (state["epoch"], state["items"]) == (0, 10)  # not the batches the thread has prepared beyond
    rest = as_numpy(it)
    again = make(two_dirs, prefetch_batches=4, num_epochs=2)
    again.load_state_dict(state)
    assert_same(as_numpy(again), rest)
    plain = as_numpy(make(two_dirs, prefetch_batches=0, num_epochs=2))
    assert_same(taken + rest, plain)


def test_close_and_leaving_a_loop_stop_the_threads(two_dirs: Data) -> None:
    # Threads of earlier tests may still be ending: watch only the threads this test starts.
    before = set(threading.enumerate())

    def started() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in before and t.is_alive()]

    ds = make(two_dirs, prefetch_batches=2)
    it = iter(ds)
    next(it)
    assert started()
    it.close()
    assert started() == []
    with pytest.raises(StopIteration):
        next(it)
    for i, _ in enumerate(ds):  # a loop left early: the iterator is dropped
        if i == 3:
            break
    gc.collect()
    assert started() == []
    never = iter(ds)  # made and never used: no thread
    assert started() == []
    never.close()


def test_an_error_in_the_stream_reaches_the_consumer() -> None:
    def stream():
        yield 1
        raise ValueError("broken pack")

    ahead = Prefetcher(stream(), lambda: None, 2)
    assert ahead.next()[0] == 1
    with pytest.raises(ValueError, match="broken pack"):
        ahead.next()
    ahead.close()
