"""IndexPool: a shuffled pool of packed ``(shard, row, symmetry)`` entries for one participant (rank, worker).

Only numpy arrays: no Python object per entry, so forked DataLoader workers do not copy the pool page by page
(pytorch#13246). The pool hands out entries uniformly at random without replacement and is refilled from the
participant's segments, in activation order and sequentially inside each shard, whenever it drops below the
threshold. A continued epoch (an elastic resume) also hands a pool *preloaded* entries, the leftovers of the pools
of the run it continues: they enter the pool before any segment row.

How it stays uniform without reshuffling everything at each refill: the buffer holds a few *runs*, each an
independently, uniformly shuffled array. A draw of ``n`` entries takes a multivariate-hypergeometric number from
each run (exactly the counts a uniform draw from their union would give) off the run's end, then shuffles the
``n`` it took. A refill shuffles the new entries together with the runs smaller than a quarter of the refill, so
the cost of a refill is about the size of the refill, not of the pool; larger runs are only moved, never reshuffled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmpool.sampling.base import PoolSpec, ReadAhead
from mmpool.sampling.entries import ROW_SHIFT, SHARD_SHIFT, shard_of
from mmpool.sampling.schedule import Segments

MAX_RUNS = 8
_MOVE_CHUNK = 1 << 20  # entries moved at a time when compacting, bounding numpy's temporary for overlapping copies


def participant_pool(pool_size: int, refill_threshold: int | None, workers: int) -> tuple[int, int]:
    """Capacity and refill threshold of one DataLoader worker's pool: the rank's pool split between its workers
    (``workers`` is 1 in the main process). ``refill_threshold`` None is the default, 3/4 of the pool."""
    if refill_threshold is None:
        refill_threshold = default_threshold(pool_size)
    return -(-pool_size // workers), -(-refill_threshold // workers)


def default_threshold(pool_size: int) -> int:
    """Refill when the pool is down to 3/4: refills stay small and frequent, the pool stays nearly full."""
    return max(1, pool_size * 3 // 4)


def pool_capacity(capacity: int, positions: int, factor: int, preloaded: int = 0) -> int:
    """Entries a pool really holds: never more than its epoch (its positions' symmetries and its preloaded
    entries), and at least one position's symmetries."""
    return max(factor, min(capacity, positions * factor + preloaded))


