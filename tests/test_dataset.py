"""StreamingMixedShardDataset in one process: completeness, content, proportions, order, determinism, stats, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Data, collect, id_dir, id_shard, stack

from mmpool.errors import ConfigError
from mmpool.sampling.plan import RunSpec, epoch_plan
from mmpool.sampling.schedule import MIN_SLICE_ROWS, activation_order
from mmpool.stream.dataset import StreamingMixedShardDataset


def make(data: Data, **kw) -> StreamingMixedShardDataset:
    kw.setdefault("random_seed", 0)
    kw.setdefault("pool_size", 2000)
    return StreamingMixedShardDataset(data.dirs, **kw)


def ids_of(ds: StreamingMixedShardDataset) -> np.ndarray:
    if ds.batch_size is None:
        return np.array([int(e["id"]) for e in ds], dtype=np.int64)
    return np.concatenate([b["id"].numpy() for b in ds])


# ----- every record exactly once, with the source's content -----


def test_batches_yield_every_record_once_with_its_source_content(two_dirs: Data) -> None:
    ds = make(two_dirs, batch_size=96)
    batches = list(ds)
    assert [len(b["id"]) for b in batches] == [96] * 83 + [8000 - 83 * 96]  # full batches, one partial at the end
    first = batches[0]
    assert {k: (v.dtype, tuple(v.shape[1:])) for k, v in first.items()} == {
        "planes": (torch.uint8, (4, 8, 8)),
        "move": (torch.int16, ()),
        "wdl": (torch.float32, (3,)),
        "id": (torch.int64, ()),
    }
    got = collect(batches)
    assert np.array_equal(np.sort(got["id"]), two_dirs.source.ids)  # every record, each once
    two_dirs.source.assert_matches(got)


def test_single_examples_yield_every_record_once_with_its_source_content(two_dirs: Data) -> None:
    ds = make(two_dirs, chunk_size=300)
    examples = list(ds)
    assert len(examples) == two_dirs.total
    assert {k: (v.dtype, tuple(v.shape)) for k, v in examples[0].items()} == {
        "planes": (torch.uint8, (4, 8, 8)),
        "move": (torch.int16, ()),
        "wdl": (torch.float32, (3,)),
        "id": (torch.int64, ()),
    }
    got = stack(examples)
    assert np.array_equal(np.sort(got["id"]), two_dirs.source.ids)
    two_dirs.source.assert_matches(got)


def test_drop_last_drops_only_the_final_partial_batch(two_dirs: Data) -> None:
    ds = make(two_dirs, batch_size=96, drop_last=True)
    got = collect(ds)
    assert len(got["id"]) == 83 * 96 and len(np.unique(got["id"])) == 83 * 96
    two_dirs.source.assert_matches(got)


@pytest.mark.parametrize("pool_size,refill_threshold", [(100, None), (1000, 100), (600, 599)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_stay_full_when_a_batch_is_larger_than_what_the_pool_holds(
    two_dirs: Data, pool_size: int, refill_threshold: int | None, drop_last: bool
) -> None:
    """A batch larger than the pool, or than the pool above its threshold, is still a full batch: only the
    epoch's last batch may be short (and drop_last drops only that one)."""
    ds = make(
        two_dirs,
        batch_size=512,
        pool_size=pool_size,
        refill_threshold=refill_threshold,
        drop_last=drop_last,
        max_examples_unaugmented=3000,
    )
    sizes = [len(b) for b in (b["id"] for b in ds)]
    assert sizes == [512] * 5 + ([] if drop_last else [3000 - 5 * 512])
    ids = ids_of(ds)
    assert len(np.unique(ids)) == len(ids) == sum(sizes)


def test_a_single_shard(single_shard: Data) -> None:
    for kw in ({"batch_size": 64}, {"batch_size": None}, {"pool_size": 10_000, "batch_size": 7}):
        ds = make(single_shard, **kw)
        got = collect(ds) if ds.batch_size else stack(ds)
        assert np.array_equal(np.sort(got["id"]), single_shard.source.ids), kw
        single_shard.source.assert_matches(got)
        st = ds.stats()
        assert (st.examples, st.per_dir, st.shards_activated, st.shards_exhausted) == (500, [500], 1, 1)


