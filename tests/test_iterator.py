"""Tests for mmpool.stream.iterator: a StreamIterator built from a StreamConfig alone, without the dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import Data, collect, stack

from mmpool.config import StreamConfig
from mmpool.stream.iterator import StreamIterator
from mmpool.stream.resume import Position
from mmpool.stream.stats import StatsBoard
from mmpool.stream.tensors import as_tensors, to_tensors
from mmpool.stream.world import Participant, open_catalog

MAIN = Participant(rank=0, world_size=1, worker=0, workers=1, in_worker=False)


def make(data: Data, epoch: int = 0, items: int = 0, **kw) -> tuple[StreamIterator, list[Position], StatsBoard]:
    """An iterator of ``data`` with its own begin callback; returns it, the positions begun, and the stats board."""
    kw.setdefault("random_seed", 0)
    kw.setdefault("pool_size", 2000)
    config = StreamConfig(tuple(str(d) for d in data.dirs), **kw)
    catalog = open_catalog(config)
    begun: list[Position] = []

    def begin():
        begun.append(Position(epoch, epoch, items, 0, 0))
        return catalog, begun[-1]

    board = StatsBoard(catalog.num_dirs)
    it = StreamIterator(config, catalog, MAIN, begin, board.slot(None), refresh=None)
    return it, begun, board


@pytest.mark.parametrize("prefetch_batches", [0, 2])
def test_an_epoch_yields_every_record_once_with_the_source_values(two_dirs: Data, prefetch_batches: int) -> None:
    it, begun, board = make(two_dirs, batch_size=128, prefetch_batches=prefetch_batches)
    got = collect(it)
    two_dirs.source.assert_matches(got)
    assert np.array_equal(np.sort(got["id"]), two_dirs.source.ids)
    assert len(begun) == 1 and it.position is not None
    assert (it.position.epoch, it.position.items) == (1, 0)  # past the end of its one epoch
    assert board.read(np.array([0.75, 0.25])).examples == two_dirs.total


def test_the_epoch_is_claimed_at_the_first_item_not_when_the_iterator_is_made(two_dirs: Data) -> None:
    it, begun, _ = make(two_dirs, batch_size=64)
    assert begun == [] and it.position is None and it.pool is None
    next(it)
    assert len(begun) == 1 and it.position is not None and it.position.items == 1
    it.close()


def test_a_position_continues_where_an_earlier_iteration_stopped(two_dirs: Data) -> None:
    whole, _, _ = make(two_dirs, batch_size=100, prefetch_batches=0)
    ids = [b["id"].numpy().copy() for b in whole]
    rest, _, _ = make(two_dirs, items=7, batch_size=100, prefetch_batches=0)
    later = [b["id"].numpy() for b in rest]
    assert len(later) == len(ids) - 7
    assert all(np.array_equal(a, b) for a, b in zip(ids[7:], later))


def test_single_examples_in_chunks_cover_the_epoch(two_dirs: Data) -> None:
    it, _, _ = make(two_dirs, chunk_size=300)
    got = stack(it)
    two_dirs.source.assert_matches(got)
    assert len(got["id"]) == two_dirs.total


def test_close_unmaps_the_packs_and_ends_the_iteration(two_dirs: Data) -> None:
    it, _, _ = make(two_dirs, batch_size=64, prefetch_batches=2)
    next(it)
    assert it.store.open_packs > 0
    it.close()
    assert it.store.open_packs == 0
    with pytest.raises(StopIteration):
        next(it)


def test_the_transform_and_augmentation_come_from_the_config(two_dirs: Data) -> None:
    def plus_one(batch):
        return {**batch, "wdl": batch["wdl"] + 1}

    it, _, _ = make(two_dirs, batch_size=256, transform=plus_one, prefetch_batches=0)
    got = collect(it)
    want = two_dirs.source.records(got["id"])
    assert np.array_equal(got["wdl"], want["wdl"] + 1)
    assert np.array_equal(got["planes"], want["planes"])


def test_tensors_of_one_buffer_equal_the_fields() -> None:
    rng = np.random.default_rng(0)
    fields = {
        "a": rng.integers(0, 255, (5, 3, 7), dtype=np.uint8),
        "b": rng.standard_normal((5, 2)).astype(np.float32),
        "c": np.arange(5, dtype=np.int64),
        "t": torch.arange(10, dtype=torch.int16).reshape(5, 2),
    }
    one = as_tensors(fields)
    storages = {t.untyped_storage().data_ptr() for t in one.values()}
    assert len(storages) == 1  # one storage per batch: one hand-over per batch from a DataLoader worker
    for k, v in fields.items():
        want = v.numpy() if isinstance(v, torch.Tensor) else v
        assert one[k].is_contiguous() and one[k].numpy().dtype == want.dtype
        assert np.array_equal(one[k].numpy(), want)
        assert (one[k].data_ptr() - storages.copy().pop()) % 64 == 0  # every field 64-byte aligned in the buffer
    plain = to_tensors(fields, one_buffer=False)
    assert all(np.array_equal(plain[k].numpy(), one[k].numpy()) for k in fields)
