"""Elastic resume: what remains of an epoch, from the states of every participant of a saved run, and how a run
of another shape (ranks, workers, weights) continues it. Index arithmetic only: no record is ever read.

What remains is found by replaying each old participant's index work exactly as its stream did (its epoch plan,
then IndexPool fills and draws with its own generator) up to the item its state was taken at: the entries still
in its pool (explicit packed entries, so a position whose symmetries were partly drawn keeps the others) and the
rows it never activated. The continuation then splits that remainder between the new participants:

- the leftover entries are dealt out in contiguous shares of a fixed order (each old pool's leftovers shuffled,
  one pool after another): they are each new pool's first content (*preloaded*). A new participant's share spans
  about old/new participants consecutive old pools (one more at the edges; part of one when the run grows), so
  each process replays the entries of only those pools; every other old pool's counts (how far it read, how much
  it held) are replayed without entries or generator, which costs next to nothing;
- the rows never activated are scheduled like an epoch, with the new run's weights: a shard is one unit of the
  activation order (each directory's shards keep their order), its remaining rows are cut into one block per new
  participant (each block lies in one window of the shard, and all workers walk the same shards);
- every new participant gets the same number of entries; what that costs (fewer than ``factor`` x participants
  entries in all) is dropped and counted, and stays in the remainder should the continuation itself be resumed.

A run that continues an epoch records its *origin* (see :func:`collect`): the position, and per earlier run its
configuration, worker count and the items each participant had yielded. That is enough to recompute everything
above, so a continued run can be resumed again, elastically or not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from mmpool.errors import ConfigError
from mmpool.sampling.pool import IndexPool, PoolCounts, participant_pool
from mmpool.sampling.schedule import (
    Segments,
    activation_order,
    assign_blocks,
    block_sizes,
    epoch_rows,
    interleave,
    plan_epoch,
    slice_rows,
)
from mmpool.sampling.stratified import StratifiedPool, by_directory, split_capacity, split_preloaded
from mmpool.store.catalog import dir_weights

ELASTIC_KEYS = ("world_size", "rank", "weights")  # what a continuation may change; anything else is a ConfigError
MIXES = ("pool", "stratified")
Pool = IndexPool | StratifiedPool  # what a stream draws from
_SPLIT = 0x656C6173  # b"elas": keeps the generator that deals out leftovers apart from the participants' ones


@dataclass(frozen=True)
class RunSpec:
    """What a run's index work depends on: its configuration (a state's ``config``) and its worker count."""

    seed: int
    world_size: int
    workers: int  # DataLoader workers per rank, at least 1 (0 workers is one stream too)
    pool_size: int
    refill_threshold: int
    factor: int
    step: int  # entries per draw: the batch size, or the chunk size for single examples
    batched: bool
    drop_last: bool
    max_positions: int | None
    weights: np.ndarray  # normalised, one per directory
    shard_dir: np.ndarray  # the directory of every shard of the catalog
    mix: str = "pool"  # "pool": one pool; "stratified": a sub-pool per directory, exact shares per batch

    @classmethod
    def from_config(
        cls, config: dict[str, Any], num_workers: int, shard_dir: np.ndarray, shard_rows: np.ndarray
    ) -> RunSpec:
        weights = dir_weights(config["weights"], shard_dir, shard_rows, len(config["data_dirs"]))
        batch = config["batch_size"]
        return cls(
            seed=int(config["random_seed"]),
            world_size=int(config["world_size"]),
            workers=max(1, int(num_workers)),
            pool_size=int(config["pool_size"]),
            refill_threshold=int(config["refill_threshold"]),
            factor=int(config["factor"]),
            step=int(batch if batch is not None else config["chunk_size"]),
            batched=batch is not None,
            drop_last=bool(config["drop_last"]),
            max_positions=config["max_examples_unaugmented"],
            weights=weights,
            shard_dir=shard_dir,
            mix=str(config.get("mix", "pool")),
        )

    @property
    def participants(self) -> int:
        return self.world_size * self.workers

    @property
    def slice_rows(self) -> int:
        """Rows a shard enters a participant's pool by: a small part of the pool (see ``schedule.interleave``)."""
        return slice_rows(self.capacity, self.factor)

    @property
    def capacity(self) -> int:
        return participant_pool(self.pool_size, self.refill_threshold, self.workers)[0]

    @property
    def threshold(self) -> int:
        return participant_pool(self.pool_size, self.refill_threshold, self.workers)[1]

    def pool(self, plan: Plan, participant: int, epoch: int, num_shards: int, on_activate: Any = None) -> Pool:
        """The pool of one participant of this run for ``plan``, exactly as its stream builds it."""
        seq = [self.seed, epoch, participant, self.participants] + ([plan.depth] if plan.depth else [])
        segments, preloaded = plan.segments[participant], plan.preloaded(participant)
        if self.mix == "pool":
            rng = np.random.default_rng(np.random.SeedSequence(seq))
            return IndexPool(
                segments, self.capacity, self.threshold, self.factor, rng, num_shards, on_activate, preloaded
            )
        seeds = np.random.SeedSequence(seq).spawn(len(self.weights))
        subs = [
            IndexPool(segs, cap, threshold, self.factor, np.random.default_rng(seed), num_shards, on_activate, pre)
            for seed, (segs, cap, threshold, pre) in zip(seeds, self._by_directory(segments, preloaded))
        ]
        return StratifiedPool(subs, self.weights)

    def counts(self, plan: Plan, participant: int) -> PoolCounts | StratifiedPool:
        """The same pool's counts alone: what its fills and draws reach, without entries or generator."""
        segments = plan.segments[participant]
        if self.mix == "pool":
            count = int(plan.bounds[participant + 1] - plan.bounds[participant])
            return PoolCounts(segments, self.capacity, self.threshold, self.factor, count)
        # Each directory's share of the preloaded entries: the entries themselves tell (their shard's directory).
        subs = [
            PoolCounts(segs, cap, threshold, self.factor, len(pre))
            for segs, cap, threshold, pre in self._by_directory(segments, plan.preloaded(participant))
        ]
        return StratifiedPool(subs, self.weights)

    def _by_directory(self, segments: Segments, preloaded: np.ndarray) -> list[tuple[Segments, int, int, np.ndarray]]:
        """Per directory (``mix="stratified"``): its segments, its sub-pool's capacity and threshold (the pool's,
        by weight), and its preloaded entries."""
        num_dirs = len(self.weights)
        return list(
            zip(
                by_directory(segments, self.shard_dir, num_dirs),
                split_capacity(self.capacity, self.weights, self.factor),
                split_capacity(self.threshold, self.weights, 1),
                split_preloaded(preloaded, self.shard_dir, num_dirs),
            )
        )


