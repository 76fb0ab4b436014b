"""The iterator object and what is decided when iteration starts: epochs that advance by themselves (0 workers,
workers persistent or not), two live iterators, a loop left early, the WORLD_SIZE guard, parameter errors, a process
already over the memory cap, and the limits of a pool entry's bit fields."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Data
from torch.utils.data import DataLoader

from mmpool import StreamIterator
from mmpool.errors import ConfigError, MemoryLimitExceeded
from mmpool.ops.sizing import size_run
from mmpool.sampling.entries import MAX_ROWS, MAX_SHARDS, check_limits
from mmpool.store.catalog import Catalog
from mmpool.store.gather import fd_count
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.stream.memory import GIB, anon_bytes

KW: dict[str, Any] = dict(pool_size=1000, random_seed=3, batch_size=100)


def make(data: Data, **kw: Any) -> StreamingMixedShardDataset:
    return StreamingMixedShardDataset(data.dirs, **{**KW, **kw})


def ids(batches: Any) -> np.ndarray:
    return np.concatenate([b["id"].numpy().reshape(-1) for b in batches])


def reference_epochs(data: Data, n: int) -> list[np.ndarray]:
    """Epochs 0..n-1 as set_epoch selects them, in the main process."""
    out = []
    for e in range(n):
        ds = make(data)
        ds.set_epoch(e)
        out.append(ids(ds))
    return out


# ----- epochs advance by themselves -----


@pytest.mark.parametrize("persistent", [False, True])
def test_epochs_advance_with_workers(two_dirs: Data, persistent: bool) -> None:
    """Every worker of one DataLoader iteration streams the same epoch, the next iteration the next epoch, without
    set_epoch; set_epoch (also into persistent workers) selects an epoch reproducibly."""
    ds = make(two_dirs)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=persistent)
    epochs = [ids(loader) for _ in range(3)]
    for e in epochs:  # every record once per epoch
        assert np.array_equal(np.sort(e), two_dirs.source.ids)
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # The same three epochs through workers started afresh with set_epoch: the order is (seed, epoch, workers).
    again = make(two_dirs)
    for e, want in enumerate(epochs):
        again.set_epoch(e)
        assert np.array_equal(ids(DataLoader(again, batch_size=None, num_workers=2)), want)
    ds.set_epoch(1)
    assert np.array_equal(ids(loader), epochs[1])
    assert np.array_equal(ids(loader), epochs[2])


def test_epochs_advance_without_workers_and_match_set_epoch(two_dirs: Data) -> None:
    ds = make(two_dirs)
    got = [ids(ds) for _ in range(3)]
    for g, want in zip(got, reference_epochs(two_dirs, 3)):
        assert np.array_equal(g, want)


def test_an_iterator_never_started_uses_up_no_epoch(two_dirs: Data) -> None:
    ds = make(two_dirs)
    unused = iter(ds)
    assert isinstance(unused, StreamIterator) and unused.position is None
    first = ids(ds)
    assert np.array_equal(first, reference_epochs(two_dirs, 1)[0])
    unused.close()


# ----- iterators own their state -----


def test_two_live_iterators_do_not_disturb_each_other(two_dirs: Data) -> None:
    ds = make(two_dirs)
    a, b = iter(ds), iter(ds)
    got_a = [next(a) for _ in range(3)]
    got_b = [next(b) for _ in range(5)]
    assert a.position is not None and b.position is not None
    assert (a.position.epoch, a.position.items) == (0, 3)
    assert (b.position.epoch, b.position.items) == (1, 5)  # the second iteration is the next epoch
    state = ds.state_dict()  # describes the iterator created last
    assert (state["epoch"], state["items"]) == (1, 5)
    rest_a = ids(a)
    e0, e1 = reference_epochs(two_dirs, 2)
    assert np.array_equal(np.concatenate([ids(got_a), rest_a]), e0)
    assert np.array_equal(ids(got_b), e1[:500])
    assert a.store.open_packs == 0  # exhausted: unmapped
    assert b.store.open_packs > 0
    b.close()
    assert b.store.open_packs == 0
    with pytest.raises(StopIteration):
        next(b)


def test_a_loop_left_early_releases_its_mappings_at_once(two_dirs: Data) -> None:
    # Without read-ahead first: its thread opens and closes descriptors of its own as it goes, so counting the
    # mappings' descriptors would be a race.
    quiet = make(two_dirs, pool_size=4000, prefetch=False)
    ds = make(two_dirs, pool_size=4000)
    gc.collect()  # datasets of earlier tests hold shared-memory descriptors until they are collected
    before = fd_count()
    for i, _ in enumerate(quiet):
        if i == 0:
            held = fd_count() - before
        if i == 5:
            break
    assert held > 0  # the packs were mapped, one descriptor each
    assert fd_count() == before  # no gc.collect(): released when the loop dropped the iterator
    with iter(ds) as it:
        next(it)
        assert it.store.open_packs > 0
    assert it.store.open_packs == 0 and fd_count() == before
    for i, _ in enumerate(DataLoader(ds, batch_size=None)):  # through a DataLoader without workers, too
        if i == 2:
            break
    assert fd_count() == before


# ----- rank and world size -----


def test_world_size_without_a_process_group_is_refused(two_dirs: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    ds = make(two_dirs)  # building is fine: the process group may come later
    with pytest.raises(ConfigError, match=r"WORLD_SIZE=2 .* no process group .* rank= and world_size="):
        iter(ds)
    explicit = make(two_dirs, rank=1, world_size=2)
    half = ids(explicit)
    assert len(half) == two_dirs.total // 2
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert len(ids(make(two_dirs))) == two_dirs.total


# ----- parameters -----


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(max_open_packs=0), "max_open_packs=0: must be an integer >= 1"),
        (dict(max_open_packs=2.5), "max_open_packs=2.5: must be an integer >= 1"),
        (dict(memory_check_interval=-5), "memory_check_interval=-5: must be a number of seconds >= 0"),
        (dict(memory_check_interval=float("nan")), "memory_check_interval=nan"),
        (dict(chunk_size=0), "chunk_size=0: must be an integer >= 1"),
        (dict(pool_size=1), "pool_size=1: must be an integer >= 2"),
        (dict(refill_threshold=1000), "refill_threshold=1000 must be below pool_size=1000"),
        (dict(batch_size=0), "batch_size=0: must be an integer >= 1"),
        (dict(num_epochs=0), "num_epochs=0: must be an integer >= 1"),
        (dict(rank=2, world_size=2), "rank=2 must be below world_size=2"),
        (dict(world_size=0), "world_size=0: must be an integer >= 1"),
        (dict(max_memory_gb=0), "max_memory_gb=0: must be a positive number of GiB"),
        (dict(transform=3), "transform=3: must be a function of the batch dict"),
    ],
)
def test_every_bad_parameter_is_a_config_error(two_dirs: Data, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        make(two_dirs, **kw)
    assert message in str(err.value)


def test_a_missing_directory_is_the_same_error_in_dataset_plan_and_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmpool.cli import main

    missing = tmp_path / "nowhere"
    messages = []
    for call in (lambda: StreamingMixedShardDataset([missing]), lambda: size_run([missing])):
        with pytest.raises(ConfigError) as err:
            call()
        messages.append(str(err.value))
    assert messages[0] == messages[1] and f"{missing} does not exist" in messages[0]
    for command in ("plan", "inspect"):
        assert main([command, str(missing)]) == 2
        assert capsys.readouterr().err == f"mmpool: error: {messages[0]}\n"


# ----- memory -----


def test_a_process_already_over_the_cap_gets_the_memory_report(two_dirs: Data) -> None:
    cap_gb = anon_bytes() / GIB * 0.9
    with pytest.raises(MemoryLimitExceeded) as err:
        make(two_dirs, max_memory_gb=cap_gb)
    text = str(err.value)
    assert "memory cap exceeded" in text and "before building any pool" in text
    assert "the cap counts the whole training process and its DataLoader workers" in text
    assert "mmpool's own memory: pool 1000 entries x 8 B" in text
    assert "lower pool_size" not in text.split("fix:")[0]  # no advice that cannot help


# ----- pool entry limits -----


def test_pool_entry_limits_are_checked_with_the_directory_named() -> None:
    check_limits(MAX_SHARDS, MAX_ROWS, "d")  # the largest that fit
    with pytest.raises(ConfigError, match=r"^dirA, dirB: 16777217 shards selected, .* at most 16777216 shard ids"):
        check_limits(MAX_SHARDS + 1, 10, "dirA, dirB")
    with pytest.raises(ConfigError, match=r"^dirA: a shard of 4294967297 rows, .* rows below 4294967296"):
        check_limits(10, MAX_ROWS + 1, "dirA")


def test_the_catalog_checks_the_limits(two_dirs: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real shards cannot reach 2^32 rows in a test: lower the limits instead, and build real catalogs."""
    import mmpool.sampling.entries

    monkeypatch.setattr(mmpool.sampling.entries, "MAX_ROWS", 500)  # the shards have 500 rows: row 499 is the largest
    Catalog(two_dirs.dirs)
    monkeypatch.setattr(mmpool.sampling.entries, "MAX_ROWS", 499)
    with pytest.raises(ConfigError, match=f"^{two_dirs.dirs[0]}, {two_dirs.dirs[1]}: a shard of 500 rows"):
        Catalog(two_dirs.dirs)
    monkeypatch.setattr(mmpool.sampling.entries, "MAX_ROWS", 1 << 32)
    monkeypatch.setattr(mmpool.sampling.entries, "MAX_SHARDS", 15)  # 16 shards selected
    with pytest.raises(ConfigError, match="16 shards selected"):
        Catalog(two_dirs.dirs)
    Catalog(two_dirs.dirs, ["0-10", "all"])  # 15 fit