class PoolCounts:
    """How full a pool is and how far it has read its segments: an IndexPool without its entries.

    Every size and position a pool's fills and draws reach depends on the counts alone, never on the generator,
    so replaying these counts tells cheaply what a saved pool had activated and how many entries it held
    (an elastic resume replays the entries themselves only where it needs them).
    """

    def __init__(self, segments: Segments, capacity: int, threshold: int, factor: int, preloaded: int = 0) -> None:
        self.segments = segments
        self.factor = factor
        self.preloaded_total = preloaded
        self.pre = 0  # preloaded entries already in the pool
        self.capacity = pool_capacity(capacity, segments.positions, factor, preloaded)
        self.threshold = min(threshold, self.capacity)
        self.size = 0
        self.seg = 0  # next segment to activate
        self.row = int(segments.lo[0]) if len(segments.shard) else 0  # next row inside it
        # A shard may enter in several slices (schedule.interleave): it is activated with its first slice, read
        # ahead then up to its last row, and fully activated after its last slice.
        shards, first, which = np.unique(segments.shard, return_index=True, return_inverse=True)
        which = which.ravel()
        self._starts_shard = np.zeros(len(segments.shard), dtype=bool)
        self._starts_shard[first] = True
        end = np.zeros(len(shards), dtype=np.int64)
        np.maximum.at(end, which, segments.hi)
        self._shards, self._shard_end = shards, end
        last = np.zeros(len(shards), dtype=np.int64)  # each shard's last segment
        np.maximum.at(last, which, np.arange(len(which)))
        by_last = np.argsort(last, kind="stable")
        self._done_at = shards[by_last], last[by_last]
        self.activated_shards = 0
        self.refills = 0

    @property
    def data_left(self) -> bool:
        """Whether some preloaded entries or segment rows are not in the pool yet."""
        return self.pre < self.preloaded_total or self.seg < len(self.segments.shard)

    @property
    def exhausted(self) -> bool:
        return self.size == 0 and not self.data_left

    def shard_end(self, shard: int) -> int:
        """The end of the last row range of ``shard`` in this pool's segments."""
        return int(self._shard_end[np.searchsorted(self._shards, shard)])

    @property
    def entries_pending(self) -> int:
        """Entries not handed out yet of those pooled or preloaded (rows not activated aside)."""
        return self.size + self.preloaded_total - self.pre

    def activated_rows(self) -> Segments:
        """The segment rows that have entered the pool."""
        segs, n = self.segments, self.seg + int(self.seg < len(self.segments.shard))
        hi = segs.hi[:n].copy()
        if n > self.seg:
            hi[-1] = self.row
        return Segments(segs.shard[:n], segs.lo[:n], hi)

    def shards_fully_activated(self) -> np.ndarray:
        """Global ids of shards whose rows (for this participant) have all entered the pool."""
        shards, last = self._done_at
        return shards[: np.searchsorted(last, self.seg)]

    def fill(self) -> int:
        """Top the pool up to capacity (preloaded entries first, then the next segment rows); returns the number
        of entries added."""
        room = self._room()
        if room is None:
            return 0
        added = room[0] + sum((hi - lo) * self.factor for _, lo, hi, _ in self._advance(room[1]))
        self.pre += room[0]
        self.size += added
        self.refills += 1
        return added

    def draw(self, n: int) -> np.ndarray:
        """Stands for ``n`` drawn entries (fewer only when the epoch runs out): only its length is meaningful."""
        n = min(n, self.size)
        self.size -= n
        return np.broadcast_to(np.uint64(0), (n,))

    def take(self, n: int, refill: Callable[[], object]) -> np.ndarray:
        """The entries of the stream's next batch (or chunk) of ``n``: a draw, completed across refills when the
        pool held less, then a refill if the pool fell below the threshold. ``refill`` tops the pool up (the
        stream's refill also unmaps packs and checks memory); a resume replays exactly these steps."""
        packed = self.draw_completed(n, refill)
        if self.size < self.threshold and self.data_left:
            refill()
        return packed

    def draw_completed(self, n: int, refill: Callable[[], object]) -> np.ndarray:
        """A draw of ``n``, completed across refills when the pool holds less (fewer only when the epoch runs
        out)."""
        packed = self.draw(n)
        while len(packed) < n and self.data_left:  # the pool held less than a batch: refill, complete it
            refill()
            packed = np.concatenate([packed, self.draw(n - len(packed))])
        return packed

    def _room(self) -> tuple[int, int] | None:
        """(preloaded entries, segment positions) the next fill adds, or None when it adds nothing."""
        free = self.capacity - self.size
        preload = min(free, self.preloaded_total - self.pre)
        positions = (free - preload) // self.factor
        if (positions == 0 or self.seg == len(self.segments.shard)) and preload == 0:
            return None
        return preload, positions

    def _advance(self, positions: int) -> list[tuple[int, int, int, bool]]:
        """Move past the next ``positions`` segment rows; returns them as ``(shard, lo, hi, first)`` ranges,
        ``first`` when the range starts the shard."""
        segs, out = self.segments, []
        while positions and self.seg < len(segs.shard):
            g = int(segs.shard[self.seg])
            lo = self.row
            hi = min(int(segs.hi[self.seg]), lo + positions)
            first = lo == int(segs.lo[self.seg]) and bool(self._starts_shard[self.seg])
            self.activated_shards += first
            out.append((g, lo, hi, first))
            positions -= hi - lo
            self.row = hi
            if hi == int(segs.hi[self.seg]):
                self.seg += 1
                if self.seg < len(segs.shard):
                    self.row = int(segs.lo[self.seg])
        return out


