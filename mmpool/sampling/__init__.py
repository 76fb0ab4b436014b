"""Which entries each participant draws, in which order: index arithmetic with numpy only.

Nothing here opens a file or imports torch, so every rank and worker computes the same order, and a resume
replays it without reading a record.

- ``entries``: a pool entry, a packed ``(shard, row, symmetry)`` integer.
- ``schedule``: directory weights, the shards' activation order, slices, each participant's blocks of rows.
- ``base``: the ``Pool`` and ``Mix`` protocols every mix satisfies, and the ``PoolSpec`` a mix builds from.
- ``pool``: ``IndexPool``, one shuffled pool of entries (``mix="pool"``).
- ``stratified``: ``StratifiedPool``, a sub-pool per directory, exact shares per batch (``mix="stratified"``).
- ``mixes``: the registry of mixes (``MIXES``).
- ``plan``: the ``Plan`` of an epoch, how it is split between the participants of a run (``RunSpec``).
- ``remainder``: what remains of an epoch from the states of a run, for elastic resume."""

from mmpool.sampling.base import Counts, Mix, Pool, PoolSpec
from mmpool.sampling.mixes import MIXES, get_mix
from mmpool.sampling.plan import Plan, RunSpec, continued_plan, epoch_plan
from mmpool.sampling.pool import IndexPool, PoolCounts
from mmpool.sampling.schedule import Segments, Weights
from mmpool.sampling.stratified import StratifiedPool

__all__ = [
    "MIXES",
    "Counts",
    "IndexPool",
    "Mix",
    "Plan",
    "Pool",
    "PoolCounts",
    "PoolSpec",
    "RunSpec",
    "Segments",
    "StratifiedPool",
    "Weights",
    "continued_plan",
    "epoch_plan",
    "get_mix",
]
