"""Tests for mmpool.sampling.stratified on its own: by_directory, split_capacity, split_preloaded, and StratifiedPool
built directly from per-directory IndexPool (or PoolCounts) sub-pools, without a dataset or a run plan.

The exact per-batch mix of a whole stream is tested in test_mixing.py; here: the order inside a batch, the deficit
rounding over runs of batches, a directory running out within a batch, the replay of counts, and the sums over the
sub-pools that the stream and its statistics read.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from mmpool.sampling.entries import pack, shard_of, sym_of
from mmpool.sampling.pool import IndexPool, PoolCounts
from mmpool.sampling.schedule import Segments, interleave
from mmpool.sampling.stratified import StratifiedPool, by_directory, split_capacity, split_preloaded


def segs(shard, lo, hi) -> Segments:
    return Segments(np.array(shard, dtype=np.int64), np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64))


def as_tuples(s: Segments) -> list[tuple[int, int, int]]:
    return list(zip(s.shard.tolist(), s.lo.tolist(), s.hi.tolist()))


def make_pool(shard_rows, shard_dir, weights, capacity, factor=1, seed=0, counts=False, on_activate=None):
    """A stratified pool over whole shards in catalog order: one sub-pool per directory, capacity split by weight,
    each refilled below 3/4 of its capacity."""
    shard_rows = np.asarray(shard_rows, dtype=np.int64)
    shard_dir = np.asarray(shard_dir, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    n = len(shard_rows)
    everything = Segments(np.arange(n), np.zeros(n, dtype=np.int64), shard_rows)
    subs = []
    for d, (seg, cap) in enumerate(
        zip(by_directory(everything, shard_dir, len(weights)), split_capacity(capacity, weights, factor))
    ):
        if counts:
            subs.append(PoolCounts(seg, cap, cap * 3 // 4, factor))
        else:
            rng = np.random.default_rng([seed, d])
            subs.append(IndexPool(seg, cap, cap * 3 // 4, factor, rng, n, on_activate=on_activate))
    return StratifiedPool(subs, weights)


def entries(g, lo, hi, factor=1) -> np.ndarray:
    """The entries of rows ``lo..hi-1`` of shard ``g``, every symmetry, sorted."""
    return np.sort(np.array([pack(g, r, s) for r in range(lo, hi) for s in range(factor)], dtype=np.uint64))


def all_entries(shard_rows, factor=1) -> np.ndarray:
    return np.sort(np.concatenate([entries(g, 0, rows, factor) for g, rows in enumerate(shard_rows)]))


def drain(pool: StratifiedPool, n: int) -> list[np.ndarray]:
    """Every batch of ``n`` until the pool is exhausted (the stream's refill: top every sub-pool up)."""
    pool.fill()
    out = []
    while len(b := pool.take(n, pool.fill)):
        out.append(b)
    return out


# --------------------------------------------------------------------------- by_directory, split_*


def test_by_directory_keeps_each_directorys_order_and_joins_continued_ranges() -> None:
    shard_dir = np.array([0, 1, 0, 1])  # 4 shards in directories 0 and 1; directory 2 has none
    s = segs([0, 1, 0, 2, 3, 1, 2, 0, 0], [0, 0, 10, 0, 0, 8, 5, 25, 32], [10, 8, 20, 5, 4, 12, 9, 30, 40])
    d0, d1, d2 = by_directory(s, shard_dir, 3)
    # Shard 0's rows 0-10 and 10-20 were cut apart by a shard of directory 1: in directory 0 alone they continue
    # each other and are joined (so are shard 2's 0-5 and 5-9); rows 32-40 of shard 0 do not continue 25-30.
    assert as_tuples(d0) == [(0, 0, 20), (2, 0, 9), (0, 25, 30), (0, 32, 40)]
    assert as_tuples(d1) == [(1, 0, 8), (3, 0, 4), (1, 8, 12)]
    assert as_tuples(d2) == [] and d2.positions == 0
    assert d0.positions + d1.positions == s.positions


def test_by_directory_undoes_the_interleaving_of_directories() -> None:
    """interleave cuts every directory's rows into slices and merges the directories; split by directory, each
    directory's rows come back as they were, in the same order, neighbouring slices joined."""
    rng = np.random.default_rng(4)
    shard_dir = np.repeat(np.arange(3), [5, 3, 4])
    rows = rng.integers(30, 200, size=12)
    order = np.concatenate([np.flatnonzero(shard_dir == d) for d in (1, 0, 2)])  # any order of whole shards
    whole = Segments(order, np.zeros(12, dtype=np.int64), rows[order])
    mixed = interleave(whole, shard_dir, np.array([0.2, 0.5, 0.3]), slice_rows=16)
    assert len(mixed.shard) > 40  # really cut and merged
    for d, (got, want) in enumerate(zip(by_directory(mixed, shard_dir, 3), by_directory(whole, shard_dir, 3))):
        assert as_tuples(got) == as_tuples(want), d
        assert as_tuples(want) == [(int(g), 0, int(rows[g])) for g in order if shard_dir[g] == d]


@pytest.mark.parametrize(
    ("total", "weights", "low", "want"),
    [
        (10, [0.5, 0.3, 0.2], 1, [5, 3, 2]),
        (7, [0.45, 0.45, 0.1], 0, [3, 3, 1]),  # remainders .15 .15 .7: the one left entry goes to the .7
        (7, [0.45, 0.45, 0.1], 2, [3, 3, 2]),  # at least ``low`` each, even past the total
        (10, [1 / 3, 1 / 3, 1 / 3], 0, [4, 3, 3]),  # equal remainders: the lower directory first
        (3, [0.1, 0.2, 0.7], 0, [0, 1, 2]),  # .3 .6 2.1: the .6 gets the entry
        (5, [0.5, 0.5], 3, [3, 3]),
    ],
)
def test_split_capacity_gives_the_largest_remainders_the_rest(total, weights, low, want) -> None:
    assert split_capacity(total, np.array(weights), low) == want


def test_split_capacity_equals_an_exact_largest_remainder_split() -> None:
    """Against the method in exact fractions: floors, then one more for each of the largest fractional parts."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        k = int(rng.integers(1, 7))
        ints = rng.integers(1, 1000, size=k)
        total = int(rng.integers(0, 5000))
        share = [Fraction(total * int(i), int(ints.sum())) for i in ints]
        floors = [s.numerator // s.denominator for s in share]
        rest = total - sum(floors)
        by_fraction = sorted(range(k), key=lambda d: (-(share[d] - floors[d]), d))
        want = [f + (d in by_fraction[:rest]) for d, f in enumerate(floors)]
        got = split_capacity(total, ints / ints.sum(), 0)
        assert sum(got) == total
        fractions = sorted(share[d] - floors[d] for d in range(k))
        if len(set(fractions)) == k:  # no ties: the float computation must pick the same directories
            assert got == want, (total, ints.tolist(), got, want)
        else:
            assert all(abs(g - s) < 1 for g, s in zip(got, share))


def test_split_preloaded_splits_by_the_directory_of_the_shard_in_order() -> None:
    shard_dir = np.array([2, 0, 2, 1, 0])
    shards = np.array([4, 0, 1, 2, 2, 4, 0, 1, 3, 0])
    rows = np.arange(10) * 7
    preloaded = pack(shards, rows, np.arange(10) % 3)
    parts = split_preloaded(preloaded, shard_dir, 4)
    assert len(parts) == 4
    want_positions = {0: [0, 2, 5, 7], 1: [8], 2: [1, 3, 4, 6, 9], 3: []}
    for d, part in enumerate(parts):
        assert part.dtype == np.uint64
        np.testing.assert_array_equal(part, preloaded[want_positions[d]])
    assert sorted(np.concatenate(parts).tolist()) == sorted(preloaded.tolist())


# --------------------------------------------------------------------------- StratifiedPool


def test_every_batch_holds_each_share_spread_evenly_and_every_entry_once() -> None:
    """Weights 1/2, 1/3, 1/6 and batches of 6: every batch holds 3, 2 and 1 entries of the directories, in the
    order that puts each directory's k-th entry at (k + 1/2) / its count of the batch (ties to the lower
    directory): 1/6 -> d0, 1/4 -> d1, 1/2 -> d0 then d2, 3/4 -> d1, 5/6 -> d0."""
    shard_dir = [0, 0, 1, 2, 0, 1]
    shard_rows = [25, 17, 22, 20, 18, 18]  # 60, 40 and 20 rows: all three directories last exactly 20 batches
    pool = make_pool(shard_rows, shard_dir, [1 / 2, 1 / 3, 1 / 6], capacity=24, factor=1)
    batches = drain(pool, 6)
    assert len(batches) == 20
    for b in batches:
        assert np.asarray(shard_dir)[shard_of(b)].tolist() == [0, 1, 0, 2, 1, 0]
    everything = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(everything), all_entries(shard_rows))
    assert pool.size == 0 and all(not s.data_left for s in pool.subs)


def test_deficit_rounding_keeps_every_run_of_batches_within_one_entry_of_the_weights() -> None:
    """Shares of 4.05, 3.15 and 1.8 entries a batch of 9, rows in proportion to the weights, two symmetries: the
    counts of every directory after every batch are within one entry of its share of the entries so far, and any
    prefix of a batch holds each directory's part of the batch to within an entry or two."""
    weights = np.array([0.45, 0.35, 0.2])
    shard_dir = np.repeat(np.arange(3), [3, 2, 2])
    shard_rows = [150, 150, 150, 175, 175, 100, 100]  # 450, 350, 200 positions
    pool = make_pool(shard_rows, shard_dir, weights, capacity=120, factor=2, seed=3)
    batches = drain(pool, 9)
    everything = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(everything), all_entries(shard_rows, factor=2))  # every entry once
    assert sorted(set(sym_of(everything).tolist())) == [0, 1]
    per_batch = np.stack([np.bincount(shard_dir[shard_of(b)], minlength=3) for b in batches])
    totals = np.array([900, 700, 400])
    live = (np.cumsum(per_batch, axis=0) < totals).all(axis=1)  # before any directory has run out
    assert live.sum() >= len(batches) - 2
    cum = np.cumsum(per_batch, axis=0)[live]
    target = np.cumsum(per_batch.sum(axis=1))[live][:, None] * weights
    assert np.abs(cum - target).max() < 1.0
    # Spread inside a batch: every prefix of length m holds m * (directory's part of the batch) / 9 of it, +-2.
    for b, counts in zip(batches, per_batch):
        dirs = shard_dir[shard_of(b)]
        prefix = np.cumsum(dirs[:, None] == np.arange(3), axis=0)
        m = np.arange(1, len(b) + 1)[:, None]
        assert np.abs(prefix - m * counts / len(b)).max() <= 2.0


