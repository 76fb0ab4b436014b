"""StratifiedPool: ``mix="stratified"``, every batch holds each directory's share exactly, up to rounding.

One sub-pool per directory (an IndexPool, or its counts alone for a replay), each fed from that directory's
segments of the participant, so rows stay sequential inside each directory and every record is drawn once.
A batch of ``n`` takes ``q_d`` entries from directory ``d``'s sub-pool, uniformly at random, where the ``q_d``
come from deficit rounding: each directory earns ``n * w_d`` credit a batch and draws the whole part of its
credit, the largest fractional parts getting the remaining entries. The counts over any run of batches are then
within one entry of the weights' share. Inside the batch each directory's entries are spread evenly
(``StratifiedPool._spread``), so any stretch of the stream, not only whole batches, holds the shares.

A directory that runs out of rows drops out and the others share its weight; when one ran out within a batch,
the others complete it. The counts depend on the sub-pools' sizes alone, never on a generator: a replay of the
counts (elastic resume) draws exactly what the stream drew.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from mmpool.sampling.base import PoolSpec, ReadAhead
from mmpool.sampling.entries import shard_of
from mmpool.sampling.pool import IndexPool, PoolCounts
from mmpool.sampling.schedule import Segments, join


def by_directory(segments: Segments, shard_dir: np.ndarray, num_dirs: int) -> list[Segments]:
    """A participant's segments split by directory, each directory's in their order."""
    d = shard_dir[segments.shard]
    return [join(segments.shard[d == k], segments.lo[d == k], segments.hi[d == k]) for k in range(num_dirs)]


def split_capacity(total: int, weights: np.ndarray, low: int) -> list[int]:
    """``total`` cut in proportion to ``weights`` (largest remainder), each part at least ``low``."""
    share = total * np.asarray(weights, dtype=np.float64)
    parts = np.floor(share).astype(np.int64)
    parts[np.argsort(parts - share, kind="stable")[: total - int(parts.sum())]] += 1
    return [max(low, int(p)) for p in parts]


class StratifiedPool:
    """The pool of one participant for one epoch under ``mix="stratified"``: see the module docstring.

    ``subs`` are the directories' sub-pools, all IndexPool (the stream) or all PoolCounts (a replay of counts).
    """

    def __init__(self, subs: Sequence[PoolCounts], weights: np.ndarray) -> None:
        self.subs = list(subs)
        self.weights = [float(w) for w in weights]
        self.entries = isinstance(self.subs[0], IndexPool)  # False: counts only, nothing to order
        self.credit = [0.0] * len(self.subs)
        self._orders: dict[tuple[int, ...], np.ndarray] = {}  # _spread's orders, by the parts' lengths
        self.refills = 0

    # ----- what the stream and the statistics read: sums over the directories -----

    @property
    def size(self) -> int:
        return sum(s.size for s in self.subs)

    @property
    def capacity(self) -> int:
        return sum(s.capacity for s in self.subs)

    @property
    def activated_shards(self) -> int:
        return sum(s.activated_shards for s in self.subs)

    @property
    def outstanding(self) -> np.ndarray:
        return np.sum([_index(s).outstanding for s in self.subs], axis=0)

    @property
    def on_activate(self) -> Callable[[int, int, int], None] | None:
        return _index(self.subs[0]).on_activate

    def shards_fully_activated(self) -> np.ndarray:
        return np.concatenate([s.shards_fully_activated() for s in self.subs])

    def live_shards(self) -> np.ndarray:
        return np.logical_or.reduce([_index(s).live_shards() for s in self.subs])

    def start_read_ahead(self, read_ahead: Callable[[int, int, int], None]) -> None:
        for s in self.subs:
            _index(s).start_read_ahead(read_ahead)

    def entries_left(self) -> np.ndarray:
        return np.concatenate([_index(s).entries_left() for s in self.subs])

    def activated_rows(self) -> Segments:
        parts = [s.activated_rows() for s in self.subs]
        return Segments(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("shard", "lo", "hi")))

    @property
    def entries_pending(self) -> int:
        return sum(s.entries_pending for s in self.subs)

    # ----- filling and drawing -----

    def fill(self) -> int:
        """Top every directory's sub-pool up; returns the entries added."""
        added = sum(s.fill() for s in self.subs)
        self.refills += 1
        return added

    def take(self, n: int, refill: Callable[[], object]) -> np.ndarray:
        """The next batch (or chunk) of ``n`` entries, each directory's part by deficit rounding (fewer entries
        only when the epoch runs out), then a refill if a sub-pool fell below its threshold."""
        parts: list[np.ndarray] = []
        short = n
        while short:
            live = [s.size > 0 or s.data_left for s in self.subs]
            if not any(live):
                break
            for sub, k in zip(self.subs, self._quotas(short, live)):
                if k == 0:
                    continue
                got = sub.draw_completed(k, refill)
                if len(got):
                    parts.append(got)
                short -= len(got)  # a directory that ran out within the batch: the others complete it
        if any(s.size < s.threshold and s.data_left for s in self.subs):
            refill()
        if not parts:
            return np.empty(0, dtype=np.uint64)
        if len(parts) == 1:
            return parts[0]
        out = np.concatenate(parts)
        return out[self._spread(tuple(len(p) for p in parts))] if self.entries else out

    def _quotas(self, n: int, live: list[bool]) -> list[int]:
        """Entries per directory for a draw of ``n``: each live directory earns its weight's share of ``n`` and
        draws the whole part of its credit; the rest goes to the largest fractional parts (lower directory on
        ties). A directory that ran out leaves; its credit is shared out so the credits still sum to zero.
        Plain Python: for a handful of directories it is several times faster than numpy's small-array calls."""
        credit, weights = self.credit, self.weights
        ids = [d for d, ok in enumerate(live) if ok]
        for d, ok in enumerate(live):
            if not ok:
                credit[d] = 0.0
        mean = sum(credit) / len(ids)
        total_w = sum(weights[d] for d in ids)
        quotas = [0] * len(live)
        for d in ids:
            credit[d] += n * weights[d] / total_w - mean
            quotas[d] = max(0, math.floor(credit[d]))
        rest = n - sum(quotas)
        if rest > 0:
            for d in sorted(ids, key=lambda d: (quotas[d] - credit[d], d))[:rest]:
                quotas[d] += 1
        while rest < 0:  # only with credits pushed below -1 by a directory leaving: take from the most ahead
            d = max((d for d in ids if quotas[d] > 0), key=lambda d: quotas[d] - credit[d])
            quotas[d] -= 1
            rest += 1
        for d in ids:
            credit[d] -= quotas[d]
        return quotas

    def _spread(self, lengths: tuple[int, ...]) -> np.ndarray:
        """An order of concatenated parts of these lengths that spreads each part evenly over the batch: its
        ``k``-th entry at ``(k + 1/2) / len`` of the way. Every stretch of the batch (and so every window of the
        stream, which a batch boundary may cut) then holds each directory's share to within an entry or two;
        inside each part the order stays the sub-pool's uniform one. Batches repeat a few length patterns:
        each order is computed once."""
        order = self._orders.get(lengths)
        if order is None:
            at = np.concatenate([(np.arange(k) + 0.5) / k for k in lengths])
            part = np.repeat(np.arange(len(lengths)), lengths)
            order = np.lexsort((part, at))
            if len(self._orders) < 256:
                self._orders[lengths] = order
        return order


