"""The plan of an epoch: how its rows (or what remained of it, after an elastic resume) are split between the
participants (rank x DataLoader worker) of one run, and the run's parameters that the split depends on.

``epoch_plan`` splits a whole epoch (``schedule.split_epoch``); ``continued_plan`` splits a ``Remainder``
(``mmpool.sampling.remainder``). ``RunSpec.pool`` builds a participant's pool for a plan through the mix registry
(``mmpool.sampling.mixes``), so the planner never asks which mix it is. Index arithmetic only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from mmpool.sampling.base import Counts, Pool, PoolSpec, ReadAhead
from mmpool.sampling.mixes import get_mix
from mmpool.sampling.pool import participant_pool
from mmpool.sampling.schedule import (
    Segments,
    activation_order,
    assign_blocks,
    block_sizes,
    dir_weights,
    epoch_rows,
    interleave,
    slice_rows,
    split_epoch,
)


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

    def pool_spec(self, plan: Plan, participant: int) -> PoolSpec:
        """What a mix needs to build this participant's pool for ``plan``."""
        return PoolSpec(
            plan.segments[participant],
            self.capacity,
            self.threshold,
            self.factor,
            self.weights,
            self.shard_dir,
            int(plan.bounds[participant + 1] - plan.bounds[participant]),
            partial(plan.preloaded, participant),
        )

    def pool(
        self, plan: Plan, participant: int, epoch: int, num_shards: int, on_activate: ReadAhead | None = None
    ) -> Pool:
        """The pool of one participant of this run for ``plan``, exactly as its stream builds it."""
        seq = [self.seed, epoch, participant, self.participants] + ([plan.depth] if plan.depth else [])
        spec = self.pool_spec(plan, participant)
        return get_mix(self.mix).pool(spec, np.random.SeedSequence(seq), num_shards, on_activate)

    def counts(self, plan: Plan, participant: int) -> Counts:
        """The same pool's counts alone: what its fills and draws reach, without entries or generator."""
        return get_mix(self.mix).counts(self.pool_spec(plan, participant))


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
    """The plan of a whole epoch (``schedule.split_epoch``): no preloaded entries, every row of the epoch scheduled."""
    segments, quota = split_epoch(
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


def _sorted(s: Segments) -> Segments:
    i = np.lexsort((s.lo, s.shard))
    return Segments(s.shard[i], s.lo[i], s.hi[i])