class Leftovers:
    """Entries left in pools, in a fixed order: parts one after another, each made (and kept) only when a range
    that overlaps it is asked for."""

    def __init__(self, parts: Sequence[tuple[int, Callable[[], np.ndarray]]] = ()) -> None:
        self.starts = np.cumsum([0, *(n for n, _ in parts)])
        self._makers = [make for _, make in parts]
        self._made: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def range(self, lo: int, hi: int) -> np.ndarray:
        """Entries ``lo..hi-1``."""
        out = [np.empty(0, dtype=np.uint64)]
        for i in np.flatnonzero((self.starts[:-1] < hi) & (self.starts[1:] > lo)).tolist():
            if i not in self._made:
                self._made[i] = self._makers[i]()
                assert len(self._made[i]) == self.starts[i + 1] - self.starts[i], "a part of another size"
            at = int(self.starts[i])
            out.append(self._made[i][max(lo - at, 0) : min(hi, int(self.starts[i + 1])) - at])
        return np.concatenate(out)


@dataclass(frozen=True)
class Remainder:
    """What is left of an epoch: entries drawn from no pool yet, and rows no pool activated (disjoint ranges,
    sorted by shard and row)."""

    pooled: Leftovers
    rows: Segments


@dataclass(frozen=True)
class Plan:
    """How an epoch, or what remained of it, is split between the participants of one run."""

    segments: list[Segments]  # per participant: its rows, in activation order
    quota: int  # entries (examples) each participant yields
    dropped: int  # entries left out so that every participant yields the quota
    rows: Segments  # the rows this plan schedules, sorted by shard
    depth: int  # 0: a whole epoch; n: the n-th continuation of it
    pooled: Leftovers  # the entries it deals out (none for a whole epoch)
    bounds: np.ndarray  # participant q preloads pooled[bounds[q]:bounds[q+1]]; entries past the last are unused

    def preloaded(self, participant: int) -> np.ndarray:
        """The entries that enter this participant's pool first."""
        return self.pooled.range(int(self.bounds[participant]), int(self.bounds[participant + 1]))