def test_one_directory(two_dirs: Data) -> None:
    ds = StreamingMixedShardDataset(two_dirs.dirs[:1], pool_size=1500, random_seed=3, batch_size=100)
    got = collect(ds)
    want = two_dirs.source.ids[id_dir(two_dirs.source.ids) == 0]
    assert np.array_equal(np.sort(got["id"]), want)
    two_dirs.source.assert_matches(got)
    assert ds.stats().per_dir == [6000] and ds.catalog.weights.tolist() == [1.0]


def test_shard_ranges_select_exactly_those_shards(two_dirs: Data) -> None:
    ds = make(two_dirs, shard_ranges=["0-2,9-", "1"], batch_size=128)
    got = collect(ds)
    pairs = set(zip(id_dir(got["id"]).tolist(), id_shard(got["id"]).tolist()))
    assert pairs == {(0, n) for n in (0, 1, 2, 9, 10, 11)} | {(1, 1)}
    assert len(np.unique(got["id"])) == len(got["id"]) == 7 * 500
    two_dirs.source.assert_matches(got)


# ----- proportions -----


def window_bound(n: int, p: float, shard_rows: int, pool_low: int) -> float:
    """Largest deviation of a directory's count in a window of ``n`` examples from ``p * n`` that the design allows.

    Two parts. Sampling: the window draws from the pool without replacement, which spreads less than ``n``
    binomial draws, so 5 binomial standard deviations cover it. Composition: activation keeps every directory
    within about one shard of its share, so while the pool holds at least ``pool_low`` entries its share of a
    directory is off by at most ``shard_rows / pool_low``.
    """
    return 5 * math.sqrt(n * p * (1 - p)) + n * shard_rows / pool_low


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_proportions_hold_in_every_window_of_the_stream(fine_dirs: Data, seed: int) -> None:
    pool, window = 3000, 1000
    ds = make(fine_dirs, pool_size=pool, random_seed=seed, batch_size=100)
    d = id_dir(ids_of(ds))
    weights = ds.catalog.weights
    assert weights.tolist() == [0.75, 0.25]
    threshold = ds.refill_threshold
    worst = 0.0
    for start in range(0, len(d), window):
        w = d[start : start + window]
        for k, p in enumerate(weights):
            dev = abs(int(np.sum(w == k)) - p * len(w))
            bound = window_bound(len(w), p, fine_dirs.max_shard_rows, threshold)
            assert dev <= bound, (start, k, dev, bound)
            worst = max(worst, dev / len(w))
    assert worst < 0.09  # the bound above is 9.0% for p = 0.25; in practice it is far less
    assert np.bincount(d).tolist() == fine_dirs.records_per_dir.tolist()  # exact over the epoch


def test_proportions_follow_explicit_weights(two_dirs: Data) -> None:
    """Weights 1:1 over 6000 and 2000 records: half of the stream from each until dir1 runs out."""
    ds = make(two_dirs, weights=[1, 1], pool_size=1000, batch_size=100)
    d = id_dir(ids_of(ds))
    head = d[:2000]
    assert abs(np.mean(head == 1) - 0.5) <= window_bound(2000, 0.5, 500, ds.refill_threshold) / 2000
    assert np.bincount(d).tolist() == [6000, 2000]


