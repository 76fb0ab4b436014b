"""StreamingMixedShardDataset: the torch IterableDataset that streams a proportional mix of converted shards.

Follow one batch: ``IndexPool.draw`` hands out packed ``(shard, row, symmetry)`` entries; ``ShardStore.gather_rows``
copies their records out of the mapped packs; the augmentation transforms them by symmetry id; the fields become
torch tensors. Everything before the gather is index work only, which is why resuming is cheap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mmpool.augment import Augmentation
from mmpool.catalog import Catalog, Weights
from mmpool.errors import ConfigError
from mmpool.format import MANIFEST_NAME
from mmpool.memory import GB, MemoryGuard, anon_bytes
from mmpool.packing import MAX_SYMMETRIES, row_of, shard_of, sym_of
from mmpool.pool import IndexPool
from mmpool.schedule import plan_epoch
from mmpool.stats import Stats, StatsBoard
from mmpool.store import ShardStore

log = logging.getLogger("mmpool")
ENTRY_BYTES = 8  # one uint64 per pool entry
STATE_VERSION = 1
PROGRESS_KEYS = ("epoch", "start", "items", "worker", "num_workers")


class StreamingMixedShardDataset(IterableDataset):
    """Streams every selected position once per epoch (once per symmetry with augmentation), mixed across
    directories in proportion to their weights, from a pool of indices that costs 8 bytes per entry.

    Args:
        data_dirs: converted directories (``mmpool convert``).
        shard_ranges: one range string per directory (``"all"``, ``"0-99"``, ``"100-"``, ``"0-9,20-29"``);
            None selects all shards.
        pool_size: entries in the pool of this rank (split between its DataLoader workers).
        refill_threshold: refill back to ``pool_size`` when the pool drops below this; default 3/4 of the pool.
        max_memory_gb: cap on the anonymous memory of this process and its DataLoader workers.
        enable_augmentation: False shows each position once, whatever ``augmentation`` is (validation data).
        max_examples_unaugmented: positions used per epoch (over all ranks), None for all.
        verbose: log activations, refills, shares and memory at INFO level.
        random_seed: seed of the order; None draws a fresh one.
        batch_size: None yields single examples; an int yields whole batches (leading batch dimension).
        augmentation: an object with ``factor`` and ``apply(batch, symmetry_ids)`` (see ``mmpool.augment``).
        weights: ``"shards"`` (selected shards per directory), ``"records"``, or one number per directory.
        rank, world_size: default to torch.distributed's when it is initialised, else 0 and 1.
        drop_last: in batch mode, drop each worker's last partial batch.
        num_epochs: epochs one ``iter()`` runs, each with a new order; None runs forever.
        prefetch: ask the kernel to read newly activated shards ahead (helps a cold page cache).
        max_open_packs: bound on open pack mappings (each holds a file descriptor).
        memory_check_interval: seconds between memory checks.
        chunk_size: entries drawn at a time in single-example mode.
    """

    def __init__(
        self,
        data_dirs: Sequence[str | Path],
        shard_ranges: Sequence[str] | str | None = None,
        pool_size: int = 2_000_000,
        refill_threshold: int | None = None,
        max_memory_gb: float = 5.0,
        enable_augmentation: bool = True,
        max_examples_unaugmented: int | None = None,
        verbose: bool = False,
        random_seed: int | None = None,
        batch_size: int | None = None,
        *,
        augmentation: Augmentation | None = None,
        weights: Weights = "shards",
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        num_epochs: int | None = 1,
        prefetch: bool = True,
        max_open_packs: int = 64,
        memory_check_interval: float = 0.5,
        chunk_size: int = 1024,
    ) -> None:
        super().__init__()
        if verbose:
            _enable_info_logging()
        _check_int("pool_size", pool_size, 2)
        if refill_threshold is None:
            refill_threshold = max(1, pool_size * 3 // 4)
        _check_int("refill_threshold", refill_threshold, 1)
        if refill_threshold >= pool_size:
            raise ConfigError(f"refill_threshold={refill_threshold} must be below pool_size={pool_size}")
        if batch_size is not None:
            _check_int("batch_size", batch_size, 1)
        if max_examples_unaugmented is not None:
            _check_int("max_examples_unaugmented", max_examples_unaugmented, 1)
        if num_epochs is not None:
            _check_int("num_epochs", num_epochs, 1)
        _check_int("chunk_size", chunk_size, 1)
        if not (isinstance(max_memory_gb, (int, float)) and math.isfinite(max_memory_gb) and max_memory_gb > 0):
            raise ConfigError(f"max_memory_gb={max_memory_gb!r}: must be a positive number of GB")
        self.data_dirs = [str(Path(d)) for d in ([data_dirs] if isinstance(data_dirs, (str, Path)) else data_dirs)]
        for d in self.data_dirs:  # a wrong directory is a configuration error (a broken manifest: ShardError)
            if not (Path(d) / MANIFEST_NAME).is_file():
                what = "does not exist" if not Path(d).exists() else f"has no {MANIFEST_NAME}"
                raise ConfigError(
                    f"data_dirs: {d} {what}: it is not a converted directory; "
                    f"convert its shards first: mmpool convert SRC {d}"
                )
        self.shard_ranges = shard_ranges
        self.weights = weights
        self.catalog = Catalog(self.data_dirs, shard_ranges, weights)
        self.pool_size = pool_size
        self.refill_threshold = refill_threshold
        self.max_memory_gb = float(max_memory_gb)
        self.max_examples_unaugmented = max_examples_unaugmented
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.num_epochs = num_epochs
        self.prefetch = prefetch
        self.max_open_packs = max_open_packs
        self.memory_check_interval = memory_check_interval
        self.chunk_size = chunk_size
        self.augmentation = augmentation
        self.factor = 1
        if augmentation is not None and enable_augmentation:
            self.factor = _check_augmentation(augmentation, self.catalog)
        self.random_seed = int(np.random.SeedSequence().entropy) if random_seed is None else int(random_seed)
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.epoch = 0
        self._refuse_if_pool_cannot_fit()
        self.store = ShardStore(self.catalog, max_open_packs)
        self.board = StatsBoard(self.catalog.num_dirs)
        self._progress: dict[str, Any] | None = None  # where the running iteration is; None before the first
        self._resume: dict[str, Any] | None = None

    # ----- public controls -----

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next ``iter()`` starts at (each epoch has its own order); picks up new shards."""
        _check_int("epoch", epoch, 0)
        self.epoch = epoch
        self._refresh_catalog()

    def stats(self) -> Stats:
        """Per-directory counts against targets, shards activated and exhausted, refills, drops, peak memory.

        Works during or after iteration, also with DataLoader workers (they report through shared memory).
        """
        return self.board.read(self.catalog.weights)

    def state_dict(self) -> dict[str, Any]:
        """A small JSON-serialisable state: where this iterator is, and a fingerprint of the configuration.

        With DataLoader workers each worker's copy has its own state: save ``StatefulDataLoader.state_dict()``
        (torchdata), which collects them, not the state of the dataset object in the main process.
        """
        progress = self._progress
        if progress is None:  # no iteration yet (also a DataLoader worker's state taken before its first item)
            progress = _position(self.epoch, self.epoch, 0, get_worker_info())
        config = self._config()
        return {
            "version": STATE_VERSION,
            **progress,
            "shards_upto": _last_numbers(self.catalog),
            "config": config,
            "fingerprint": _fingerprint(config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next iteration continue right after the item the state was taken at.

        The saved position takes precedence over ``set_epoch`` for that iteration. A state saved after an
        iteration ended leaves nothing to continue: the next iteration starts afresh at the epoch ``set_epoch``
        selects (as torchdata's StatefulDataLoader does with a finished state), except in a DataLoader worker,
        where it means that this worker has nothing left to yield.
        """
        keys = ("version", *PROGRESS_KEYS, "shards_upto", "config", "fingerprint")
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or any(k not in state for k in keys):
            raise ConfigError(f"not an mmpool state (version {STATE_VERSION}): {str(state)[:200]}")
        if _fingerprint(state["config"]) != state["fingerprint"]:
            raise ConfigError(
                f"the state's configuration does not match its fingerprint {state['fingerprint']}: "
                "it was edited or corrupted; use a state saved by StreamingMixedShardDataset.state_dict"
            )
        mine = self._config()
        diff = [k for k in sorted(set(mine) | set(state["config"])) if mine.get(k) != state["config"].get(k)]
        if diff:
            what = "; ".join(f"{k}: saved {state['config'].get(k)!r}, now {mine.get(k)!r}" for k in diff)
            raise ConfigError(f"the state was saved with another configuration ({what})")
        info = get_worker_info()
        if info is not None:
            _check_workers(state, info.id, info.num_workers)
        finished = self.num_epochs is not None and state["epoch"] >= state["start"] + self.num_epochs
        if finished and info is None:
            self._resume, self._progress = None, None
            return
        self._resume = dict(state)
        self._progress = {k: state[k] for k in PROGRESS_KEYS}

    # ----- iteration -----

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        resume, self._resume = self._resume, None
        epoch, skip = self.epoch, 0
        start = epoch
        if resume is not None:
            _check_workers(resume, worker, workers if info is not None else 0)
            epoch, skip, start = resume["epoch"], resume["items"], resume["start"]
            self._use_catalog(Catalog(self.data_dirs, self.shard_ranges, self.weights, upto=resume["shards_upto"]))
        guard = MemoryGuard(int(self.max_memory_gb * GB), self.memory_check_interval, in_worker=info is not None)
        slot = self.board.slot(worker if info is not None else None)
        first = epoch  # the first epoch of this iter(); ``start`` is that of the iteration it continues
        while self.num_epochs is None or epoch < start + self.num_epochs:
            if epoch != first and info is None:
                # In DataLoader workers each worker would read the manifests at its own moment and might see a
                # different shard list: there new shards join at the next set_epoch(), decided in the main process.
                self._refresh_catalog(epoch)
            self._progress = _position(epoch, start, skip, info)
            yield from self._epoch(epoch, worker, workers, skip, guard, slot)
            epoch, skip = epoch + 1, 0
            self._progress = _position(epoch, start, 0, info)

    def _epoch(
        self, epoch: int, worker: int, workers: int, skip: int, guard: MemoryGuard, slot: Any
    ) -> Iterator[dict[str, torch.Tensor]]:
        cat = self.catalog
        participants = self.world_size * workers
        me = self.rank * workers + worker
        plans, quota = plan_epoch(
            cat.shard_dir, cat.shard_rows, cat.weights, participants, self.max_examples_unaugmented
        )
        total = (
            int(cat.shard_rows.sum())
            if self.max_examples_unaugmented is None
            else min(int(cat.shard_rows.sum()), self.max_examples_unaugmented)
        )
        dropped = total - quota * participants
        if dropped and me == 0:
            log.warning(
                "epoch %d: dropping %d of %d positions so that all %d ranks x %d workers yield the same "
                "number of examples",
                epoch,
                dropped,
                total,
                self.world_size,
                workers,
            )
        rng = np.random.default_rng(np.random.SeedSequence([self.random_seed, epoch, me, participants]))
        capacity = -(-self.pool_size // workers)
        threshold = -(-self.refill_threshold // workers)
        on_activate = self._activated
        # A fast-forward reads no records, not even ahead: the rows still pooled are read ahead when it ends.
        pool = IndexPool(
            plans[me], capacity, threshold, self.factor, rng, cat.num_shards, None if skip else on_activate
        )
        pack_last = _last_segment_per_pack(cat.shard_pack[plans[me].shard], len(cat.packs))
        slot.start_epoch(epoch, dropped if me == 0 else 0)
        step = self.batch_size or self.chunk_size
        t0 = time.perf_counter()
        self._refill(pool, pack_last, guard, slot)
        log.info(
            "epoch %d: pool of %d entries built in %.2fs (participant %d of %d)",
            epoch,
            pool.size,
            time.perf_counter() - t0,
            me,
            participants,
        )
        items = 0
        while True:
            packed = pool.draw(step)
            while len(packed) < step and pool.data_left:  # the pool held less than a batch: refill, complete it
                self._refill(pool, pack_last, guard, slot)
                packed = np.concatenate([packed, pool.draw(step - len(packed))])
            if (
                pool.on_activate is None
                and on_activate is not None
                and items + (1 if self.batch_size is not None else len(packed)) > skip
            ):
                _read_ahead_pooled(pool, on_activate)
            if pool.size < pool.threshold and pool.data_left:
                self._refill(pool, pack_last, guard, slot, force_check=items >= skip)
            if len(packed) == 0 or (self.drop_last and self.batch_size and len(packed) < step):
                break
            if self.batch_size is not None:
                if items >= skip:  # fast-forward replays index work only
                    batch = self._materialise(packed, slot)
                    items += 1
                    self._progress["items"] = items
                    guard.check(lambda: self._context(pool))
                    yield batch
                else:
                    items += 1
                continue
            if items + len(packed) <= skip:
                items += len(packed)
                continue
            batch = self._materialise(packed, slot)
            for i in range(max(0, skip - items), len(packed)):
                self._progress["items"] = items + i + 1
                yield {k: v[i] for k, v in batch.items()}
            items += len(packed)
            guard.check(lambda: self._context(pool))
        slot.update_pool(pool)
        slot.set_peak(guard.peak)
        self.store.close()

    def _materialise(self, packed: np.ndarray, slot: Any) -> dict[str, torch.Tensor]:
        shards = shard_of(packed)
        records = self.store.gather_rows(shards, row_of(packed))
        fields = {name: records[name] for name in records.dtype.names}
        if self.factor > 1:
            fields = self.augmentation.apply(fields, sym_of(packed))
        slot.count(np.bincount(self.catalog.shard_dir[shards], minlength=self.catalog.num_dirs))
        if get_worker_info() is None:
            return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fields.items()}
        return _as_tensors(fields)

    def _refill(
        self, pool: IndexPool, pack_last: np.ndarray, guard: MemoryGuard, slot: Any, force_check: bool = True
    ) -> None:
        """Top the pool up; ``force_check=False`` (a fast-forward) checks memory only at the guard's interval."""
        t0 = time.perf_counter()
        added = pool.fill()
        # A pack none of whose rows can be drawn again is unmapped.
        for p in self.store.mapped_packs():
            if pack_last[p] < pool.seg and pool.outstanding[self.catalog.shard_pack == p].sum() == 0:
                self.store.release(p)
        slot.update_pool(pool)
        used = guard.check(self._context(pool), force=force_check)
        slot.set_peak(guard.peak)
        if log.isEnabledFor(logging.INFO):
            shares = slot.shares(self.catalog.weights)
            log.info(
                "refill: +%d entries in %.3fs, pool %d/%d, shards activated %d, memory %.2f GB, shares %s",
                added,
                time.perf_counter() - t0,
                pool.size,
                pool.capacity,
                pool.activated_shards,
                used / GB,
                shares,
            )

    def _activated(self, shard: int, lo: int, hi: int) -> None:
        """Rows ``lo..hi-1`` of a shard entered the pool: read them ahead (cold page cache) and log it."""
        if self.prefetch:
            self.store.prefetch(shard, lo, hi)
        log.info("activated %s rows %d-%d", self.catalog.describe_shard(shard), lo, hi - 1)

    def _context(self, pool: IndexPool) -> str:
        return (
            f"pool: {pool.size} entries of {pool.capacity} ({pool.capacity * ENTRY_BYTES / GB:.3f} GB); "
            f"shards active {pool.activated_shards}; packs mapped {self.store.open_packs} "
            f"({self.store.mapped_bytes / GB:.2f} GB of address space)"
        )

    # ----- configuration -----

    def _config(self) -> dict[str, Any]:
        """What a saved state must match to be resumed."""
        return {
            "data_dirs": self.data_dirs,
            # Plain lists and ints, so that a state compares equal after a JSON round trip.
            "shard_ranges": self.shard_ranges
            if self.shard_ranges is None or isinstance(self.shard_ranges, str)
            else [str(r) for r in self.shard_ranges],
            "weights": self.weights if isinstance(self.weights, str) else [float(w) for w in self.weights],
            "random_seed": self.random_seed,
            "pool_size": int(self.pool_size),
            "refill_threshold": int(self.refill_threshold),
            "batch_size": None if self.batch_size is None else int(self.batch_size),
            "chunk_size": int(self.chunk_size),
            "drop_last": self.drop_last,
            "factor": self.factor,
            "max_examples_unaugmented": None
            if self.max_examples_unaugmented is None
            else int(self.max_examples_unaugmented),
            "world_size": self.world_size,
            "rank": self.rank,
        }

    def _refuse_if_pool_cannot_fit(self) -> None:
        cap = int(self.max_memory_gb * GB)
        pool = self.pool_size * ENTRY_BYTES
        batch = 4 * (self.batch_size or self.chunk_size) * self.catalog.schema.itemsize
        now = anon_bytes()
        if now + pool + batch > cap:
            fits = max(0, (cap - now - batch) // ENTRY_BYTES)
            raise ConfigError(
                f"pool_size={self.pool_size} needs {pool / GB:.2f} GB for its indices; with {now / GB:.2f} GB "
                f"already used by this process it cannot fit under max_memory_gb={self.max_memory_gb}. "
                f"The largest pool that fits is about {fits}; lower pool_size or raise max_memory_gb"
            )

    def _refresh_catalog(self, epoch: int | None = None) -> None:
        """Pick up shards converted since the catalog was read (only ever between epochs); ``epoch`` is the next."""
        upto = None
        dist = torch.distributed
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            # Every rank must see the same shards, or they split them differently and yield different batch
            # counts (a DDP hang): rank 0 reads the manifests and tells the others how far to read.
            fresh = Catalog(self.data_dirs, self.shard_ranges, self.weights) if self.rank == 0 else None
            message = [_last_numbers(fresh) if fresh is not None else None]
            dist.broadcast_object_list(message, src=0)
            upto = message[0]
        fresh = Catalog(self.data_dirs, self.shard_ranges, self.weights, upto=upto)
        if fresh.num_shards != self.catalog.num_shards or not np.array_equal(fresh.shard_rows, self.catalog.shard_rows):
            for d in range(fresh.num_dirs):
                new = set(fresh.shard_number[fresh.shard_dir == d].tolist())
                new -= set(self.catalog.shard_number[self.catalog.shard_dir == d].tolist())
                if new:
                    log.info(
                        "%s: %d new shards (%s) join from epoch %d; weights now %s",
                        fresh.dirs[d],
                        len(new),
                        ",".join(map(str, sorted(new)[:10])),
                        self.epoch if epoch is None else epoch,
                        np.round(fresh.weights, 4).tolist(),
                    )
            self._use_catalog(fresh)

    def _use_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.store.close()
        self.store = ShardStore(catalog, self.max_open_packs)


def _position(epoch: int, start: int, items: int, info: Any) -> dict[str, int]:
    """Where an iterator is (the PROGRESS_KEYS of a state); ``info`` is the DataLoader worker info or None."""
    return {
        "epoch": epoch,
        "start": start,
        "items": items,
        "worker": info.id if info is not None else 0,
        "num_workers": info.num_workers if info is not None else 0,
    }


def _last_numbers(catalog: Catalog) -> list[int]:
    """The highest selected shard number of every directory (what a resume or another rank should read up to)."""
    return [int(catalog.shard_number[catalog.shard_dir == d].max()) for d in range(catalog.num_dirs)]


def _read_ahead_pooled(pool: IndexPool, on_activate: Any) -> None:
    """End of a fast-forward: read ahead what an uninterrupted stream would have read ahead lately, the most
    recently activated rows of the segments still pooled, about a pool's worth (not every shard with an entry left)."""
    pool.on_activate = on_activate
    segs = pool.segments
    started = pool.seg + int(pool.data_left and pool.row > int(segs.lo[pool.seg]))
    budget = pool.capacity // pool.factor
    for i in np.flatnonzero(pool.outstanding[segs.shard[:started]] > 0)[::-1]:
        if budget <= 0:
            break
        lo, hi = int(segs.lo[i]), int(segs.hi[i]) if i < pool.seg else pool.row
        on_activate(int(segs.shard[i]), max(lo, hi - budget), hi)
        budget -= hi - lo


def _as_tensors(fields: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Contiguous copies of the fields as torch tensors that are views of ONE buffer (used in DataLoader workers).

    A worker hands each storage to the main process through a file-descriptor handshake of its own, the largest
    per-batch cost there: one storage per batch instead of one per field makes a worker several times faster.
    In the main process the plain per-field copies are cheaper (fewer torch calls).
    """
    offsets, size = [], 0
    for v in fields.values():
        size = -(-size // 64) * 64  # every field starts 64-byte aligned
        offsets.append(size)
        size += v.nbytes
    raw = np.empty(-(-size // 64) * 64, dtype=np.uint8)
    buf = torch.from_numpy(raw)
    typed: dict[torch.dtype, torch.Tensor] = {}  # the whole buffer viewed as each dtype needed
    out = {}
    for (name, v), at in zip(fields.items(), offsets):
        np.copyto(raw[at : at + v.nbytes].view(v.dtype).reshape(v.shape), v)
        dtype = _torch_dtype(v.dtype)
        whole = typed.get(dtype)
        if whole is None:
            whole = typed[dtype] = buf.view(dtype)
        out[name] = whole.as_strided(v.shape, _contiguous_strides(v.shape), at // v.itemsize)
    return out


def _contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return strides[::-1]


_TORCH_DTYPES: dict[np.dtype, torch.dtype] = {}


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    found = _TORCH_DTYPES.get(dtype)
    if found is None:
        found = _TORCH_DTYPES[dtype] = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return found


def _last_segment_per_pack(seg_packs: np.ndarray, num_packs: int) -> np.ndarray:
    """For each pack, the index of the last segment that reads it (-1 if none), to know when it can be unmapped."""
    last = np.full(num_packs, -1, dtype=np.int64)
    last[seg_packs] = np.arange(len(seg_packs))  # later segments overwrite earlier ones
    return last


def _check_workers(state: dict[str, Any], worker: int, num_workers: int) -> None:
    """A state is resumed by the same DataLoader worker of the same number of workers (0 and 1 give one stream)."""
    if max(1, state["num_workers"]) != max(1, num_workers) or state["worker"] != worker:
        raise ConfigError(
            f"num_workers: the state was saved by worker {state['worker']} of num_workers={state['num_workers']}, "
            f"it is loaded into worker {worker} of num_workers={num_workers}; resume with the same number of workers"
        )


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}={value!r}: must be an integer >= {minimum}")


def _check_augmentation(aug: Any, catalog: Catalog) -> int:
    factor = getattr(aug, "factor", None)
    if not callable(getattr(aug, "apply", None)) or not isinstance(factor, (int, np.integer)):
        raise ConfigError(f"augmentation {aug!r} needs an integer 'factor' and an 'apply(batch, symmetry_ids)' method")
    if not 1 <= factor <= MAX_SYMMETRIES:
        raise ConfigError(f"augmentation factor {factor}: must be between 1 and {MAX_SYMMETRIES}")
    if hasattr(aug, "validate"):
        aug.validate(catalog.schema.field_specs())
    return int(factor)


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    dist = torch.distributed
    live = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if live else 0
    if world_size is None:
        world_size = dist.get_world_size() if live else 1
    _check_int("world_size", world_size, 1)
    _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ConfigError(f"rank={rank} must be below world_size={world_size}")
    return int(rank), int(world_size)


def _fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _enable_info_logging() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s mmpool %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