def _index(sub: PoolCounts) -> IndexPool:
    assert isinstance(sub, IndexPool), "a replay of counts has no entries"
    return sub


def split_preloaded(preloaded: np.ndarray, shard_dir: np.ndarray, num_dirs: int) -> list[np.ndarray]:
    """Preloaded entries (a continued epoch) split by the directory of their shard, each in its order."""
    d = shard_dir[shard_of(preloaded)]
    return [preloaded[d == k] for k in range(num_dirs)]


class StratifiedMix:
    """``mix="stratified"``: a sub-pool per directory, its capacity and threshold the pool's by weight."""

    def pool(
        self, spec: PoolSpec, seed: np.random.SeedSequence, num_shards: int, on_activate: ReadAhead | None
    ) -> StratifiedPool:
        seeds = seed.spawn(len(spec.weights))
        subs = [
            IndexPool(segs, cap, threshold, spec.factor, np.random.default_rng(s), num_shards, on_activate, pre)
            for s, (segs, cap, threshold, pre) in zip(seeds, _by_directory(spec))
        ]
        return StratifiedPool(subs, spec.weights)

    def counts(self, spec: PoolSpec) -> StratifiedPool:
        # Each directory's share of the preloaded entries: the entries themselves tell (their shard's directory).
        subs = [
            PoolCounts(segs, cap, threshold, spec.factor, len(pre)) for segs, cap, threshold, pre in _by_directory(spec)
        ]
        return StratifiedPool(subs, spec.weights)


def _by_directory(spec: PoolSpec) -> list[tuple[Segments, int, int, np.ndarray]]:
    """Per directory: its segments, its sub-pool's capacity and threshold (the pool's, by weight), and its
    preloaded entries."""
    num_dirs = len(spec.weights)
    return list(
        zip(
            by_directory(spec.segments, spec.shard_dir, num_dirs),
            split_capacity(spec.capacity, spec.weights, spec.factor),
            split_capacity(spec.threshold, spec.weights, 1),
            split_preloaded(spec.preloaded(), spec.shard_dir, num_dirs),
        )
    )