class IndexPool(PoolCounts):
    """The pool of one participant for one epoch.

    ``on_activate(shard, lo, hi)`` is called when a shard's first rows enter the pool, with the range of the
    shard's rows this pool will activate (to read them ahead).
    ``preloaded`` entries enter the pool first (as many as fit), before the segments' rows.
    """

    def __init__(
        self,
        segments: Segments,
        capacity: int,
        threshold: int,
        factor: int,
        rng: np.random.Generator,
        num_shards: int,
        on_activate: Callable[[int, int, int], None] | None = None,
        preloaded: np.ndarray | None = None,
    ) -> None:
        self.preloaded = np.empty(0, dtype=np.uint64) if preloaded is None else preloaded
        super().__init__(segments, capacity, threshold, factor, len(self.preloaded))
        self.rng = rng
        self.buf = np.empty(self.capacity, dtype=np.uint64)
        self.runs: list[list[int]] = []  # [start, length]; each run uniformly shuffled, consumed from its end
        self.outstanding = np.zeros(num_shards, dtype=np.int64)  # entries in the pool per shard
        self.on_activate = on_activate

    def live_shards(self) -> np.ndarray:
        """Mask of the global shards this pool can still hand out: entries pooled or preloaded, or rows not
        activated yet."""
        live = self.outstanding > 0
        live[self.segments.shard[self.seg :]] = True
        live[shard_of(self.preloaded[self.pre :])] = True
        return live

    def start_read_ahead(self, read_ahead: Callable[[int, int, int], None]) -> None:
        """End of a fast-forward (which reads nothing): from now on read activated rows ahead, and read ahead now
        what an uninterrupted stream would have read lately: the most recently activated rows of the segments still
        pooled, about a pool's worth (not every shard with an entry left)."""
        self.on_activate = read_ahead
        segs = self.segments
        started = self.seg + int(self.seg < len(segs.shard) and self.row > int(segs.lo[self.seg]))
        budget = self.capacity // self.factor
        starts: dict[int, int] = {}  # shard -> first row to read: its recent slices, and the rest of it
        for i in np.flatnonzero(self.outstanding[segs.shard[:started]] > 0)[::-1]:
            if budget <= 0:
                break
            lo, hi = int(segs.lo[i]), int(segs.hi[i]) if i < self.seg else self.row
            lo = max(lo, hi - budget)
            g = int(segs.shard[i])
            starts[g] = min(starts.get(g, lo), lo)
            budget -= hi - lo
        for g, lo in starts.items():
            read_ahead(g, lo, self.shard_end(g))  # as at the shard's first slice: up to its end

    def fill(self) -> int:
        """Top the pool up to capacity (preloaded entries first, then the next segment rows); returns the number
        of entries added."""
        room = self._room()
        if room is None:
            return 0
        free = self.capacity - self.size
        keep, merge = self._split_runs(free)
        # The small runs are reshuffled with the new entries: set them aside, close the gaps, put them back.
        small = np.concatenate([self.buf[s : s + n] for s, n in merge]) if merge else self.buf[:0]
        end = self._compact(keep)
        self.buf[end : end + len(small)] = small
        added = self._preload(end + len(small), room[0])
        added += self._activate(end + len(small) + added, room[1])
        region = self.buf[end : end + len(small) + added]
        del small
        self.rng.shuffle(region)
        self.runs = keep + [[end, len(region)]]
        self.size += added
        self.refills += 1
        return added

    def draw(self, n: int) -> np.ndarray:
        """Up to ``n`` entries, uniformly at random without replacement (fewer only when the epoch runs out)."""
        n = min(n, self.size)
        if n == 0:
            return np.empty(0, dtype=np.uint64)
        # Multivariate-hypergeometric counts, one run at a time (numpy's multivariate_hypergeometric costs
        # ~40 us a call, a hypergeometric ~5 us: this matters when a resume replays thousands of draws).
        counts, rest, left = [], self.size, n
        for run in self.runs[:-1]:
            rest -= run[1]
            k = int(self.rng.hypergeometric(run[1], rest, left)) if left else 0
            counts.append(k)
            left -= k
        counts.append(left)
        parts = []
        for run, k in zip(self.runs, counts):
            if k:
                start, length = run
                parts.append(self.buf[start + length - k : start + length])
                run[1] -= k
        out = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
        if len(parts) > 1:
            self.rng.shuffle(out)  # the runs' parts were concatenated in run order
        self.runs = [r for r in self.runs if r[1]]
        self.size -= n
        np.subtract.at(self.outstanding, shard_of(out), 1)
        return out

    def entries_left(self) -> np.ndarray:
        """The entries this pool holds, then the preloaded ones not pooled yet: what it has not handed out of
        them (the rows it has not activated are ``segments`` from ``seg``, ``row``)."""
        return np.concatenate([self.buf[s : s + n] for s, n in sorted(self.runs)] + [self.preloaded[self.pre :]])

    def _preload(self, at: int, n: int) -> int:
        """Copy the next ``n`` preloaded entries to ``buf[at:]``; returns ``n``."""
        if n:
            block = self.preloaded[self.pre : self.pre + n]
            self.buf[at : at + n] = block
            self.outstanding += np.bincount(shard_of(block), minlength=len(self.outstanding))
            self.pre += n
        return n

    def _split_runs(self, free: int) -> tuple[list[list[int]], list[list[int]]]:
        """Runs kept as they are (larger than a quarter of the refill) and runs reshuffled with the new entries."""
        runs = sorted(self.runs, key=lambda r: -r[1])
        keep = [r for r in runs if 4 * r[1] >= free][: MAX_RUNS - 1]
        return keep, runs[len(keep) :]

    def _compact(self, runs: list[list[int]]) -> int:
        """Move the runs to the front of the buffer; returns where free space begins."""
        at = 0
        for run in sorted(runs, key=lambda r: r[0]):  # in buffer order every move goes down: nothing unread is hit
            start, length = run
            if start != at:
                for k in range(0, length, _MOVE_CHUNK):
                    m = min(_MOVE_CHUNK, length - k)
                    self.buf[at + k : at + k + m] = self.buf[start + k : start + k + m]
            run[0] = at
            at += length
        return at

    def _activate(self, at: int, positions: int) -> int:
        """Write the entries of the next ``positions`` segment rows at ``buf[at:]``; returns entries written."""
        k, written = self.factor, 0
        for g, lo, hi, first_rows in self._advance(positions):
            # Written in place (symmetry 0 first, the others from it), with one arange per segment as the only
            # temporary: a 40M-entry build takes ~4x less CPU than building the entries apart and copying them in.
            block = self.buf[at + written : at + written + (hi - lo) * k].reshape(hi - lo, k)
            first = block[:, 0]
            np.left_shift(np.arange(lo, hi, dtype=np.uint64), np.uint64(ROW_SHIFT), out=first)
            first |= np.uint64(g) << np.uint64(SHARD_SHIFT)
            if k > 1:
                block[:, 1:] = first[:, None] | np.arange(1, k, dtype=np.uint64)[None, :]
            self.outstanding[g] += (hi - lo) * k
            if self.on_activate is not None and first_rows:
                # The whole shard is read ahead when its first slice enters: slice by slice, the thread would
                # take the GIL back for every few hundred KB (see mmpool.store.readahead).
                self.on_activate(g, lo, self.shard_end(g))
            written += (hi - lo) * k
        return written


class UniformMix:
    """``mix="pool"``: one pool per participant, every draw uniform over all of it."""

    def pool(
        self, spec: PoolSpec, seed: np.random.SeedSequence, num_shards: int, on_activate: ReadAhead | None
    ) -> IndexPool:
        rng = np.random.default_rng(seed)
        return IndexPool(
            spec.segments, spec.capacity, spec.threshold, spec.factor, rng, num_shards, on_activate, spec.preloaded()
        )

    def counts(self, spec: PoolSpec) -> PoolCounts:
        return PoolCounts(spec.segments, spec.capacity, spec.threshold, spec.factor, spec.preloaded_count)
