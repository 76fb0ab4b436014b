"""StratifiedPool: ``mix="stratified"``, every batch holds each directory's share exactly, up to rounding.

One sub-pool per directory (an IndexPool, or its counts alone for a replay), each fed from that directory's
segments of the participant, so rows stay sequential inside each directory and every record is drawn once.
A batch of ``n`` takes ``q_d`` entries from directory ``d``'s sub-pool, uniformly at random, where the ``q_d``
come from deficit rounding: each directory earns ``n * w_d`` credit a batch and draws the whole part of its
credit, the largest fractional parts getting the remaining entries. The counts over any run of batches are then
within one entry of the weights' share. Inside the batch each directory's entries are spread evenly (``_spread``),
so any stretch of the stream, not only whole batches, holds the shares.

A directory that runs out of rows drops out and the others share its weight; when one ran out within a batch,
the others complete it. The counts depend on the sub-pools' sizes alone, never on a generator: a replay of the
counts (elastic resume) draws exactly what the stream drew.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mmpool.packing import shard_of
from mmpool.pool import IndexPool, PoolCounts
from mmpool.schedule import Segments, join


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
        self.weights = np.asarray(weights, dtype=np.float64)
        self.entries = isinstance(self.subs[0], IndexPool)  # False: counts only, nothing to order
        self.credit = np.zeros(len(self.subs))
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
    def data_left(self) -> bool:
        return any(s.data_left for s in self.subs)

    @property
    def exhausted(self) -> bool:
        return all(s.exhausted for s in self.subs)

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
            live = np.array([s.size > 0 or s.data_left for s in self.subs])
            if not live.any():
                break
            quotas = self._quotas(short, live)
            for sub, k in zip(self.subs, quotas.tolist()):
                got = sub.draw(k)
                while len(got) < k and sub.data_left:
                    refill()
                    got = np.concatenate([got, sub.draw(k - len(got))])
                if len(got):
                    parts.append(got)
                short -= len(got)  # a directory that ran out within the batch: the others complete it
        if any(s.size < s.threshold and s.data_left for s in self.subs):
            refill()
        if not parts:
            return np.empty(0, dtype=np.uint64)
        out = np.concatenate(parts)
        if self.entries and len(parts) > 1:
            out = out[_spread(parts)]
        return out

    def _quotas(self, n: int, live: np.ndarray) -> np.ndarray:
        """Entries per directory for a draw of ``n``: each live directory earns its weight's share of ``n`` and
        draws the whole part of its credit; the rest goes to the largest fractional parts (lower directory on
        ties). A directory that ran out leaves; its credit is shared out so the credits still sum to zero."""
        self.credit[~live] = 0.0
        self.credit[live] -= self.credit.sum() / np.count_nonzero(live)
        w = np.where(live, self.weights, 0.0)
        self.credit += n * w / w.sum()
        quotas = np.maximum(np.floor(self.credit), 0).astype(np.int64)
        rest = n - int(quotas.sum())
        if rest > 0:
            frac = np.where(live, self.credit - quotas, -np.inf)
            quotas[np.argsort(-frac, kind="stable")[:rest]] += 1
        while rest < 0:  # only with credits pushed below -1 by a directory leaving: take from the most ahead
            quotas[int(np.argmax(np.where(quotas > 0, quotas - self.credit, -np.inf)))] -= 1
            rest += 1
        self.credit -= quotas
        return quotas


def _spread(parts: list[np.ndarray]) -> np.ndarray:
    """An order of the concatenated parts that spreads each part evenly over the batch: its ``k``-th entry at
    ``(k + 1/2) / len`` of the way. Every stretch of the batch (and so every window of the stream, which a
    batch boundary may cut) then holds each directory's share to within an entry or two; inside each part the
    order stays the sub-pool's uniform one."""
    at = np.concatenate([(np.arange(len(p)) + 0.5) / len(p) for p in parts])
    part = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    return np.lexsort((part, at))


def _index(sub: PoolCounts) -> IndexPool:
    assert isinstance(sub, IndexPool), "a replay of counts has no entries"
    return sub


def split_preloaded(preloaded: np.ndarray, shard_dir: np.ndarray, num_dirs: int) -> list[np.ndarray]:
    """Preloaded entries (a continued epoch) split by the directory of their shard, each in its order."""
    d = shard_dir[shard_of(preloaded)]
    return [preloaded[d == k] for k in range(num_dirs)]
