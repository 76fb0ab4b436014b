"""Unit tests of elastic resume's index arithmetic (mmpool.sampling.plan): what remains of an epoch and how another
run shape continues it. No files, no torch: catalogs are arrays, streams are the pools' draws.

Every test checks coverage entry by entry: what the first run yielded, plus what the continuation yields, plus
what the continuation drops (counted) is every entry of the epoch exactly once.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from mmpool.errors import ConfigError
from mmpool.sampling.entries import pack, row_of, shard_of
from mmpool.sampling.plan import Plan, Remainder, RunSpec, continued_plan, epoch_plan
from mmpool.sampling.remainder import collect, origin_remainder, remainder_of, subtract
from mmpool.sampling.schedule import Segments

EPOCH = 3


def catalog(shards: list[int], rows: int | list[int]) -> tuple[np.ndarray, np.ndarray]:
    shard_dir = np.repeat(np.arange(len(shards)), shards).astype(np.int32)
    n = sum(shards)
    shard_rows = np.full(n, rows) if np.isscalar(rows) else np.asarray(rows)
    return shard_dir, shard_rows.astype(np.int64)


def config(**kw: Any) -> dict[str, Any]:
    """A state's configuration, as the dataset writes it (only what the index work reads matters here)."""
    base = {
        "data_dirs": ["a", "b"],
        "shard_ranges": None,
        "weights": "shards",
        "random_seed": 11,
        "pool_size": 300,
        "refill_threshold": 200,
        "batch_size": 32,
        "chunk_size": 16,
        "drop_last": False,
        "factor": 1,
        "max_examples_unaugmented": None,
        "world_size": 2,
        "rank": 0,
    }
    return {**base, **kw}


def spec(cat: tuple[np.ndarray, np.ndarray], workers: int = 0, **kw: Any) -> RunSpec:
    return RunSpec.from_config(config(**kw), workers, *cat)


def stream(plan: Plan, run: RunSpec, q: int, num_shards: int) -> list[np.ndarray]:
    """Participant ``q``'s items (batches, or single entries) to the end, drawn as the dataset draws them."""
    pool = run.pool(plan, q, EPOCH, num_shards)
    pool.fill()
    items = []
    while True:
        packed = pool.take(run.step, pool.fill)
        if len(packed) == 0 or (run.drop_last and run.batched and len(packed) < run.step):
            return items
        items += [packed] if run.batched else list(packed[:, None])


def pooled(rest: Remainder) -> np.ndarray:
    return rest.pooled.range(0, len(rest.pooled))


def epoch_entries(plan: Plan, factor: int) -> np.ndarray:
    """Every entry of the epoch: every scheduled row, once per symmetry (sorted)."""
    rows = plan.rows
    shard = np.repeat(rows.shard, rows.hi - rows.lo)
    row = np.concatenate([np.arange(lo, hi) for lo, hi in zip(rows.lo, rows.hi)])
    return np.sort(pack(np.repeat(shard, factor), np.repeat(row, factor), np.tile(np.arange(factor), len(row))))


def first_part(
    cat: tuple[np.ndarray, np.ndarray], run: RunSpec, plan: Plan, stop: list[int | None]
) -> tuple[np.ndarray, Remainder]:
    """Stream each participant to ``stop[q]`` items (None: to its end); returns what was yielded and the rest."""
    got = []
    for q, n in enumerate(stop):
        items = stream(plan, run, q, len(cat[1]))
        got += items if n is None else items[:n]
    yielded = np.concatenate(got) if got else np.empty(0, np.uint64)
    return yielded, remainder_of(plan, run, EPOCH, stop, cat[1])


def continue_to_end(
    cat: tuple[np.ndarray, np.ndarray], remainder: Remainder, run: RunSpec, depth: int = 1
) -> tuple[Plan, list[np.ndarray]]:
    plan = continued_plan(remainder, cat[0], run, EPOCH, depth)
    parts = [stream(plan, run, q, len(cat[1])) for q in range(run.participants)]
    return plan, [np.concatenate(p) if p else np.empty(0, np.uint64) for p in parts]


