"""Tests for resuming StreamingMixedShardDataset: state_dict / load_state_dict in plain loops and through torchdata's
StatefulDataLoader, the size and JSON form of the state, and the errors of a state from another configuration."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from mmpool.augment.dihedral import Dihedral
from mmpool.convert.converter import convert
from mmpool.errors import ConfigError
from mmpool.store.gather import ShardStore
from mmpool.stream import dataset as dataset_module
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.testing.synthetic import make_synthetic

# 6 shards of 500 and 3 of 700 records: 5100 per epoch; a pool of 1000 refills about every 250 examples.
SHARDS, ROWS = [6, 3], [500, 700]
PER_EPOCH = 6 * 500 + 3 * 700
KW: dict[str, Any] = dict(pool_size=1000, random_seed=7, chunk_size=64)
MODES = {"single": {}, "batch": {"batch_size": 64}}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("resume")
    out = []
    for src in make_synthetic(root / "src", SHARDS, ROWS, fmt="npy"):
        convert(src, root / "conv" / src.name, pack_size=2 * 500 * 280, progress=False)
        out.append(root / "conv" / src.name)
    return out


def make(dirs: list[Path], **kw: Any) -> StreamingMixedShardDataset:
    return StreamingMixedShardDataset(dirs, **{**KW, **kw})


def as_numpy(item: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in item.items()}


def take(it: Any, n: int) -> list[dict[str, np.ndarray]]:
    return [as_numpy(next(it)) for _ in range(n)]


def assert_same(got: list[dict[str, np.ndarray]], want: list[dict[str, np.ndarray]]) -> None:
    """Item by item, every field identical."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.keys() == b.keys(), i
        for k in a:
            assert np.array_equal(a[k], b[k]), f"item {i}, field {k}"


def json_round_trip(state: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(state))


def refill_items(dirs: list[Path], **kw: Any) -> list[int]:
    """Indices (0-based) of the items whose ``next()`` refilled the pool, read from stats() in the main process."""
    ds = make(dirs, **kw)
    out, seen = [], None
    for i, _ in enumerate(ds):
        refills = ds.stats().refills
        if seen is not None and refills != seen:
            out.append(i)
        seen = refills
    return out


def resume_plain(dirs: list[Path], k: int, **kw: Any) -> tuple[list, list]:
    """Take ``k`` items, save the state (through JSON), resume in a fresh dataset; returns (taken, rest)."""
    ds = make(dirs, **kw)
    it = iter(ds)
    taken = take(it, k)
    state = json_round_trip(ds.state_dict())
    del it, ds
    again = make(dirs, **kw)
    again.load_state_dict(state)
    return taken, [as_numpy(x) for x in again]


# ----- plain loops (num_workers=0) -----