def test_rows_enter_sequentially_inside_each_directory() -> None:
    """Each sub-pool activates its directory's rows in order: at every refill the activated rows of a directory
    are a prefix of its segments."""
    shard_dir = [1, 0, 1, 0]
    shard_rows = [40, 30, 20, 50]
    pool = make_pool(shard_rows, shard_dir, [0.5, 0.5], capacity=20)
    pool.fill()
    seen = []
    while len(pool.take(7, pool.fill)):
        seen.append([as_tuples(s.activated_rows()) for s in pool.subs])
    order = {0: [(1, 0, 30), (3, 0, 50)], 1: [(0, 0, 40), (2, 0, 20)]}
    for state in seen:
        for d, rows in enumerate(state):
            full, last = rows[:-1], rows[-1]
            assert full == order[d][: len(full)]
            g, lo, hi = order[d][len(full)]
            assert last[:2] == (g, lo) and lo < last[2] <= hi
    assert seen[-1] == [order[0], order[1]]


def test_a_directory_that_runs_out_leaves_and_the_others_complete_the_batch() -> None:
    # Weights 1:1, batches of 8, directory 0 has 10 rows and directory 1 has 40: batches 4+4, 4+4, then directory
    # 0's last 2 and 6 of directory 1, then directory 1 alone.
    shard_dir = [0, 1, 1]
    shard_rows = [10, 25, 15]
    pool = make_pool(shard_rows, shard_dir, [0.5, 0.5], capacity=12, seed=1)
    batches = drain(pool, 8)
    counts = [np.bincount(np.asarray(shard_dir)[shard_of(b)], minlength=2).tolist() for b in batches]
    assert counts == [[4, 4], [4, 4], [2, 6], [0, 8], [0, 8], [0, 8], [0, 2]]
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), all_entries(shard_rows))
    # In the batch that directory 0 left, its 2 entries are spread (at 1/4 and 3/4), not bunched.
    assert (np.asarray(shard_dir)[shard_of(batches[2])] == 0).nonzero()[0].tolist() == [1, 5]