def assert_exact(everything: np.ndarray, *parts: np.ndarray, dropped: int) -> None:
    seen = np.sort(np.concatenate(parts))
    assert len(np.unique(seen)) == len(seen), "an entry was yielded twice"
    assert np.isin(seen, everything).all(), "an entry outside the epoch"
    assert len(everything) - len(seen) == dropped


CASES = [  # old shape, new shape, factor, batched
    ((2, 0), (3, 0), 1, True),
    ((3, 0), (1, 0), 1, False),
    ((1, 2), (1, 3), 2, True),
    ((2, 2), (3, 1), 4, False),
    ((4, 1), (2, 3), 1, True),
]


@pytest.mark.parametrize("old, new, factor, batched", CASES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mix", ["pool", "stratified"])
def test_continuation_covers_the_epoch_exactly_once(
    old: Any, new: Any, factor: int, batched: bool, seed: int, mix: str
) -> None:
    rng = np.random.default_rng(seed)
    shards = [int(rng.integers(2, 9)), int(rng.integers(1, 5))]
    cat = catalog(shards, rng.integers(40, 160, size=sum(shards)).tolist())
    kw = dict(factor=factor, batch_size=32 if batched else None, mix=mix)
    run = spec(cat, old[1], world_size=old[0], **kw)
    plan = epoch_plan(*cat, run)
    everything = epoch_entries(plan, factor)
    lengths = [len(stream(plan, run, q, len(cat[1]))) for q in range(run.participants)]
    stop = [int(rng.integers(0, n + 1)) for n in lengths]
    yielded, rest = first_part(cat, run, plan, stop)
    assert len(rest.pooled) + factor * rest.rows.positions + len(yielded) == len(everything)
    new_run = spec(cat, new[1], world_size=new[0], **kw)
    cplan, parts = continue_to_end(cat, rest, new_run)
    assert_exact(everything, yielded, *parts, dropped=cplan.dropped)
    # Every participant yields the same number of entries; the drop is under factor per participant.
    assert {len(p) for p in parts} == {cplan.quota}
    assert 0 <= cplan.dropped < new_run.participants * factor + factor


def test_what_remains_is_what_was_not_yielded() -> None:
    cat = catalog([6, 2], 120)
    run = spec(cat, 0, world_size=3, batch_size=None)
    plan = epoch_plan(*cat, run)
    yielded, rest = first_part(cat, run, plan, [100, 37, 0])
    everything = epoch_entries(plan, 1)
    left = np.concatenate([pooled(rest), pack(np.repeat(rest.rows.shard, rest.rows.hi - rest.rows.lo), 0)])
    assert len(left) + len(yielded) == len(everything)
    rows = rest.rows
    flat = [pack(g, r) for g, lo, hi in zip(rows.shard, rows.lo, rows.hi) for r in range(lo, hi)]
    assert np.array_equal(np.sort(np.concatenate([yielded, pooled(rest), np.array(flat, np.uint64)])), everything)
    # Participant 2 had not started: its whole part is unactivated rows, not pooled entries.
    mine = plan.segments[2]
    for g, lo, hi in zip(mine.shard, mine.lo, mine.hi):
        inside = (rows.shard == g) & (rows.lo <= lo) & (rows.hi >= hi)
        assert inside.any()


def test_a_second_continuation() -> None:
    """2 ranks -> 3 ranks x 2 workers -> 1 rank, each part stopped in the middle, with augmentation."""
    cat = catalog([7, 3], 90)
    kw = dict(factor=2, batch_size=16)
    first = spec(cat, 0, world_size=2, **kw)
    plan = epoch_plan(*cat, first)
    everything = epoch_entries(plan, 2)
    yielded, rest = first_part(cat, first, plan, [9, 9])
    second = spec(cat, 2, world_size=3, **kw)
    plan2 = continued_plan(rest, cat[0], second, EPOCH, 1)
    lengths = [len(stream(plan2, second, q, len(cat[1]))) for q in range(6)]
    assert len(set(lengths)) == 1
    stop: list[int | None] = [lengths[0] // 2] * 5 + [None]  # one worker at its end
    yielded2, rest2 = first_part(cat, second, plan2, stop)
    assert len(rest2.pooled) + 2 * rest2.rows.positions + len(yielded) + len(yielded2) == len(everything)
    third = spec(cat, 0, world_size=1, **kw)
    plan3, parts = continue_to_end(cat, rest2, third, depth=2)
    assert_exact(everything, yielded, yielded2, *parts, dropped=plan3.dropped)


def test_new_weights_apply_to_the_rows_not_activated_yet() -> None:
    cat = catalog([8, 8], 100)
    run = spec(cat, 0, world_size=2, batch_size=20, pool_size=200, refill_threshold=100)
    plan = epoch_plan(*cat, run)
    everything = epoch_entries(plan, 1)
    yielded, rest = first_part(cat, run, plan, [10, 10])
    heavy = spec(cat, 0, world_size=2, batch_size=20, pool_size=200, refill_threshold=100, weights=[9.0, 1.0])
    cplan, parts = continue_to_end(cat, rest, heavy)
    assert_exact(everything, yielded, *parts, dropped=cplan.dropped)
    # Pooled entries come first; then rows in the new proportions: dir 0 leads while it has rows left.
    seg = cplan.segments[0]
    rows = np.repeat(cat[0][seg.shard], seg.hi - seg.lo)  # the directory of each row, in activation order
    assert (rows[: len(rows) // 2] == 0).mean() > 0.75


def test_split_keeps_windows_and_order() -> None:
    """Each new participant's rows of a shard lie in one window; windows are disjoint; shards keep their order
    inside each directory, and all participants walk the shards in the same order."""
    cat = catalog([5, 5], 200)
    run = spec(cat, 0, world_size=4, batch_size=25)
    plan = epoch_plan(*cat, run)
    _, rest = first_part(cat, run, plan, [4, 5, 6, 7])
    new_run = spec(cat, 0, world_size=3, batch_size=25)
    cplan = continued_plan(rest, cat[0], new_run, EPOCH, 1)
    windows: dict[int, list[tuple[int, int]]] = {}
    orders = []
    for segs in cplan.segments:
        seen = list(dict.fromkeys(segs.shard.tolist()))
        orders.append(seen)
        for g in seen:
            mine = segs.shard == g
            windows.setdefault(g, []).append((int(segs.lo[mine].min()), int(segs.hi[mine].max())))
        for d in (0, 1):
            mine_d = [g for g in seen if cat[0][g] == d]
            assert mine_d == sorted(mine_d)
    for g, ws in windows.items():
        ws.sort()
        assert all(a[1] <= b[0] for a, b in zip(ws, ws[1:])), (g, ws)
    # Every participant walks each directory's shards in the same order (shards of different directories enter
    # in slices interleaved by each participant's own rows, so across directories the order may differ a little).
    for d in (0, 1):
        by_dir = [[g for g in o if cat[0][g] == d] for o in orders]
        longest = max(by_dir, key=len)
        assert all(o == longest[: len(o)] for o in by_dir)


def test_continuation_is_deterministic() -> None:
    cat = catalog([6, 3], 80)
    run = spec(cat, 2, world_size=2, batch_size=None)
    plan = epoch_plan(*cat, run)
    runs = []
    for _ in range(2):
        _, rest = first_part(cat, run, plan, [30, 31, 40, 0])
        runs.append(continue_to_end(cat, rest, spec(cat, 0, world_size=3, batch_size=None))[1])
    assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_subtract_merges_and_keeps_shards_apart() -> None:
    rows = np.array([10, 10, 10])
    a = Segments(np.array([0, 1, 2]), np.array([0, 0, 0]), np.array([10, 10, 10]))
    b = Segments(np.array([0, 1]), np.array([2, 0]), np.array([10, 4]))
    out = subtract(a, b, rows)
    assert list(zip(out.shard.tolist(), out.lo.tolist(), out.hi.tolist())) == [(0, 0, 2), (1, 4, 10), (2, 0, 10)]
    empty = subtract(b, a, rows)
    assert len(empty.shard) == 0


def test_finished_and_unstarted_participants_need_no_replay() -> None:
    cat = catalog([4, 2], 60)
    run = spec(cat, 0, world_size=2)
    plan = epoch_plan(*cat, run)
    rest = remainder_of(plan, run, EPOCH, [None, 0], cat[1])
    assert len(rest.pooled) == 0
    assert rest.rows.positions == plan.segments[1].positions + plan.dropped
    with pytest.raises(ConfigError, match="holds only"):
        remainder_of(plan, run, EPOCH, [10_000, 0], cat[1])


# ----- states and origins -----


def state(rank: int, worker: int = 0, workers: int = 0, epoch: int = EPOCH, items: int = 5, **kw: Any) -> dict:
    return {
        "version": 1,
        "epoch": epoch,
        "start": 0,
        "items": items,
        "worker": worker,
        "num_workers": workers,
        "shards_upto": [7, 2],
        "config": config(rank=rank, **kw),
        "fingerprint": "x",
    }


def test_collect_makes_a_small_origin_that_resolves() -> None:
    cat = catalog([8, 3], 200)
    states = [state(r, w, 2, items=3 + r + w) for r in range(2) for w in range(2)]
    pos = collect(states[::-1])  # any order
    assert (pos["epoch"], pos["start"]) == (EPOCH, 0)
    origin = pos["origin"]
    assert origin["runs"][0]["items"] == [3, 4, 4, 5]
    assert len(json.dumps(origin)) < 1000
    rest = origin_remainder(origin, *cat)
    run = spec(cat, 2)
    _, want = first_part(cat, run, epoch_plan(*cat, run), [3, 4, 4, 5])
    assert np.array_equal(pooled(rest), pooled(want))
    # The states of the continued run carry the origin; collecting them adds one run.
    later = [{**state(r, items=2, world_size=3), "origin": origin} for r in range(3)]
    again = collect(later)["origin"]
    assert [r["workers"] for r in again["runs"]] == [2, 1]
    origin_remainder(again, *cat)


def test_collect_finished_and_unstarted() -> None:
    done = collect([state(0, epoch=EPOCH + 1, items=0), state(1, epoch=EPOCH + 1, items=0)])
    assert (done["epoch"], done["origin"]) == (EPOCH + 1, None)
    half = collect([state(0, epoch=EPOCH + 1, items=0), state(1, items=4)])
    assert half["origin"]["runs"][0]["items"] == [None, 4]
    fresh = collect([state(0, items=0), state(1, items=0)])
    assert (fresh["epoch"], fresh["origin"]) == (EPOCH, None)


@pytest.mark.parametrize(
    "states, match",
    [
        ([], "empty list"),
        ([state(0)], "rank 1 worker 0 are missing"),
        ([state(0), state(0)], "two states of rank 0"),
        ([state(0), state(1, random_seed=3)], "different runs: random_seed"),
        ([state(0), {**state(1), "num_workers": 2}], "different runs: num_workers"),
        ([state(0), state(1, epoch=EPOCH + 1, items=3)], "not saved at one step"),
        ([state(0), state(1, epoch=EPOCH + 2, items=0)], "not saved at one step"),
        ([{**state(0), "origin": {"epoch": EPOCH}}, {**state(1), "origin": {"epoch": EPOCH}}], "edited or corrupted"),
        ([{**state(0), "origin": {"epoch": EPOCH}}, state(1)], "different origins"),
    ],
)
def test_collect_errors(states: list[dict], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        collect(states)


def test_pool_entries_of_a_partly_drawn_position_stay_apart() -> None:
    """With augmentation, a position whose symmetries were partly drawn keeps the others as pooled entries."""
    cat = catalog([3, 1], 40)
    run = spec(cat, 0, world_size=1, factor=4, batch_size=None, chunk_size=7)
    plan = epoch_plan(*cat, run)
    yielded, rest = first_part(cat, run, plan, [45])
    left = pooled(rest)
    key = shard_of(left) * 1000 + row_of(left)
    counts = np.unique(key, return_counts=True)[1]
    assert (counts < 4).any()  # some positions are partly drawn
    assert not np.isin(left, yielded).any()
