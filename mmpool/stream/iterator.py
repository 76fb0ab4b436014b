"""StreamIterator: one iteration over a StreamingMixedShardDataset, owning everything that iteration uses.

The dataset is configuration; each ``iter(dataset)`` builds a StreamIterator that owns its pool, its store
(the mapped packs), its memory guard and its position. Two live iterators never disturb each other, and an
iterator that is closed, exhausted, or dropped (a loop left early) unmaps its packs at once.

The iterator reads its parameters from the ``StreamConfig`` the dataset hands it, never from the dataset.
Follow one batch through ``_Stream._batch``: ``IndexPool.draw`` hands out packed ``(shard, row, symmetry)``
entries; ``ShardStore.gather`` copies their records out of the mapped packs; the augmentation transforms them by
symmetry id; the user's ``transform`` runs; the fields become torch tensors. Everything before the gather is
index work only, which is why a resume's fast-forward is cheap.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Iterator
from functools import partial

import numpy as np

from mmpool.config import StreamConfig
from mmpool.sampling.base import Pool
from mmpool.sampling.entries import ENTRY_BYTES, shard_of, sym_of
from mmpool.sampling.plan import Plan, RunSpec, continued_plan, epoch_plan
from mmpool.sampling.pool import participant_pool
from mmpool.sampling.remainder import origin_remainder
from mmpool.store.catalog import Catalog
from mmpool.store.gather import ShardStore
from mmpool.stream.games import GameKey
from mmpool.stream.memory import GIB, MemoryGuard
from mmpool.stream.prefetcher import Prefetcher
from mmpool.stream.resume import Position
from mmpool.stream.stats import BatchCounts, Slot
from mmpool.stream.tensors import Batch, to_tensors
from mmpool.stream.world import Participant

log = logging.getLogger("mmpool")


class StreamIterator(Iterator[Batch]):
    """The iterator ``iter(StreamingMixedShardDataset)`` returns: batches (or single examples) of one iteration.

    ``close()`` (also ``with``-statement exit, the end of the stream, or dropping the iterator) unmaps the packs
    and stops the threads. With ``prefetch_batches`` > 0 (batch mode) the next batches are prepared in a background
    thread (``mmpool.stream.prefetcher``); ``position`` is then that of the last batch returned, not of the last prepared.
    ``position`` tells where it is; ``store`` and ``pool`` are the live resources. The iteration claims its epoch
    when the first item is asked for, not when the iterator is made: an iterator made and never used (torchdata's
    StatefulDataLoader makes some) does not use up an epoch. Until then ``position`` is None.
    """

    def __init__(
        self,
        config: StreamConfig,
        catalog: Catalog,
        who: Participant,
        begin: Callable[[], tuple[Catalog, Position]],
        slot: Slot,
        refresh: Callable[[int, Catalog], Catalog] | None,
        game_key: GameKey | None = None,
    ) -> None:
        depth = config.batches_ahead
        self._stream = _Stream(config, catalog, who, begin, slot, refresh, game_key, prefetching=depth > 0)
        # The generator references the _Stream, never this object: dropping the iterator frees the generator at
        # once, which runs its ``finally`` and unmaps the packs (no reference cycle waiting for the GC).
        self._gen = self._stream.run()
        self._ahead = Prefetcher(self._gen, self._stream.snapshot, depth) if depth > 0 else None
        if self._ahead is not None:
            self._stream.between_epochs = self._ahead.drained

    def __iter__(self) -> StreamIterator:
        return self

    def __next__(self) -> Batch:
        if self._ahead is None:
            return next(self._gen)
        if self._stream.position is not None:
            # The thread checks after each batch it makes; this check, where the user asks, sees at once what the
            # user's step allocated (else only after the batches already made were handed over).
            self._stream.guard.check(self._stream._context)
        try:
            batch, where = self._ahead.next()
        except StopIteration as end:
            if end.value is not None:
                self._stream.show(end.value)
            raise StopIteration from None
        self._stream.show(where)
        return batch

    def close(self) -> None:
        """Stop the iteration and release its mappings and threads (idempotent)."""
        if self._ahead is not None:
            self._ahead.close()
        self._gen.close()

    def __del__(self) -> None:
        # The prefetch thread holds the generator: without this, a loop left early would leave it running.
        ahead = getattr(self, "_ahead", None)
        if ahead is not None:
            ahead.close()

    def __enter__(self) -> StreamIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def position(self) -> Position | None:
        return self._stream.shown

    @property
    def store(self) -> ShardStore:
        return self._stream.store

    @property
    def pool(self) -> Pool | None:
        return self._stream.pool


class _Stream:
    """The state and the loop of one iteration (see StreamIterator)."""

    def __init__(
        self,
        config: StreamConfig,
        catalog: Catalog,
        who: Participant,
        begin: Callable[[], tuple[Catalog, Position]],
        slot: Slot,
        refresh: Callable[[int, Catalog], Catalog] | None,
        game_key: GameKey | None,
        prefetching: bool = False,
    ) -> None:
        self.config = config
        self.who = who
        self.prefetching = prefetching  # batches are made ahead: the position shown is a separate object
        self.shown: Position | None = None
        self.counts: BatchCounts | None = None  # what the statistics count of the batch just made (prefetching)
        self.between_epochs: Callable[[], None] | None = None  # called at each epoch's end (prefetch: wait there)
        self.begin = begin  # claims the epoch and the catalog, at the first item
        self.slot = slot
        self.refresh = refresh  # reads new shards between epochs (main process only), None where it must not
        self.catalog = catalog
        self.position: Position | None = None
        self.store = ShardStore(catalog, config.max_open_packs, factor=config.factor)
        self.guard = MemoryGuard(int(config.max_memory_gb * GIB), config.memory_check_interval, who.in_worker)
        self.pool: Pool | None = None
        self.game_key = game_key

    def run(self) -> Generator[Batch, None, None]:
        config = self.config
        catalog, pos = self.begin()
        self.shown = pos  # the object the dataset's state_dict reads
        if self.prefetching:
            pos = dataclasses.replace(pos)  # advanced by the thread; ``shown`` follows the batches handed over
        self.position = pos
        self._use_catalog(catalog)
        try:
            skip = pos.items
            while config.num_epochs is None or pos.epoch < pos.start + config.num_epochs:
                yield from self._epoch(skip)
                if self.between_epochs is not None:
                    self.between_epochs()
                skip = 0
                pos.epoch, pos.items = pos.epoch + 1, 0
                if self.refresh is not None and (
                    config.num_epochs is None or pos.epoch < pos.start + config.num_epochs
                ):
                    self._use_catalog(self.refresh(pos.epoch, self.catalog))
        finally:
            self.pool = None
            self.store.close()

    def snapshot(self) -> tuple[int, int, BatchCounts | None]:
        """(epoch, items, counts) of the batch just made ahead: the position it leaves the stream at, and what
        the statistics count when the user takes it."""
        pos = self.position
        assert pos is not None
        counts, self.counts = self.counts, None
        return pos.epoch, pos.items, counts

    def show(self, where: tuple[int, int, BatchCounts | None]) -> None:
        """The user has the batch that left the stream at ``where``: report that position, count its examples."""
        if self.shown is not None:
            self.shown.epoch, self.shown.items = where[0], where[1]
        if where[2] is not None:
            self.slot.count(where[2])

    def _use_catalog(self, catalog: Catalog) -> None:
        if catalog is not self.catalog:
            self.store.close()
            self.catalog = catalog
            self.store = ShardStore(catalog, self.config.max_open_packs, factor=self.config.factor)

    def _epoch(self, skip: int) -> Generator[Batch, None, None]:
        config, cat, who, pos = self.config, self.catalog, self.who, self.position
        assert pos is not None
        state_config = config.state_config(who.rank, who.world_size)
        run = RunSpec.from_config(state_config, who.workers, cat.shard_dir, cat.shard_rows)
        plan = self._plan(run)
        if plan.dropped and who.index == 0:
            log.warning(
                "epoch %d%s: dropping %d of %d examples so that all %d ranks x %d workers yield the same number",
                pos.epoch,
                " (continued)" if plan.depth else "",
                plan.dropped,
                plan.quota * who.count + plan.dropped,
                who.world_size,
                who.workers,
            )
        # A fast-forward reads no records, not even ahead: the rows still pooled are read ahead when it ends.
        read_ahead = self._read_ahead if config.prefetch else None
        pool = self.pool = run.pool(plan, who.index, pos.epoch, cat.num_shards, None if skip else read_ahead)
        self.slot.start_epoch(pos.epoch, plan.dropped if who.index == 0 else 0, run.weights)
        del plan  # it keeps the old pools' leftovers it was dealt from; the pool has its share
        self.guard.check(self._context, force=True)  # over the cap already: say so before building anything
        t0 = time.perf_counter()
        self._refill()
        log.info(
            "epoch %d: pool of %d entries built in %.2fs (participant %d of %d)",
            pos.epoch,
            pool.size,
            time.perf_counter() - t0,
            who.index,
            who.count,
        )
        per_item = config.batch_size is not None
        items, step = 0, config.step
        while True:
            packed = pool.take(step, partial(self._refill, force_check=items >= skip))
            if pool.on_activate is None and read_ahead is not None and items + (1 if per_item else len(packed)) > skip:
                pool.start_read_ahead(read_ahead)  # the fast-forward is over
            if len(packed) == 0 or (config.drop_last and per_item and len(packed) < step):
                break
            if per_item:
                items += 1
                if items > skip:  # a fast-forward replays index work only
                    batch = self._batch(packed)
                    pos.items = items
                    self.guard.check(self._context)
                    yield batch
                continue
            if items + len(packed) <= skip:
                items += len(packed)
                continue
            batch = self._batch(packed)
            for i in range(max(0, skip - items), len(packed)):
                pos.items = items + i + 1
                yield {k: v[i] for k, v in batch.items()}
            items += len(packed)
            self.guard.check(self._context)
        self.slot.update_pool(pool)
        self.slot.set_peak(self.guard.peak)
        self.pool = None
        self.store.close()

    def _plan(self, run: RunSpec) -> Plan:
        """This epoch's split between the participants: a whole epoch, or the rest of one (elastic resume)."""
        cat, pos = self.catalog, self.position
        assert pos is not None
        if not pos.continues():
            return epoch_plan(cat.shard_dir, cat.shard_rows, run)
        assert pos.origin is not None
        t0 = time.perf_counter()
        remainder = origin_remainder(pos.origin, cat.shard_dir, cat.shard_rows)
        plan = continued_plan(remainder, cat.shard_dir, run, pos.epoch, len(pos.origin["runs"]))
        log.info(
            "epoch %d continued from %d earlier runs: %d entries pooled and %d rows left, planned in %.2fs",
            pos.epoch,
            len(pos.origin["runs"]),
            len(remainder.pooled),
            remainder.rows.positions,
            time.perf_counter() - t0,
        )
        return plan

    def _batch(self, packed: np.ndarray) -> Batch:
        """pool entries -> records (store) -> augmentation -> transform -> tensors."""
        fields = self.store.gather(packed)
        counts = self._counts(packed, fields)
        if self.config.augment is not None:
            fields = self.config.augment.apply(fields, sym_of(packed))
        if self.config.transform is not None:
            fields = self.config.transform(fields)
        if self.prefetching:
            self.counts = counts  # counted when the user takes the batch (show), not when it is made
        else:
            self.slot.count(counts)
        return to_tensors(fields, one_buffer=self.who.in_worker)

    def _counts(self, packed: np.ndarray, fields: dict[str, np.ndarray]) -> BatchCounts:
        """What the statistics count of a batch: examples per directory, distinct shards, and games (with a
        game key; read from the gathered records before the augmentation and the transform change them)."""
        shards = shard_of(packed)
        cat = self.catalog
        per_dir = np.bincount(cat.shard_dir[shards], minlength=cat.num_dirs)
        games, game_max = self.game_key.games(fields) if self.game_key is not None else (0, 0)
        return BatchCounts(per_dir, len(np.unique(shards)), games, game_max)

    def _refill(self, force_check: bool = True) -> None:
        """Top the pool up; ``force_check=False`` (a fast-forward) checks memory only at the guard's interval."""
        pool = self.pool
        assert pool is not None
        t0 = time.perf_counter()
        added = pool.fill()
        self.store.keep_only(pool.live_shards())
        self.slot.update_pool(pool)
        used = self.guard.check(self._context, force=force_check)
        self.slot.set_peak(self.guard.peak)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "refill: +%d entries in %.3fs, pool %d/%d, shards activated %d, memory %.2f GiB, shares %s, %s",
                added,
                time.perf_counter() - t0,
                pool.size,
                pool.capacity,
                pool.activated_shards,
                used / GIB,
                self.slot.shares(self.catalog.weights),
                self.slot.mixing(),
            )

    def _read_ahead(self, shard: int, lo: int, hi: int) -> None:
        """A shard's first rows entered the pool: read its rows ``lo..hi-1`` ahead (cold page cache), log it."""
        self.store.prefetch(shard, lo, hi)
        log.info("activated %s rows %d-%d", self.catalog.describe_shard(shard), lo, hi - 1)

    def _context(self) -> str:
        """mmpool's own share of the memory counted, for the memory report."""
        pool = self.pool
        entries = (
            pool.capacity if pool is not None else participant_pool(self.config.pool_size, None, self.who.workers)[0]
        )
        batch = self.config.batch_buffer_bytes(self.catalog.schema.itemsize)
        return (
            f"mmpool's own memory in this process: pool {entries} entries x {ENTRY_BYTES} B = "
            f"{entries * ENTRY_BYTES / GIB:.3f} GiB, batch buffers ~{batch / GIB:.3f} GiB; "
            f"pool holds {pool.size if pool is not None else 0} entries, shards active "
            f"{pool.activated_shards if pool is not None else 0}; packs mapped {self.store.open_packs} "
            f"({self.store.mapped_bytes / GIB:.2f} GiB of address space, page cache, not counted)"
        )
