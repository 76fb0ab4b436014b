"""What every mix provides: the ``Pool`` a stream draws from, and the ``Mix`` that builds one per participant.

A mix is one module with a class that satisfies ``Mix``, plus one line in ``mmpool.sampling.mixes.MIXES``. The
epoch planner (``mmpool.sampling.plan.RunSpec``) hands a mix a ``PoolSpec`` and never asks which mix it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mmpool.sampling.schedule import Segments

ReadAhead = Callable[[int, int, int], None]  # (shard, lo, hi): rows lo..hi-1 of a shard entered the pool


class Counts(Protocol):
    """What a replay of a pool needs (``mmpool.sampling.remainder``): its sizes, fills and draws."""

    @property
    def entries_pending(self) -> int: ...

    def fill(self) -> int:
        """Top the pool up from its segments; the entries added."""
        ...

    def take(self, n: int, refill: Callable[[], object]) -> np.ndarray:
        """Up to ``n`` entries (fewer only at the end), calling ``refill`` when the pool runs below its threshold."""
        ...

    def activated_rows(self) -> Segments: ...


class Pool(Counts, Protocol):
    """One participant's pool for one epoch, with its entries: what a stream draws from."""

    refills: int

    @property
    def outstanding(self) -> np.ndarray:
        """Entries in the pool per global shard."""
        ...

    @property
    def size(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def activated_shards(self) -> int: ...
    @property
    def on_activate(self) -> ReadAhead | None: ...

    def live_shards(self) -> np.ndarray: ...
    def shards_fully_activated(self) -> np.ndarray: ...
    def entries_left(self) -> np.ndarray: ...
    def start_read_ahead(self, read_ahead: ReadAhead) -> None: ...


@dataclass(frozen=True)
class PoolSpec:
    """Everything a mix needs to build one participant's pool for one epoch (or what remains of one)."""

    segments: Segments  # the participant's rows, in activation order
    capacity: int  # the participant's pool size
    threshold: int  # refill below this
    factor: int  # entries per position (symmetries)
    weights: np.ndarray  # normalised directory weights
    shard_dir: np.ndarray  # the directory of every shard
    preloaded_count: int  # entries that enter the pool first (a continued epoch)
    preloaded: Callable[[], np.ndarray]  # those entries, made only when asked for


class Mix(Protocol):
    """How a participant's pool mixes the directories."""

    def pool(
        self, spec: PoolSpec, seed: np.random.SeedSequence, num_shards: int, on_activate: ReadAhead | None
    ) -> Pool:
        """The pool the stream draws from."""
        ...

    def counts(self, spec: PoolSpec) -> Counts:
        """The same pool's sizes alone (no entries, no generator): what a replay of its fills and draws reaches."""
        ...