@pytest.mark.parametrize("seed", range(5))
def test_directories_of_very_different_sizes_finish_together(uneven_dirs: Data, seed: int) -> None:
    """30 x 200, 3 x 200 and 1 x 700 records mixed by records: the last 10% of the stream holds every directory.

    The 700-row directory is one shard, which enters the pool in one piece; it can last until the end only when
    the pool is not small next to it, hence a pool of 2000 here.
    """
    ds = make(uneven_dirs, weights="records", pool_size=2000, random_seed=seed, batch_size=50)
    d = id_dir(ids_of(ds))
    tail = d[-len(d) // 10 :]
    assert np.bincount(tail, minlength=3).min() > 0, np.bincount(tail, minlength=3)
    assert np.bincount(d).tolist() == uneven_dirs.records_per_dir.tolist()


# ----- order of shards -----


def first_appearances(ids: np.ndarray) -> list[tuple[int, int]]:
    """(directory, shard number) in the order their first example appears in the stream."""
    keys = id_dir(ids) * (1 << 20) + id_shard(ids)
    _, first = np.unique(keys, return_index=True)
    ordered = keys[np.sort(first)]
    return list(zip((ordered >> 20).tolist(), (ordered & ((1 << 20) - 1)).tolist()))


@pytest.mark.parametrize("weights", ["shards", "records"])
def test_shards_are_activated_in_ascending_order_inside_each_directory(uneven_dirs: Data, weights: str) -> None:
    ds = make(uneven_dirs, shard_ranges=["0-4,10-14,20-", "all", "all"], weights=weights)
    cat = ds.catalog
    order = activation_order(cat.shard_dir, cat.shard_rows, cat.weights)
    for k in range(cat.num_dirs):
        numbers = cat.shard_number[order][cat.shard_dir[order] == k]
        assert np.all(np.diff(numbers) > 0), (k, numbers)


def test_with_a_pool_drained_by_every_batch_shards_first_appear_in_activation_order(uneven_dirs: Data) -> None:
    """A pool drained completely by every batch (batch = pool, threshold 1) hands out entries in the order they are
    activated, up to shuffling inside a batch; a batch is as long as a slice (a shard enters in slices), so no
    batch holds the first rows of two shards: the stream's first appearances of shards follow the planned order
    exactly and inside each directory shards come in ascending order."""
    ds = make(uneven_dirs, shard_ranges=["0-9", "all", "all"], pool_size=16, refill_threshold=1, batch_size=16)
    seen = first_appearances(ids_of(ds))
    cat = ds.catalog
    run = RunSpec.from_config(ds.state_dict()["config"], 0, cat.shard_dir, cat.shard_rows)
    assert run.slice_rows == MIN_SLICE_ROWS
    order = list(dict.fromkeys(epoch_plan(cat.shard_dir, cat.shard_rows, run).segments[0].shard.tolist()))
    assert seen == list(zip(cat.shard_dir[order].tolist(), cat.shard_number[order].tolist()))
    for k, count in enumerate([10, 3, 1]):
        numbers = [n for d, n in seen if d == k]
        assert numbers == sorted(numbers) == list(range(count))


def test_with_a_large_pool_shards_first_appear_in_nearly_ascending_order(fine_dirs: Data) -> None:
    ds = make(fine_dirs, pool_size=1000, batch_size=100)
    seen = first_appearances(ids_of(ds))
    for k in range(2):
        numbers = np.array([n for d, n in seen if d == k])
        assert len(numbers) == fine_dirs.shards[k]
        # A shard's first row enters the pool after all rows of the shards before it; it is drawn soon after.
        assert np.corrcoef(numbers, np.arange(len(numbers)))[0, 1] > 0.95
        assert np.max(np.abs(numbers - np.arange(len(numbers)))) <= 1000 // fine_dirs.rows[k]


# ----- determinism -----


def test_same_seed_same_stream_other_seed_other_stream(two_dirs: Data) -> None:
    a = collect(make(two_dirs, random_seed=7, batch_size=100))
    b = collect(make(two_dirs, random_seed=7, batch_size=100))
    c = collect(make(two_dirs, random_seed=8, batch_size=100))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], strict=True)
    assert not np.array_equal(a["id"], c["id"])
    assert np.array_equal(np.sort(a["id"]), np.sort(c["id"]))


def test_iterating_again_is_the_next_epoch_and_set_epoch_selects_one(two_dirs: Data) -> None:
    """Lightning never calls set_epoch on an IterableDataset, and hand-written loops forget it: every new iteration
    is the next epoch by itself, and set_epoch(n) still selects epoch n reproducibly."""
    ds = make(two_dirs, random_seed=7, batch_size=100)
    first = ids_of(ds)
    second = ids_of(ds)  # no set_epoch: the next epoch, a new order of the same records
    assert not np.array_equal(second, first)
    assert np.array_equal(np.sort(second), np.sort(first)) and len(np.unique(first)) == two_dirs.total
    assert ds.stats().epoch == 1
    other = make(two_dirs, random_seed=7, batch_size=100)
    other.set_epoch(1)
    assert np.array_equal(ids_of(other), second)  # the order is a function of (seed, epoch)
    ds.set_epoch(0)
    assert np.array_equal(ids_of(ds), first)
    assert np.array_equal(ids_of(ds), second)  # and it goes on from the epoch chosen


