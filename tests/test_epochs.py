"""Tests for epochs of StreamingMixedShardDataset: set_epoch, num_epochs (a number, or None for ever), a new order
each epoch with the same content, and shards converted while a run goes on joining at the next epoch."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torchdata.stateful_dataloader import StatefulDataLoader

from mmpool.convert.converter import convert
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.testing.synthetic import make_positions, make_synthetic, write_legacy_shard

SHARDS, ROWS = [6, 3], [500, 700]
PER_EPOCH = 6 * 500 + 3 * 700
PACK = 2 * 500 * 280  # two shards of 500 records per pack
KW: dict[str, Any] = dict(pool_size=1000, random_seed=3, batch_size=50)


def build(root: Path) -> tuple[list[Path], list[Path]]:
    """(legacy source dirs, converted dirs)."""
    srcs = make_synthetic(root / "src", SHARDS, ROWS, fmt="npy")
    dsts = [root / "conv" / s.name for s in srcs]
    for s, d in zip(srcs, dsts):
        convert(s, d, pack_size=PACK, progress=False)
    return srcs, dsts


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return build(tmp_path_factory.mktemp("epochs"))[1]


def make(dirs: list[Path], **kw: Any) -> StreamingMixedShardDataset:
    return StreamingMixedShardDataset(dirs, **{**KW, **kw})


def ids_of(batches: Any) -> np.ndarray:
    return np.concatenate([b["id"].numpy().reshape(-1) for b in batches])


def epochs_of(ids: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    assert len(ids) == sum(sizes)
    return np.split(ids, np.cumsum(sizes)[:-1])


def shard_of_id(ids: np.ndarray) -> np.ndarray:
    """(dir, shard number) of synthetic ids as dir * 1000 + number."""
    return (ids >> 40) * 1000 + ((ids >> 20) & ((1 << 20) - 1))


def test_set_epoch_new_order_same_content(dirs: list[Path]) -> None:
    ds = make(dirs)
    runs = {}
    for epoch in (0, 1, 2, 0):
        ds.set_epoch(epoch)
        ids = ids_of(ds)
        assert len(ids) == PER_EPOCH and len(np.unique(ids)) == PER_EPOCH
        runs.setdefault(epoch, []).append(ids)
    assert np.array_equal(runs[0][0], runs[0][1])  # an epoch is a pure function of (seed, epoch)
    for a, b in itertools.combinations((0, 1, 2), 2):
        assert not np.array_equal(runs[a][0], runs[b][0])
        assert np.array_equal(np.sort(runs[a][0]), np.sort(runs[b][0]))
    assert ds.stats().epoch == 0


def test_num_epochs_runs_that_many_epochs(dirs: list[Path]) -> None:
    ids = ids_of(make(dirs, num_epochs=3))
    epochs = epochs_of(ids, [PER_EPOCH] * 3)
    for e, part in enumerate(epochs):
        assert np.array_equal(np.sort(part), np.sort(epochs[0]))
        one = make(dirs)
        one.set_epoch(e)
        assert np.array_equal(part, ids_of(one))  # epoch e of a run is the same as a run of epoch e alone
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])


def test_num_epochs_counts_from_set_epoch(dirs: list[Path]) -> None:
    ds = make(dirs, num_epochs=2)
    ds.set_epoch(5)
    epochs = epochs_of(ids_of(ds), [PER_EPOCH] * 2)
    for e, part in zip((5, 6), epochs):
        one = make(dirs)
        one.set_epoch(e)
        assert np.array_equal(part, ids_of(one))
    assert ds.stats().epoch == 6


def test_forever(dirs: list[Path]) -> None:
    ds = make(dirs, num_epochs=None, batch_size=None, chunk_size=256)
    it = iter(ds)
    ids = np.array([int(x["id"]) for x in itertools.islice(it, 3 * PER_EPOCH)])
    epochs = epochs_of(ids, [PER_EPOCH] * 3)
    for part in epochs:
        assert len(np.unique(part)) == PER_EPOCH
        assert np.array_equal(np.sort(part), np.sort(epochs[0]))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    assert int(next(it)["id"]) in set(epochs[0].tolist())  # and it keeps going, into a fourth epoch
    assert ds.stats().epoch == 3
    assert ds.state_dict()["epoch"] == 3


def test_epochs_with_workers(dirs: list[Path]) -> None:
    """Two workers: each epoch still holds every position once, in a new order."""
    dl = StatefulDataLoader(make(dirs, num_epochs=2), batch_size=None, num_workers=2)
    epochs = epochs_of(ids_of(dl), [PER_EPOCH] * 2)
    for part in epochs:
        assert len(np.unique(part)) == PER_EPOCH
    assert not np.array_equal(epochs[0], epochs[1])


# ----- shards converted while a run goes on -----


def add_shards(src: Path, dst: Path, numbers: list[int], rows: int = 500, d: int = 0) -> None:
    """Write legacy shards ``numbers`` into ``src`` (the ids make_synthetic would give them) and convert them."""
    for n in numbers:
        write_legacy_shard(src / f"shard_{n:05d}.npy", make_positions(rows, 0, id_base=(d << 40) | (n << 20)))
    convert(src, dst, pack_size=PACK, progress=False)


def test_new_shards_join_at_the_next_epoch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mmpool")
    srcs, dsts = build(tmp_path)
    ds = make(dsts, num_epochs=3)
    assert np.allclose(ds.stats().targets, [0, 0]) and np.allclose(ds.catalog.weights, [6 / 9, 3 / 9])
    it = iter(ds)
    first = [next(it) for _ in range(20)]
    state = json.loads(json.dumps(ds.state_dict()))
    add_shards(srcs[0], dsts[0], [6, 7])  # converted in the middle of epoch 0
    epoch0 = ids_of(first + [next(it) for _ in range(-(-PER_EPOCH // 50) - 20)])
    assert len(epoch0) == PER_EPOCH and ds.stats().epoch == 0
    assert not set(shard_of_id(epoch0).tolist()) & {6, 7}  # not in the epoch under way
    assert "new shards" not in caplog.text

    total = PER_EPOCH + 1000
    epoch1 = ids_of(itertools.islice(it, -(-total // 50)))
    assert len(epoch1) == total and len(np.unique(epoch1)) == total
    assert np.count_nonzero(np.isin(shard_of_id(epoch1), [6, 7])) == 1000
    stats = ds.stats()
    assert stats.epoch == 1 and stats.examples == total
    # Weights recomputed: 8 shards against 3.
    assert np.allclose(ds.catalog.weights, [8 / 11, 3 / 11])
    assert np.allclose(np.array(stats.targets) / stats.examples, [8 / 11, 3 / 11])
    assert stats.per_dir == [8 * 500, 3 * 700]
    assert f"{dsts[0]}: 2 new shards (6,7) join from epoch 1" in caplog.text
    assert not [line for line in caplog.text.splitlines() if str(dsts[1]) in line and "new shards" in line]

    # A state taken before the conversion resumes its epoch with the shards it saw, and picks up the new ones
    # at the next epoch.
    caplog.clear()
    again = make(dsts, num_epochs=3)
    again.load_state_dict(state)
    rest = iter(again)
    assert np.array_equal(ids_of(itertools.islice(rest, -(-PER_EPOCH // 50) - 20)), epoch0[20 * 50 :])
    assert np.array_equal(ids_of(itertools.islice(rest, -(-total // 50))), epoch1)
    assert "2 new shards (6,7) join from epoch 1" in caplog.text


def test_set_epoch_picks_up_new_shards(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mmpool")
    srcs, dsts = build(tmp_path)
    ds = make(dsts)
    assert len(ids_of(ds)) == PER_EPOCH
    add_shards(srcs[1], dsts[1], [3], rows=700, d=1)
    ids = ids_of(ds)  # no set_epoch: the next iteration is epoch 1, with the new shard
    assert f"{dsts[1]}: 1 new shards (3) join from epoch 1" in caplog.text
    assert len(ids) == PER_EPOCH + 700 and np.count_nonzero(shard_of_id(ids) == 1003) == 700
    ds.set_epoch(1)
    assert np.array_equal(ids_of(ds), ids)
    assert np.allclose(ds.catalog.weights, [6 / 10, 4 / 10])
    assert np.allclose(np.array(ds.stats().targets) / ds.stats().examples, [0.6, 0.4])
