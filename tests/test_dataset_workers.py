"""The dataset behind a real torch DataLoader with two worker processes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import Data, collect, id_dir, id_row, id_shard
from torch.utils.data import DataLoader

from mmpool.stream.dataset import StreamingMixedShardDataset

WORKERS = 2


def make(data: Data, **kw) -> StreamingMixedShardDataset:
    kw.setdefault("random_seed", 0)
    kw.setdefault("pool_size", 2000)
    return StreamingMixedShardDataset(data.dirs, **kw)


def loader(ds: StreamingMixedShardDataset, batch_size: int | None = None) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, num_workers=WORKERS)


def per_worker(batches: list[dict]) -> list[list[dict]]:
    """The DataLoader hands out the workers' batches in turn (worker 0, 1, 0, 1, ...) while both have some left."""
    return [batches[w::WORKERS] for w in range(WORKERS)]


def test_batches_yield_every_record_once_with_its_source_content(two_dirs: Data) -> None:
    ds = make(two_dirs, batch_size=96)
    batches = list(loader(ds))
    got = collect(batches)
    assert np.array_equal(np.sort(got["id"]), two_dirs.source.ids)
    two_dirs.source.assert_matches(got)
    # Each worker yields 4000 examples: 41 full batches and one of 64.
    for mine in per_worker(batches):
        assert [len(b["id"]) for b in mine] == [96] * 41 + [64]


def test_single_examples_yield_every_record_once_with_its_source_content(two_dirs: Data) -> None:
    ds = make(two_dirs, chunk_size=128)
    got = collect(loader(ds, batch_size=50))
    assert got["planes"].shape == (two_dirs.total, 4, 8, 8)
    assert np.array_equal(np.sort(got["id"]), two_dirs.source.ids)
    two_dirs.source.assert_matches(got)


def test_every_worker_reads_one_contiguous_block_of_every_shard(two_dirs: Data) -> None:
    ds = make(two_dirs, batch_size=100)
    blocks = {}
    for _w, mine in enumerate(per_worker(list(loader(ds)))):
        ids = collect(mine)["id"]
        key = id_dir(ids) * 100 + id_shard(ids)
        assert len(np.unique(key)) == 16  # every worker walks every shard: none sits idle, the window is shared
        for k in np.unique(key):
            rows = np.sort(id_row(ids[key == k]))
            assert rows[-1] - rows[0] + 1 == len(rows) == 250  # contiguous half of the shard
            blocks.setdefault(int(k), []).append((int(rows[0]), int(rows[-1])))
    assert all(sorted(b) == [(0, 249), (250, 499)] for b in blocks.values())


def test_proportions_hold_in_every_window_of_every_worker(fine_dirs: Data) -> None:
    pool, window = 3000, 500
    ds = make(fine_dirs, pool_size=pool, batch_size=50)
    weights = ds.catalog.weights
    threshold = ds.refill_threshold // WORKERS  # each worker has half the pool
    for mine in per_worker(list(loader(ds))):
        d = id_dir(collect(mine)["id"])
        assert np.bincount(d).tolist() == (fine_dirs.records_per_dir // WORKERS).tolist()
        for start in range(0, len(d), window):
            w = d[start : start + window]
            for k, p in enumerate(weights):
                bound = 5 * math.sqrt(len(w) * p * (1 - p)) + len(w) * fine_dirs.max_shard_rows / threshold
                assert abs(np.sum(w == k) - p * len(w)) <= bound, (start, k)


def test_a_single_shard_is_shared_by_both_workers(single_shard: Data) -> None:
    ds = make(single_shard, batch_size=50)
    batches = list(loader(ds))
    for mine in per_worker(batches):
        assert sum(len(b["id"]) for b in mine) == 250
    got = collect(batches)
    assert np.array_equal(np.sort(got["id"]), single_shard.source.ids)
    single_shard.source.assert_matches(got)


def test_stats_from_the_workers_reach_the_main_process(two_dirs: Data) -> None:
    ds = make(two_dirs, batch_size=100)
    yielded = []
    prefetch = 2 * WORKERS * 100  # batches the DataLoader may have fetched ahead of the loop
    for i, b in enumerate(loader(ds)):
        yielded.append(b["id"].numpy())
        if i == 30:
            st = ds.stats()
            n = sum(len(x) for x in yielded)
            assert n <= st.examples <= n + prefetch
            assert st.shards_activated > 0 and st.refills > 0 and st.pool_entries > 0
    ids = np.concatenate(yielded)
    st = ds.stats()
    assert st.examples == two_dirs.total
    assert st.per_dir == np.bincount(id_dir(ids)).tolist() == [6000, 2000]
    # A shard counts once however many workers read a block of it.
    assert st.shards_activated == st.shards_exhausted == 16
    assert st.refills >= WORKERS and st.dropped == 0 and st.pool_entries == 0
    assert st.peak_memory_bytes > 0


def test_an_odd_total_drops_one_position_so_workers_yield_the_same_number(odd_dirs: Data) -> None:
    ds = make(odd_dirs, batch_size=50)
    batches = list(loader(ds))
    sizes = [sum(len(b["id"]) for b in mine) for mine in per_worker(batches)]
    assert sizes == [451, 451]
    got = collect(batches)
    assert len(np.unique(got["id"])) == 902 and set(got["id"]) <= set(odd_dirs.source.ids)
    odd_dirs.source.assert_matches(got)
    assert ds.stats().dropped == 1 and ds.stats().examples == 902


@pytest.mark.parametrize("cap", [3000, 777])
def test_max_examples_unaugmented_counts_over_all_workers(two_dirs: Data, cap: int) -> None:
    ds = make(two_dirs, batch_size=64, max_examples_unaugmented=cap)
    got = collect(loader(ds))
    even = cap - cap % WORKERS  # an odd cap loses one position so both workers yield the same number
    assert len(got["id"]) == len(np.unique(got["id"])) == even
    two_dirs.source.assert_matches(got)
    per_dir = np.bincount(id_dir(got["id"]), minlength=2)
    assert np.all(np.abs(per_dir - ds.catalog.weights * cap) <= two_dirs.max_shard_rows)


def test_same_seed_same_stream_with_workers(two_dirs: Data) -> None:
    a = collect(loader(make(two_dirs, batch_size=100, random_seed=11)))["id"]
    b = collect(loader(make(two_dirs, batch_size=100, random_seed=11)))["id"]
    ds = make(two_dirs, batch_size=100, random_seed=11)
    ds.set_epoch(1)
    c = collect(loader(ds))["id"]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and np.array_equal(np.sort(a), np.sort(c))