def test_a_replay_of_the_counts_draws_exactly_what_the_stream_drew() -> None:
    """StratifiedPool over PoolCounts (an elastic resume's replay) and over IndexPool (the stream), with chunks of
    uneven sizes and a directory that runs out first: the same lengths, sub-pool sizes, read positions and
    refills after every take; the counts' batches are placeholders, the stream's are real entries."""
    shard_dir = [0, 1, 2, 0, 1, 2, 2]
    shard_rows = [30, 41, 50, 25, 12, 33, 40]
    weights = [0.3, 0.5, 0.2]
    stream = make_pool(shard_rows, shard_dir, weights, capacity=40, factor=2, seed=9)
    replay = make_pool(shard_rows, shard_dir, weights, capacity=40, factor=2, counts=True)
    assert stream.entries and not replay.entries
    assert stream.fill() == replay.fill() == 40
    sizes = [13, 5, 29, 8]
    drawn = []
    for i in range(1000):
        n = sizes[i % len(sizes)]
        a, b = stream.take(n, stream.fill), replay.take(n, replay.fill)
        assert len(a) == len(b), i
        assert [s.size for s in stream.subs] == [s.size for s in replay.subs], i
        assert [(s.seg, s.row, s.pre) for s in stream.subs] == [(s.seg, s.row, s.pre) for s in replay.subs], i
        assert stream.refills == replay.refills and stream.credit == replay.credit, i
        if not len(a):
            break
        drawn.append(a)
        assert not np.asarray(b).any()  # a replay stands for entries, it has none
    np.testing.assert_array_equal(np.sort(np.concatenate(drawn)), all_entries(shard_rows, factor=2))
    assert stream.size == replay.size == 0 and replay.capacity == stream.capacity