def test_several_epochs_in_one_iteration(two_dirs: Data) -> None:
    ds = make(two_dirs, random_seed=7, batch_size=100, num_epochs=2)
    ids = ids_of(ds)
    assert len(ids) == 2 * two_dirs.total
    one, two = ids[: two_dirs.total], ids[two_dirs.total :]
    assert np.array_equal(np.sort(one), two_dirs.source.ids) and np.array_equal(np.sort(two), two_dirs.source.ids)
    assert not np.array_equal(one, two)
    single = make(two_dirs, random_seed=7, batch_size=100)
    assert np.array_equal(ids_of(single), one)
    single.set_epoch(1)
    assert np.array_equal(ids_of(single), two)


def test_no_seed_draws_a_fresh_one(two_dirs: Data) -> None:
    a = make(two_dirs, random_seed=None, batch_size=100)
    b = make(two_dirs, random_seed=None, batch_size=100)
    assert a.random_seed != b.random_seed
    ia, ib = ids_of(a), ids_of(b)
    assert not np.array_equal(ia, ib) and np.array_equal(np.sort(ia), np.sort(ib))


# ----- max_examples_unaugmented -----


@pytest.mark.parametrize("cap", [1, 777, 3000, 7999])
@pytest.mark.parametrize("batch_size", [None, 64])
def test_max_examples_unaugmented_takes_exactly_that_many_positions(
    two_dirs: Data, cap: int, batch_size: int | None
) -> None:
    ds = make(two_dirs, max_examples_unaugmented=cap, batch_size=batch_size)
    got = collect(ds) if batch_size else stack(ds)
    assert len(got["id"]) == len(np.unique(got["id"])) == cap
    two_dirs.source.assert_matches(got)
    per_dir = np.bincount(id_dir(got["id"]), minlength=2)
    # Proportions are kept: each directory within one shard of its share of the cap.
    assert np.all(np.abs(per_dir - ds.catalog.weights * cap) <= two_dirs.max_shard_rows), per_dir
    # The positions are the front of the epoch: whole shards in activation order, the last one cut.
    cat = ds.catalog
    order = activation_order(cat.shard_dir, cat.shard_rows, cat.weights)
    n = -(-cap // 500)
    used = set(zip(id_dir(got["id"]).tolist(), id_shard(got["id"]).tolist()))
    assert used == set(zip(cat.shard_dir[order[:n]].tolist(), cat.shard_number[order[:n]].tolist()))


def test_max_examples_unaugmented_above_the_data_yields_all(two_dirs: Data) -> None:
    ids = ids_of(make(two_dirs, max_examples_unaugmented=10**9, batch_size=500))
    assert np.array_equal(np.sort(ids), two_dirs.source.ids)


# ----- stats -----


def test_stats_after_an_epoch(two_dirs: Data) -> None:
    ds = make(two_dirs, batch_size=100)
    got = collect(ds)
    st = ds.stats()
    assert st.epoch == 0 and st.examples == two_dirs.total
    assert st.per_dir == np.bincount(id_dir(got["id"])).tolist() == [6000, 2000]
    assert st.targets == [6000.0, 2000.0]
    assert st.shards_activated == st.shards_exhausted == 16
    assert st.refills > 0 and st.dropped == 0 and st.pool_entries == 0
    assert st.peak_memory_bytes > 0
    assert "dir1 2000" in str(st)
    ds.set_epoch(4)
    list(ds)
    assert ds.stats().epoch == 4 and ds.stats().examples == two_dirs.total  # counters restart each epoch


@pytest.mark.parametrize("batch_size", [100, None])
def test_stats_during_iteration(two_dirs: Data, batch_size: int | None) -> None:
    ds = make(two_dirs, batch_size=batch_size, pool_size=1000, chunk_size=100)
    yielded = []
    checked = 0
    every = 10 if batch_size else 1000  # items between checks: 1000 examples either way
    for i, item in enumerate(ds):
        yielded.append(item["id"].reshape(-1).numpy())
        if (i + 1) % every == 0:
            ids = np.concatenate(yielded)
            st = ds.stats()
            # Single examples are counted when their chunk is gathered: up to one chunk ahead of what was yielded.
            ahead = 0 if batch_size else 100 - (len(ids) % 100 or 100)
            assert st.examples == len(ids) + ahead
            if ahead == 0:
                assert st.per_dir == np.bincount(id_dir(ids), minlength=2).tolist()
            assert 0 < st.shards_activated <= 16 and st.refills > 0
            # Batches are made ahead (prefetch_batches): after the last one is handed over the pool may be empty.
            assert 0 < st.pool_entries <= 1000 or (len(ids) == two_dirs.total and st.pool_entries == 0)
            checked += 1
    assert checked >= 7
    st = ds.stats()
    assert st.shards_activated == st.shards_exhausted == 16 and st.examples == two_dirs.total


# ----- configuration errors -----


@pytest.mark.parametrize(
    "kw,words",
    [
        ({"pool_size": 100, "refill_threshold": 100}, ["refill_threshold", "pool_size"]),
        ({"pool_size": 100, "refill_threshold": 250}, ["refill_threshold", "pool_size"]),
        ({"pool_size": 100, "refill_threshold": 0}, ["refill_threshold"]),
        ({"pool_size": 1}, ["pool_size"]),
        ({"pool_size": 0}, ["pool_size"]),
        ({"pool_size": 1000.0}, ["pool_size"]),
        ({"batch_size": 0}, ["batch_size"]),
        ({"batch_size": -4}, ["batch_size"]),
        ({"batch_size": 2.5}, ["batch_size"]),
        ({"batch_size": True}, ["batch_size"]),
        ({"shard_ranges": ["5-2", "all"]}, ["shard range", "'5-2'"]),
        ({"shard_ranges": ["abc", "all"]}, ["shard range", "'abc'"]),
        ({"shard_ranges": ["0-3"]}, ["shard_ranges"]),
        ({"shard_ranges": ["100-200", "all"]}, ["100-200", "selects no shard"]),
        ({"rank": 2, "world_size": 2}, ["rank=2", "world_size=2"]),
        ({"rank": -1, "world_size": 2}, ["rank"]),
        ({"rank": 0, "world_size": 0}, ["world_size"]),
        ({"max_memory_gb": 0}, ["max_memory_gb"]),
        ({"max_memory_gb": float("nan")}, ["max_memory_gb"]),
        ({"max_examples_unaugmented": 0}, ["max_examples_unaugmented"]),
        ({"num_epochs": 0}, ["num_epochs"]),
        ({"chunk_size": 0}, ["chunk_size"]),
        ({"weights": [1.0]}, ["weights"]),
        ({"weights": [1.0, -1.0]}, ["weights"]),
        ({"weights": "rows"}, ["weights"]),
    ],
)
def test_bad_parameters_are_config_errors_naming_the_parameter(two_dirs: Data, kw: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        make(two_dirs, **kw)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_missing_and_unconverted_directories_are_config_errors(two_dirs: Data, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigError) as exc:
        StreamingMixedShardDataset([two_dirs.dirs[0], missing])
    assert str(missing) in str(exc.value) and "does not exist" in str(exc.value)
    # A directory of legacy shards that was never converted.
    with pytest.raises(ConfigError) as exc:
        StreamingMixedShardDataset([two_dirs.src[0]])
    assert str(two_dirs.src[0]) in str(exc.value) and "mmpool convert" in str(exc.value)
    with pytest.raises(ConfigError, match="data_dirs"):
        StreamingMixedShardDataset([])


def test_directories_of_different_schemas_cannot_be_mixed(two_dirs: Data, two_channel_dir: Data) -> None:
    with pytest.raises(ConfigError) as exc:
        StreamingMixedShardDataset([two_dirs.dirs[0], two_channel_dir.dirs[0]])
    msg = str(exc.value)
    assert "different record schemas" in msg
    assert str(two_dirs.dirs[0]) in msg and str(two_channel_dir.dirs[0]) in msg


def test_build_helper_makes_several_packs(two_dirs: Data, uneven_dirs: Data) -> None:
    """The fixtures exercise gathers across packs (and both pack formats)."""
    ds = make(two_dirs)
    assert len(ds.catalog.packs) == 8 and {p.kind for p in ds.catalog.packs} == {"npy", "hdf5"}
    assert len(make(uneven_dirs).catalog.packs) == 15 + 2 + 1