def epoch_plan(shard_dir: np.ndarray, shard_rows: np.ndarray, run: RunSpec) -> Plan:
    """The plan of a whole epoch (``plan_epoch``): no preloaded entries, every row of the epoch scheduled."""
    segments, quota = plan_epoch(
        shard_dir, shard_rows, run.weights, run.participants, run.max_positions, run.slice_rows
    )
    rows = _sorted(epoch_rows(shard_dir, shard_rows, run.weights, run.max_positions))
    dropped = (rows.positions - quota * run.participants) * run.factor
    return Plan(segments, quota * run.factor, dropped, rows, 0, Leftovers(), np.zeros(run.participants + 1, int))


def continued_plan(remainder: Remainder, shard_dir: np.ndarray, run: RunSpec, epoch: int, depth: int) -> Plan:
    """The plan of ``run`` for the rest of an epoch (its ``depth``-th continuation): the remaining rows scheduled
    by the run's weights, the pooled entries dealt out, every participant with the same number of entries."""
    rows, k, n_part = remainder.rows, run.factor, run.participants
    units, unit_of = np.unique(rows.shard, return_inverse=True)  # a unit: one shard's remaining rows
    unit_rows = np.bincount(unit_of, weights=rows.hi - rows.lo, minlength=len(units)).astype(np.int64)
    order = activation_order(shard_dir[units], unit_rows, run.weights)
    rank = np.empty(len(units), dtype=np.int64)
    rank[order] = np.arange(len(units))
    by_rank = np.argsort(rank[unit_of], kind="stable")  # pieces in activation order, by row inside a shard
    pieces = Segments(rows.shard[by_rank], rows.lo[by_rank], rows.hi[by_rank])
    sizes = block_sizes(unit_rows[order], n_part)
    have = sizes.sum(axis=0)
    # The largest equal share: each participant keeps ``quota // k`` of its rows at most (k entries each) and
    # takes the rest of its share from the pooled entries, which must suffice. Once the rows' part is below
    # k * min(have) the pooled part is under k per participant, so the search takes fewer than k steps.
    pooled = len(remainder.pooled)
    quota = (pooled + k * int(have.sum())) // n_part
    while int((quota - k * np.minimum(have, quota // k)).sum()) > pooled:
        quota -= 1
    keep = np.minimum(have, quota // k)
    segments = assign_blocks(pieces, rank[unit_of][by_rank], sizes, keep)
    segments = [interleave(s, shard_dir, run.weights, run.slice_rows) for s in segments]
    bounds = np.cumsum([0, *(quota - k * keep)])
    dropped = pooled + k * int(have.sum()) - n_part * quota
    return Plan(segments, quota, dropped, rows, depth, remainder.pooled, bounds)


def remainder_of(
    plan: Plan, run: RunSpec, epoch: int, items: Sequence[int | None], shard_rows: np.ndarray
) -> Remainder:
    """What is left of ``plan`` once each participant ``q`` of ``run`` has yielded ``items[q]`` items (None: all
    of its part). Replays each participant's counts now, its entries only when they are asked for; never reads
    a record."""
    if len(items) != run.participants:
        raise ConfigError(f"{len(items)} positions for the {run.participants} participants of the saved run")
    unused = len(plan.pooled) - int(plan.bounds[-1])
    parts = [(unused, partial(plan.pooled.range, int(plan.bounds[-1]), len(plan.pooled)))]
    activated = []
    for q, n in enumerate(items):
        segs = plan.segments[q]
        if n is None:  # finished: everything of its part was drawn
            activated.append(segs)
            parts.append((0, partial(np.empty, 0, np.uint64)))
            continue
        counts = run.counts(plan, q)
        undelivered = len(_replay(counts, run, n, q)) if n else 0
        parts.append(
            (counts.entries_pending + undelivered, partial(_leftovers, plan, run, epoch, q, n, len(shard_rows)))
        )
        activated.append(counts.activated_rows())
    rows = subtract(plan.rows, _concat(activated), shard_rows)
    return Remainder(Leftovers(parts), rows)


def _leftovers(plan: Plan, run: RunSpec, epoch: int, q: int, items: int, num_shards: int) -> np.ndarray:
    """The entries participant ``q`` had not yielded after ``items`` items, shuffled (so that any part of them is
    a uniform sample): its pool replayed with its generator."""
    pool = run.pool(plan, q, epoch, num_shards)
    undelivered = _replay(pool, run, items, q) if items else np.empty(0, dtype=np.uint64)
    out = np.concatenate([pool.entries_left(), undelivered])
    seq = [run.seed, epoch, q, run.participants, plan.depth, _SPLIT]
    np.random.default_rng(np.random.SeedSequence(seq)).shuffle(out)
    return out


def _replay(pool: PoolCounts | StratifiedPool, run: RunSpec, items: int, participant: int) -> np.ndarray:
    """Draw as the stream drew for its first ``items`` items; returns entries drawn but not yielded yet (the
    rest of the last chunk of single examples)."""
    pool.fill()
    done = 0
    while done < items:
        packed = pool.take(run.step, pool.fill)
        if len(packed) == 0 or (run.drop_last and run.batched and len(packed) < run.step):
            raise ConfigError(
                f"participant {participant} (rank {participant // run.workers}, worker {participant % run.workers})"
                f": its state says {items} items were yielded, but its part of the epoch holds only {done}; "
                "the states do not belong to this data (shards converted since?) or were edited"
            )
        done += 1 if run.batched else len(packed)
    return packed[len(packed) - (done - items) :] if done > items else packed[:0]


def subtract(a: Segments, b: Segments, shard_rows: np.ndarray) -> Segments:
    """Rows of ``a`` not in ``b`` (each a set of disjoint row ranges), merged and sorted by shard and row."""
    base = np.concatenate([[0], np.cumsum(shard_rows)])

    def ends(s: Segments) -> tuple[np.ndarray, np.ndarray]:
        at = base[s.shard]
        return np.sort(at + s.lo), np.sort(at + s.hi)

    a0, a1 = ends(a)
    b0, b1 = ends(b)
    starts = base[np.unique(a.shard)]
    cuts = np.unique(np.concatenate([a0, a1, b0, b1, starts]))
    stops = cuts[1:]
    cuts = cuts[:-1]

    def inside(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.searchsorted(lo, cuts, side="right") > np.searchsorted(hi, cuts, side="right")

    keep = inside(a0, a1) & ~inside(b0, b1)
    cuts, stops = cuts[keep], stops[keep]
    # Merge neighbours, but never across the start of a shard.
    first = np.ones(len(cuts), dtype=bool)
    first[1:] = (cuts[1:] != stops[:-1]) | np.isin(cuts[1:], starts)
    begin = np.flatnonzero(first)
    lo, hi = cuts[begin], stops[np.append(begin[1:], len(cuts))[: len(begin)] - 1]
    shard = np.searchsorted(base, lo, side="right") - 1
    return Segments(shard, lo - base[shard], hi - base[shard])


def _sorted(s: Segments) -> Segments:
    i = np.lexsort((s.lo, s.shard))
    return Segments(s.shard[i], s.lo[i], s.hi[i])


def _concat(parts: list[Segments]) -> Segments:
    return Segments(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("shard", "lo", "hi")))


# ----- the origin: what a continued run records so that its own remainder can be recomputed -----


def collect(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where the run of ``states`` (one per rank and DataLoader worker, as each saved it) was, as a position to
    continue at: ``{"epoch", "start", "origin"}``, the origin None when nothing of that epoch was drawn yet.

    The states must come from one run at one step: the same configuration but for the rank, every participant
    once, all in one epoch (or just past its end).
    """
    if not states:
        raise ConfigError("load_state_dict got an empty list of states: give the state of every rank of the run")
    first = states[0]
    config = _without_rank(first["config"])
    for s in states[1:]:
        diff = _diff(config, _without_rank(s["config"]))
        if diff:
            raise ConfigError(f"the states come from different runs: {diff} (rank {s['config']['rank']})")
        for key in ("num_workers", "shards_upto", "start"):
            if s[key] != first[key]:
                raise ConfigError(f"the states come from different runs: {key} {first[key]!r} and {s[key]!r}")
    workers = max(1, first["num_workers"])
    n_part = config["world_size"] * workers
    by_participant: dict[int, dict[str, Any]] = {}
    for s in states:
        q = s["config"]["rank"] * workers + s["worker"]
        if q in by_participant:
            raise ConfigError(f"two states of rank {s['config']['rank']}, worker {s['worker']}: give each one once")
        by_participant[q] = s
    missing = [f"rank {q // workers} worker {q % workers}" for q in range(n_part) if q not in by_participant]
    if missing:
        raise ConfigError(
            f"the run had {config['world_size']} ranks x {workers} workers; the states of {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''} are missing: gather every rank's state (mmpool.gather_states)"
        )
    ordered = [by_participant[q] for q in range(n_part)]
    epoch = min(s["epoch"] for s in ordered)
    items: list[int | None] = []
    for q, s in enumerate(ordered):
        if s["epoch"] == epoch:
            items.append(s["items"])
        elif s["epoch"] == epoch + 1 and s["items"] == 0:
            items.append(None)  # its part of the epoch is over
        else:
            raise ConfigError(
                f"the states were not saved at one step: rank {q // workers} worker {q % workers} is at epoch "
                f"{s['epoch']} item {s['items']}, another at epoch {epoch}; save every rank's state at the same step"
            )
    current = [s for s in ordered if s["epoch"] == epoch]
    origin = current[0].get("origin")
    if any(s.get("origin") != origin for s in current):
        raise ConfigError("the states continue different origins: they are not the states of one run at one step")
    if origin is not None:
        check_origin(origin)
        if origin["epoch"] != epoch:
            raise ConfigError(f"a state at epoch {epoch} continues epoch {origin['epoch']}: it was edited")
    if all(n == 0 for n in items):  # this run drew nothing of the epoch: continue what it continued
        return {"epoch": epoch, "start": first["start"], "origin": origin}
    runs = (origin["runs"] if origin is not None else []) + [{"config": config, "workers": workers, "items": items}]
    body = {"epoch": epoch, "shards_upto": first["shards_upto"], "runs": runs}
    return {"epoch": epoch, "start": first["start"], "origin": {**body, "fingerprint": _digest(body)}}


def check_origin(origin: Any) -> None:
    """A ConfigError unless ``origin`` is an origin as :func:`collect` makes it, unedited."""
    body = {k: v for k, v in origin.items() if k != "fingerprint"} if isinstance(origin, dict) else None
    if body is None or set(body) != {"epoch", "shards_upto", "runs"} or origin.get("fingerprint") != _digest(body):
        raise ConfigError(
            "the state's origin (the runs its epoch continues) was edited or corrupted; "
            "use a state saved by StreamingMixedShardDataset.state_dict"
        )


def origin_remainder(origin: dict[str, Any], shard_dir: np.ndarray, shard_rows: np.ndarray) -> Remainder:
    """What the runs of ``origin`` left of its epoch, each continuing the remainder of the one before."""
    epoch = origin["epoch"]
    remainder = None
    for depth, r in enumerate(origin["runs"]):
        run = RunSpec.from_config(r["config"], r["workers"], shard_dir, shard_rows)
        if remainder is None:
            plan = epoch_plan(shard_dir, shard_rows, run)
        else:
            plan = continued_plan(remainder, shard_dir, run, epoch, depth)
        remainder = remainder_of(plan, run, epoch, r["items"], shard_rows)
    assert remainder is not None, "collect() never makes an origin without runs"
    return remainder


def changes(saved: dict[str, Any], now: dict[str, Any], allowed: Sequence[str] = ELASTIC_KEYS) -> str:
    """What differs between two configurations, but for the keys ``allowed`` to (empty if nothing)."""
    return _diff(
        {k: v for k, v in saved.items() if k not in allowed}, {k: v for k, v in now.items() if k not in allowed}
    )


def _diff(saved: dict[str, Any], now: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    return "; ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in keys)


def _without_rank(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "rank"}


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