def test_the_sums_over_the_directories_are_what_the_stream_reads() -> None:
    shard_dir = np.array([0, 1, 0, 1, 1])
    shard_rows = [6, 9, 8, 4, 10]
    pool = make_pool(shard_rows, shard_dir, [0.4, 0.6], capacity=20, factor=2, seed=2)
    subs = pool.subs
    assert pool.capacity == 20 == sum(s.capacity for s in subs) and [s.capacity for s in subs] == [8, 12]
    assert pool.fill() == 20 and pool.size == 20 and pool.refills == 1
    # Directory 0 holds shard 0 (6 rows, 12 entries) but only 8 fit: rows 0-3; directory 1 holds rows 0-5 of shard 1.
    assert as_tuples(pool.activated_rows()) == [(0, 0, 4), (1, 0, 6)]
    assert pool.activated_shards == 2 and pool.shards_fully_activated().tolist() == []
    left = pool.entries_left()
    np.testing.assert_array_equal(np.sort(left), np.sort(np.concatenate([entries(0, 0, 4, 2), entries(1, 0, 6, 2)])))
    assert pool.outstanding.tolist() == [8, 12, 0, 0, 0]
    assert pool.live_shards().tolist() == [True] * 5  # pooled, or rows not activated yet
    assert pool.entries_pending == 20
    out = pool.take(10, pool.fill)
    assert len(out) == 10 and np.bincount(shard_dir[shard_of(out)], minlength=2).tolist() == [4, 6]
    # Drawn + left = everything activated, each once; outstanding counts what is left per shard.
    now = np.concatenate([out, pool.entries_left()])
    activated = np.concatenate([entries(g, lo, hi, 2) for g, lo, hi in as_tuples(pool.activated_rows())])
    np.testing.assert_array_equal(np.sort(now), np.sort(activated))
    left = pool.entries_left()
    np.testing.assert_array_equal(pool.outstanding, np.bincount(shard_of(left), minlength=5))
    assert pool.entries_pending == pool.size == len(left)


def test_read_ahead_sees_every_shard_of_every_directory_as_it_enters() -> None:
    calls = []
    shard_dir = [0, 1, 0, 1]
    shard_rows = [10, 12, 6, 8]
    pool = make_pool(shard_rows, shard_dir, [0.5, 0.5], capacity=16, on_activate=lambda *a: calls.append(a))
    assert pool.on_activate is not None
    batches = drain(pool, 4)
    assert sorted(calls) == [(0, 0, 10), (1, 0, 12), (2, 0, 6), (3, 0, 8)]
    # Directory by directory, shards enter in their order.
    assert [c for c in calls if c[0] in (0, 2)] == [(0, 0, 10), (2, 0, 6)]
    assert sum(len(b) for b in batches) == 36


def test_start_read_ahead_reads_what_each_sub_pool_holds_and_what_enters_later() -> None:
    """After a fast-forward (pools built without read-ahead), start_read_ahead hands the callback to every
    sub-pool: each reads its pooled shards ahead at once (to the shard's end), later shards as they enter."""
    shard_dir = [0, 1, 0, 1]
    shard_rows = [10, 12, 6, 8]
    pool = make_pool(shard_rows, shard_dir, [0.5, 0.5], capacity=16)
    pool.fill()
    calls = []
    pool.start_read_ahead(lambda *a: calls.append(a))
    assert sorted(calls) == [(0, 0, 10), (1, 0, 12)]
    assert all(s.on_activate is pool.on_activate for s in pool.subs)
    while len(pool.take(4, pool.fill)):
        pass
    assert sorted(calls) == [(0, 0, 10), (1, 0, 12), (2, 0, 6), (3, 0, 8)]


def test_an_empty_take_and_an_exhausted_pool() -> None:
    pool = make_pool([3, 2], [0, 1], [0.5, 0.5], capacity=10)
    pool.fill()
    assert pool.take(0, pool.fill).tolist() == []
    got = pool.take(100, pool.fill)
    np.testing.assert_array_equal(np.sort(got), all_entries([3, 2]))
    out = pool.take(4, pool.fill)
    assert out.dtype == np.uint64 and len(out) == 0