@pytest.mark.parametrize("mode", MODES)
def test_resume_at_many_points(dirs: list[Path], mode: str) -> None:
    kw = {**MODES[mode], "num_epochs": 2}
    full = [as_numpy(x) for x in make(dirs, **kw)]
    n = len(full) // 2  # items per epoch
    assert n == (PER_EPOCH if mode == "single" else -(-PER_EPOCH // 64))
    refills = refill_items(dirs, **MODES[mode])
    assert len(refills) >= 3, refills
    r = refills[1]
    for k in (1, 5, r, r + 1):  # early; right before and right after a refill (one epoch is enough)
        taken, rest = resume_plain(dirs, k, **MODES[mode])
        assert_same(taken, full[:k])
        assert_same(rest, full[k:n])
    # Before and after the last item of epoch 0 (the epoch boundary), in epoch 1, the last item of the run.
    for k in (n - 1, n, n + r + 1, 2 * n - 1, 2 * n):
        taken, rest = resume_plain(dirs, k, **kw)
        assert_same(taken, full[:k])
        assert_same(rest, full[k:])


def test_resume_in_the_middle_of_a_chunk(dirs: list[Path]) -> None:
    """Single examples are drawn chunk_size at a time; a state between two items of a chunk resumes inside it."""
    full = [as_numpy(x) for x in make(dirs)]
    for k in (1, 63, 64, 65, 100, 1000):
        taken, rest = resume_plain(dirs, k)
        assert_same(rest, full[k:])


@pytest.mark.parametrize("rank", [0, 1])
def test_resume_on_each_rank(dirs: list[Path], rank: int) -> None:
    kw = {**MODES["batch"], "world_size": 2, "rank": rank}
    full = [as_numpy(x) for x in make(dirs, **kw)]
    assert len(full) == -(-(PER_EPOCH // 2) // 64)
    for k in (1, len(full) // 2, len(full) - 1):
        taken, rest = resume_plain(dirs, k, **kw)
        assert_same(rest, full[k:])


def test_resume_with_augmentation(dirs: list[Path]) -> None:
    kw = {"augmentation": Dihedral(symmetries=2), "batch_size": 64}
    full = [as_numpy(x) for x in make(dirs, **kw)]
    assert len(full) == -(-2 * PER_EPOCH // 64)
    for k in (3, len(full) // 2):
        taken, rest = resume_plain(dirs, k, **kw)
        assert_same(rest, full[k:])


def test_state_before_the_first_item(dirs: list[Path]) -> None:
    ds = make(dirs)
    ds.set_epoch(3)
    state = json_round_trip(ds.state_dict())
    assert (state["epoch"], state["items"]) == (3, 0)
    again = make(dirs)
    again.load_state_dict(state)
    assert_same([as_numpy(x) for x in again], [as_numpy(x) for x in ds])


def test_finished_state_starts_the_next_epoch(dirs: list[Path]) -> None:
    """After an iteration ended there is nothing to continue: the next one is the epoch after it, unless set_epoch
    chooses another."""
    ds = make(dirs, **MODES["batch"])
    first = [as_numpy(x) for x in ds]
    epoch1 = [as_numpy(x) for x in ds]
    state = json_round_trip(ds.state_dict())  # taken after epoch 1 ended
    assert (state["epoch"], state["start"], state["items"]) == (2, 1, 0)
    again = make(dirs, **MODES["batch"])
    again.load_state_dict(state)
    reference = make(dirs, **MODES["batch"])
    reference.set_epoch(2)
    assert_same([as_numpy(x) for x in again], [as_numpy(x) for x in reference])
    again.load_state_dict(state)
    again.set_epoch(0)
    assert_same([as_numpy(x) for x in again], first)
    assert_same([as_numpy(x) for x in again], epoch1)


# ----- torchdata StatefulDataLoader -----


def loader(dirs: list[Path], workers: int, mode: str, **kw: Any) -> StatefulDataLoader:
    ds = make(dirs, **{**MODES[mode], **kw})
    return StatefulDataLoader(ds, batch_size=None if mode == "batch" else 100, num_workers=workers)


@pytest.mark.parametrize("mode, epochs", [("batch", 2), ("single", 1)])
def test_stateful_dataloader_with_workers(dirs: list[Path], mode: str, epochs: int) -> None:
    kw = {"num_epochs": epochs, "batch_size": 100} if mode == "batch" else {"num_epochs": epochs}
    full = [as_numpy(x) for x in loader(dirs, 2, mode, **kw)]
    n = len(full)
    ids = np.concatenate([b["id"].reshape(-1) for b in full])
    assert len(ids) == epochs * PER_EPOCH and len(np.unique(ids)) == PER_EPOCH
    # 1: worker 1 has not yielded yet; n // 2: the epoch boundary (batch mode); n - 1: the last batch of the run.
    points = (1, 3, n // 2, n // 2 + 1, n - 1, n) if epochs == 2 else (1, n // 2, n - 1, n)
    for k in points:
        dl = loader(dirs, 2, mode, **kw)
        it = iter(dl)
        taken = take(it, k)
        state = json_round_trip(dl.state_dict())
        del it, dl
        again = loader(dirs, 2, mode, **kw)
        again.load_state_dict(state)
        rest = [as_numpy(x) for x in again]
        assert_same(taken, full[:k])
        assert_same(rest, full[k:])


@pytest.mark.parametrize("mode", MODES)
def test_stateful_dataloader_without_workers(dirs: list[Path], mode: str) -> None:
    full = [as_numpy(x) for x in loader(dirs, 0, mode)]
    n = len(full)
    for k in (0, 1, 5, n - 1, n):
        dl = loader(dirs, 0, mode)
        it = iter(dl)
        taken = take(it, k)
        state = json_round_trip(dl.state_dict())
        del it, dl
        again = loader(dirs, 0, mode)
        again.load_state_dict(state)
        assert_same(taken, full[:k])
        assert_same([as_numpy(x) for x in again], full[k:])


def test_stateful_dataloader_finished_state_starts_the_next_epoch(dirs: list[Path]) -> None:
    """A loader saved after its epoch ended starts afresh after load_state_dict, at the epoch set_epoch selects."""
    dl = loader(dirs, 0, "batch")
    list(dl)
    state = json_round_trip(dl.state_dict())
    again = loader(dirs, 0, "batch")
    again.dataset.set_epoch(1)
    again.load_state_dict(state)
    reference = make(dirs, **MODES["batch"])
    reference.set_epoch(1)
    assert_same([as_numpy(x) for x in again], [as_numpy(x) for x in reference])


# ----- the state itself -----


def test_state_is_small_and_json(dirs: list[Path]) -> None:
    ds = make(dirs, shard_ranges=("0-4", "all"), weights=(np.float64(2), 1), pool_size=np.int64(1000))
    it = iter(ds)
    take(it, 10)
    state = ds.state_dict()
    text = json.dumps(state)
    assert len(text) < 2000
    assert json.loads(text) == state
    assert {k for k, v in state.items() if not isinstance(v, int)} == {"shards_upto", "config", "fingerprint"}
    assert state["items"] == 10 and state["epoch"] == 0
    # Tuples and numpy numbers in the configuration survive the round trip.
    again = make(dirs, shard_ranges=("0-4", "all"), weights=(2, 1))
    again.load_state_dict(json.loads(text))
    assert_same(take(iter(again), 5), take(it, 5))


def test_state_reports_the_position(dirs: list[Path]) -> None:
    ds = make(dirs, num_epochs=2)
    it = iter(ds)
    take(it, PER_EPOCH + 3)
    state = ds.state_dict()
    assert (state["epoch"], state["start"], state["items"]) == (1, 0, 3)


# ----- states of another configuration -----


@pytest.mark.parametrize(
    "name, change",
    [
        ("data_dirs", lambda d: dict(data_dirs=d[:1])),
        ("shard_ranges", lambda d: dict(shard_ranges=["0-4", "all"])),
        ("random_seed", lambda d: dict(random_seed=8)),
        ("pool_size", lambda d: dict(pool_size=1200)),
        ("refill_threshold", lambda d: dict(refill_threshold=500)),
        ("world_size", lambda d: dict(world_size=2, rank=0)),
        ("rank", lambda d: dict(world_size=1, rank=0, random_seed=7)),
        ("batch_size", lambda d: dict(batch_size=32)),
        ("weights", lambda d: dict(weights=[1, 1])),
    ],
)
def test_mismatch_names_the_parameter(dirs: list[Path], name: str, change: Any) -> None:
    base = make(dirs, world_size=2, rank=1) if name == "rank" else make(dirs)
    take(iter(base), 3)
    state = json_round_trip(base.state_dict())
    kw = change(dirs)
    other = StreamingMixedShardDataset(kw.pop("data_dirs", dirs), **{**KW, **kw})
    with pytest.raises(ConfigError, match=name):
        other.load_state_dict(state)
        next(iter(other))  # rank and world size are known when iteration starts (after init_process_group)


def test_mismatch_of_workers(dirs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker's state (2 workers) resumed without workers.
    dl = loader(dirs, 2, "batch")
    it = iter(dl)
    take(it, 3)
    worker_state = dl.state_dict()["_snapshot"]["_worker_snapshots"]["worker_0"]["dataset_state"]
    del it, dl
    ds = make(dirs, **MODES["batch"])
    ds.load_state_dict(worker_state)
    with pytest.raises(ConfigError, match="num_workers"):
        next(iter(ds))
    # A state of a plain loop resumed in worker 0 of 2, loaded there (as StatefulDataLoader does) or before the
    # DataLoader copied the dataset into its workers. (Faked worker info: a DataLoader whose worker raised takes
    # torch 5 s per worker to shut down.)
    plain = make(dirs, **MODES["batch"])
    take(iter(plain), 3)
    state = plain.state_dict()
    ds = make(dirs, **MODES["batch"])
    ds.load_state_dict(state)
    monkeypatch.setattr(dataset_module, "get_worker_info", lambda: SimpleNamespace(id=0, num_workers=2))
    with pytest.raises(ConfigError, match="num_workers"):
        next(iter(ds))
    with pytest.raises(ConfigError, match="num_workers"):
        make(dirs, **MODES["batch"]).load_state_dict(state)


def test_not_a_state(dirs: list[Path]) -> None:
    ds = make(dirs)
    for bad in ({}, {"version": 99}, {"epoch": 0, "items": 3}, [1, 2]):
        with pytest.raises(ConfigError, match="not an mmpool state"):
            ds.load_state_dict(bad)  # type: ignore[arg-type]
    state = ds.state_dict()
    state["config"]["random_seed"] = 8  # edited by hand: the fingerprint no longer matches
    with pytest.raises(ConfigError, match="fingerprint"):
        make(dirs, random_seed=8).load_state_dict(state)


def test_fast_forward_reads_no_records(dirs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming replays index work only: no gather and no read-ahead until the first item to yield."""
    ds = make(dirs, **MODES["batch"])
    it = iter(ds)
    take(it, 60)
    state = ds.state_dict()
    expected = take(it, 1)
    it.close()  # its prefetch thread would go on gathering batches ahead
    calls: list[tuple[str, int]] = []
    gather, prefetch = ShardStore.gather_rows, ShardStore.prefetch

    def counting_gather(self: ShardStore, shards: np.ndarray, rows: np.ndarray) -> np.ndarray:
        calls.append(("gather", len(shards)))
        return gather(self, shards, rows)

    def counting_prefetch(self: ShardStore, shard: int, first: int, stop: int) -> None:
        calls.append(("prefetch", shard))
        prefetch(self, shard, first, stop)

    monkeypatch.setattr(ShardStore, "gather_rows", counting_gather)
    monkeypatch.setattr(ShardStore, "prefetch", counting_prefetch)
    again = make(dirs, **MODES["batch"], prefetch_batches=0)  # no batches made ahead: one gather is one batch
    again.load_state_dict(state)
    assert_same(take(iter(again), 1), expected)
    assert [c for c in calls if c[0] == "gather"] == [("gather", 64)]
    # Read-ahead once for each shard still pooled when the fast-forward ends (then for rows a refill activates),
    # not for every activation the fast-forward replayed.
    read_ahead = [shard for kind, shard in calls if kind == "prefetch"]
    assert 0 < len(read_ahead) <= sum(SHARDS) + 2, read_ahead
