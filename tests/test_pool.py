"""Unit tests of the index work: activation order and epoch plans (mmpool.sampling.schedule) and IndexPool (mmpool.sampling.pool).

No files, no torch: catalogs are plain arrays of shard directories and row counts.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from mmpool.sampling.entries import row_of, shard_of, sym_of
from mmpool.sampling.pool import MAX_RUNS, IndexPool
from mmpool.sampling.schedule import MAX_SLICES, Segments, activation_order, interleave, split_epoch


def catalog(shards: list[int], rows: list[int] | list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """shard_dir and shard_rows arrays; ``rows`` is one count per directory or one list per directory."""
    shard_dir = np.repeat(np.arange(len(shards)), shards).astype(np.int32)
    per = [np.full(n, r) if np.isscalar(r) else np.asarray(r) for n, r in zip(shards, rows)]
    return shard_dir, np.concatenate(per).astype(np.int64)


def random_catalog(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    num_dirs = int(rng.integers(1, 5))
    shards = rng.integers(1, 30, size=num_dirs).tolist()
    rows = [rng.integers(20, 400, size=n).tolist() for n in shards]
    return catalog(shards, rows)


def record_weights(shard_dir: np.ndarray, shard_rows: np.ndarray) -> np.ndarray:
    w = np.bincount(shard_dir, weights=shard_rows).astype(np.float64)
    return w / w.sum()


# ----- activation order -----


@pytest.mark.parametrize("seed", range(20))
def test_activation_order_is_ascending_inside_every_directory(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shard_dir, shard_rows = random_catalog(rng)
    w = rng.random(shard_dir.max() + 1) + 0.05
    order = activation_order(shard_dir, shard_rows, w / w.sum())
    assert sorted(order.tolist()) == list(range(len(shard_rows)))  # every shard exactly once
    for d in range(shard_dir.max() + 1):
        mine = order[shard_dir[order] == d]
        # Global ids ascend with the shard number inside a directory (catalog order).
        assert np.all(np.diff(mine) > 0), (d, mine)


@pytest.mark.parametrize("seed", range(30))
def test_activation_order_keeps_proportions_at_every_point(seed: int) -> None:
    """With weights equal to the record shares, after every activation each directory's activated records are
    within one shard (the largest in the catalog) of its exact share: proportions hold at every point."""
    rng = np.random.default_rng(seed)
    shard_dir, shard_rows = random_catalog(rng)
    w = record_weights(shard_dir, shard_rows)
    order = activation_order(shard_dir, shard_rows, w)
    done = np.zeros(len(w))
    total = 0
    worst = 0.0
    for g in order:
        done[shard_dir[g]] += shard_rows[g]
        total += shard_rows[g]
        worst = max(worst, float(np.abs(done - w * total).max()))
    assert worst <= shard_rows.max(), (worst, shard_rows.max())


def test_activation_order_interleaves_equal_shards_exactly() -> None:
    """Weights 3:1 with equal shards: every window of 4 activations holds 3 shards of dir0 and 1 of dir1."""
    shard_dir, shard_rows = catalog([12, 4], [500, 500])
    order = activation_order(shard_dir, shard_rows, np.array([0.75, 0.25]))
    dirs = shard_dir[order]
    assert [int(np.sum(dirs[i : i + 4] == 1)) for i in range(0, 16, 4)] == [1, 1, 1, 1]


def test_small_directory_is_spread_over_the_whole_order() -> None:
    """A directory with few shards is not used up early nor saved for the end: its shards are spread out."""
    shard_dir, shard_rows = catalog([30, 3], [200, 200])
    order = activation_order(shard_dir, shard_rows, record_weights(shard_dir, shard_rows))
    where = np.flatnonzero(shard_dir[order] == 1) / len(order)
    # Exact proportions put the 3 shards near 1/6, 3/6 and 5/6 of the order; allow one shard of slack each way.
    ideal = np.array([1, 3, 5]) / 6
    assert np.all(np.abs(where - ideal) <= 1 / 6 + 1 / len(order)), where


def test_activation_order_is_deterministic_and_ties_go_to_the_lower_directory() -> None:
    shard_dir, shard_rows = catalog([2, 2], [100, 100])
    a = activation_order(shard_dir, shard_rows, np.array([0.5, 0.5]))
    b = activation_order(shard_dir, shard_rows, np.array([0.5, 0.5]))
    assert a.tolist() == b.tolist() == [0, 2, 1, 3]


# ----- epoch plans -----


@pytest.mark.parametrize("participants", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("seed", range(5))
def test_plan_splits_every_shard_into_contiguous_blocks(participants: int, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    shard_dir, shard_rows = random_catalog(rng)
    w = record_weights(shard_dir, shard_rows)
    plans, quota = split_epoch(shard_dir, shard_rows, w, participants)
    total = int(shard_rows.sum())
    assert all(p.positions == quota for p in plans)
    dropped = total - quota * participants
    assert 0 <= dropped < participants  # totals differ by at most one before the cut
    order = activation_order(shard_dir, shard_rows, w)
    seen = np.zeros(total, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(shard_rows)])
    for p in plans:
        assert (p.lo < p.hi).all()
        # Each participant walks the shards in the activation order.
        rank_in_order = {int(g): i for i, g in enumerate(order)}
        assert np.all(np.diff([rank_in_order[int(g)] for g in p.shard]) > 0)
        for g, lo, hi in zip(p.shard, p.lo, p.hi):
            assert 0 <= lo < hi <= shard_rows[g]
            seen[offsets[g] + lo : offsets[g] + hi] += 1
    assert seen.max() == 1 and int(seen.sum()) == quota * participants
    # Block boundaries: participant q's block of a shard comes right after participant q-1's.
    for g in range(len(shard_rows)):
        blocks = [(int(p.lo[i]), int(p.hi[i])) for p in plans for i in np.flatnonzero(p.shard == g)]
        assert blocks == sorted(blocks)


def test_plan_gives_each_rank_one_contiguous_block_of_every_shard() -> None:
    """Rank-major participants (rank * workers + worker): the workers of a rank together read one contiguous block."""
    shard_dir, shard_rows = catalog([5, 3], [1000, 777])
    ranks, workers = 2, 3
    plans, quota = split_epoch(shard_dir, shard_rows, record_weights(shard_dir, shard_rows), ranks * workers)
    dropped = int(shard_rows.sum()) - quota * ranks * workers
    assert dropped > 0  # the total is not divisible: the cut runs too
    gaps = 0
    for g in range(len(shard_rows)):
        for r in range(ranks):
            blocks = sorted(
                (int(p.lo[i]), int(p.hi[i]))
                for p in plans[r * workers : (r + 1) * workers]
                for i in np.flatnonzero(p.shard == g)
            )
            # Contiguous, but for single rows left out so that every participant has the same total.
            assert all(0 <= b[0] - a[1] <= 1 for a, b in zip(blocks, blocks[1:])), (g, r, blocks)
            gaps += sum(b[0] - a[1] for a, b in zip(blocks, blocks[1:]))
    assert gaps <= dropped


@pytest.mark.parametrize("max_positions", [1, 499, 500, 1234, 7999, 8000, 10**6])
def test_plan_cut_takes_exactly_max_positions_from_the_front_of_the_order(max_positions: int) -> None:
    shard_dir, shard_rows = catalog([12, 4], [500, 500])
    w = np.array([0.75, 0.25])
    plans, quota = split_epoch(shard_dir, shard_rows, w, 1, max_positions)
    want = min(max_positions, 8000)
    assert quota == plans[0].positions == want
    order = activation_order(shard_dir, shard_rows, w)
    n = len(plans[0].shard)
    assert plans[0].shard.tolist() == order[:n].tolist()
    assert (plans[0].lo == 0).all() and (plans[0].hi[:-1] == 500).all()
    # Proportions of the cut are within one shard of the weights.
    per_dir = np.bincount(shard_dir[plans[0].shard], weights=plans[0].hi - plans[0].lo, minlength=2)
    assert np.all(np.abs(per_dir - w * want) <= 500)


# ----- IndexPool -----


def segments(shard_rows: list[int]) -> Segments:
    n = len(shard_rows)
    return Segments(np.arange(n), np.zeros(n, dtype=np.int64), np.asarray(shard_rows, dtype=np.int64))


def run_protocol(pool: IndexPool, step: int, before_draw=None, after_draw=None) -> np.ndarray:
    """Drive the pool as the dataset does: fill, then draw a batch and refill when it falls below the threshold."""
    pool.fill()
    out = []
    while True:
        if before_draw:
            before_draw(pool)
        packed = pool.draw(step)
        if after_draw:
            after_draw(pool)
        if pool.size < pool.threshold and pool.data_left:
            pool.fill()
        if len(packed) == 0:
            break
        out.append(packed)
    return np.concatenate(out) if out else np.empty(0, dtype=np.uint64)


@pytest.mark.parametrize("factor", [1, 3, 8])
@pytest.mark.parametrize("capacity,threshold,step", [(100, 75, 10), (100, 10, 7), (600, 599, 64), (64, 1, 1)])
def test_pool_invariants(factor: int, capacity: int, threshold: int, step: int) -> None:
    """Never above capacity; never below the threshold after a refill while data is left; every entry once."""
    rows = [137, 50, 300, 1, 211]
    segs = segments(rows)
    pool = IndexPool(segs, capacity, threshold, factor, np.random.default_rng(0), len(rows))
    assert pool.capacity == capacity and pool.threshold == threshold
    low_while_data_left = []

    def check(p: IndexPool) -> None:
        assert 0 <= p.size <= p.capacity == len(p.buf)
        assert sum(r[1] for r in p.runs) == p.size
        assert len(p.runs) <= MAX_RUNS
        assert int(p.outstanding.sum()) == p.size

    def check_after_refill(p: IndexPool) -> None:
        check(p)
        # Called before each draw, i.e. after the previous draw's refill. A refill adds whole positions (factor
        # entries each), so a threshold within one position of the capacity can be missed by less than a position.
        if p.data_left and p.size < min(p.threshold, p.capacity - factor + 1):
            low_while_data_left.append(p.size)

    out = run_protocol(pool, step, check_after_refill, check)
    assert not low_while_data_left
    assert pool.exhausted and pool.refills > 0
    assert len(out) == sum(rows) * factor
    assert len(np.unique(out)) == len(out)
    shard, row, sym = shard_of(out), row_of(out), sym_of(out)
    for g, n in enumerate(rows):
        mine = shard == g
        assert np.bincount(row[mine] * factor + sym[mine], minlength=n * factor).tolist() == [1] * (n * factor)
    assert pool.activated_shards == len(rows)
    assert pool.shards_fully_activated().tolist() == list(range(len(rows)))
    assert not pool.outstanding.any()


def test_pool_activates_rows_sequentially_in_segment_order() -> None:
    calls: list[tuple[int, int, int]] = []
    segs = Segments(np.array([3, 0, 2]), np.array([10, 0, 5]), np.array([60, 40, 6]))
    pool = IndexPool(segs, 16, 12, 2, np.random.default_rng(1), 4, lambda g, lo, hi: calls.append((g, lo, hi)))
    out = run_protocol(pool, 5)
    # on_activate gets each shard once, when its first rows enter, with all of its rows (to read them ahead).
    assert calls == [(3, 10, 60), (0, 0, 40), (2, 5, 6)]
    assert len(out) == (50 + 40 + 1) * 2


def test_a_shard_in_slices_is_read_ahead_whole_at_its_first_slice() -> None:
    calls: list[tuple[int, int, int]] = []
    segs = Segments(np.array([3, 0, 3, 0]), np.array([10, 0, 30, 20]), np.array([30, 20, 60, 40]))
    pool = IndexPool(segs, 16, 12, 1, np.random.default_rng(1), 4, lambda g, lo, hi: calls.append((g, lo, hi)))
    out = run_protocol(pool, 5)
    assert calls == [(3, 10, 60), (0, 0, 40)]
    assert pool.activated_shards == 2 and sorted(pool.shards_fully_activated().tolist()) == [0, 3]
    assert len(np.unique(out)) == len(out) == 50 + 40


def test_pool_smaller_than_the_data_only_holds_a_window() -> None:
    """Entries are activated lazily: after the first fill the pool holds only the first rows of the first shard."""
    pool = IndexPool(segments([1000, 1000]), 100, 75, 1, np.random.default_rng(0), 2)
    pool.fill()
    assert pool.size == 100
    held = pool.buf[: pool.size]
    assert set(shard_of(held).tolist()) == {0} and row_of(held).max() == 99


def test_pool_capacity_is_bounded_by_the_data() -> None:
    pool = IndexPool(segments([10, 5]), 1000, 750, 2, np.random.default_rng(0), 2)
    assert pool.capacity == 30 and len(pool.buf) == 30
    assert pool.fill() == 30 and not pool.data_left


def test_pool_smaller_than_the_augmentation_factor_still_holds_one_position() -> None:
    """A pool of fewer entries than symmetries must still make progress (one position's k entries at a time)."""
    pool = IndexPool(segments([20]), 3, 1, 8, np.random.default_rng(0), 1)
    out = run_protocol(pool, 4)
    assert len(out) == 160 and len(np.unique(out)) == 160


def test_pool_draws_are_uniform_over_its_runs() -> None:
    """At any moment every entry in the pool is equally likely to come next, whichever refill brought it in.

    Bring the pool to a state with several runs, then draw from copies of it with many generators: the share of
    each run in the first entry drawn, and in a draw of 30, must match the run's share of the pool.
    """
    pool = IndexPool(segments([5000]), 400, 390, 1, np.random.default_rng(3), 1)
    pool.fill()
    for _ in range(40):  # small draws and refills leave a few runs of different sizes
        pool.draw(int(pool.rng.integers(1, 17)))
        if pool.size < pool.threshold:
            pool.fill()
    assert len(pool.runs) >= 3, pool.runs
    sizes = np.array([r[1] for r in pool.runs])
    run_of = {}
    for k, (start, length) in enumerate(pool.runs):
        for v in pool.buf[start : start + length].tolist():
            run_of[v] = k
    p = sizes / sizes.sum()
    trials = 3000
    first = np.zeros(len(sizes))
    in_30 = np.zeros(len(sizes))
    for t in range(trials):
        c = copy.deepcopy(pool)
        c.rng = np.random.default_rng(10_000 + t)
        got = c.draw(30)
        first[run_of[int(got[0])]] += 1
        for v in got.tolist():
            in_30[run_of[v]] += 1
    # 5 binomial standard deviations (the draws of 30 are hypergeometric: less spread than that).
    assert np.all(np.abs(first - trials * p) <= 5 * np.sqrt(trials * p * (1 - p))), (first, trials * p)
    n = trials * 30
    assert np.all(np.abs(in_30 - n * p) <= 5 * np.sqrt(n * p * (1 - p))), (in_30, n * p)


def test_pool_order_is_a_function_of_the_generator() -> None:
    rows = [300, 200]
    a = run_protocol(IndexPool(segments(rows), 64, 48, 2, np.random.default_rng(5), 2), 16)
    b = run_protocol(IndexPool(segments(rows), 64, 48, 2, np.random.default_rng(5), 2), 16)
    c = run_protocol(IndexPool(segments(rows), 64, 48, 2, np.random.default_rng(6), 2), 16)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist() and sorted(a.tolist()) == sorted(c.tolist())


@pytest.mark.parametrize("seed", range(10))
def test_interleave_keeps_each_directory_in_order_and_every_prefix_within_a_slice_of_its_share(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shard_dir, shard_rows = random_catalog(rng)
    w = rng.random(shard_dir.max() + 1) + 0.05
    w /= w.sum()
    whole = split_epoch(shard_dir, shard_rows, w, 1)[0][0]
    sliced = interleave(whole, shard_dir, w, 16)

    def rows_by_dir(s: Segments) -> list[list[tuple[int, int]]]:
        out: list[list[tuple[int, int]]] = [[] for _ in w]
        for g, lo, hi in zip(s.shard.tolist(), s.lo.tolist(), s.hi.tolist()):
            out[shard_dir[g]] += [(g, r) for r in range(lo, hi)]
        return out

    # The same rows, each directory's in the same order (shards ascending, rows in order).
    assert rows_by_dir(sliced) == rows_by_dir(whole)
    # Until the first directory runs out, each directory's activated rows stay within two slices of its share
    # at every segment boundary (whole shards: within a shard, up to 400 rows here).
    d = shard_dir[sliced.shard]
    done = np.cumsum(np.eye(len(w))[d] * (sliced.hi - sliced.lo)[:, None], axis=0)
    last = min(int(np.flatnonzero(d == k)[-1]) for k in range(len(w)))
    excess = done[:last] - done[:last].sum(axis=1, keepdims=True) * w
    assert np.abs(excess).max() <= 2 * 16


def test_a_tiny_pool_over_a_huge_epoch_gets_longer_slices() -> None:
    segs = Segments(np.array([0, 1]), np.array([0, 0]), np.array([30_000_000, 10_000_000]))
    sliced = interleave(segs, np.array([0, 1]), np.array([0.75, 0.25]), 16)
    assert len(sliced.shard) <= MAX_SLICES
    assert sliced.positions == 40_000_000 and np.array_equal(np.unique(sliced.shard), [0, 1])
