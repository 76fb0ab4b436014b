"""StreamingMixedShardDataset: the torch IterableDataset that streams a proportional mix of converted shards.

The dataset is configuration only. Each ``iter(dataset)`` returns a :class:`~mmpool.stream.iterator.StreamIterator`
that owns that iteration's pool, mapped packs, memory guard and position (see ``mmpool/stream/iterator.py`` for the path of
one batch). What is decided when iteration starts, not when the dataset is built:

- rank and world size (from ``torch.distributed`` once the process group exists: Lightning and torchrun build
  datasets before it does);
- the epoch: every new iteration is the next epoch unless ``set_epoch`` chose one. The epoch each participant
  (main process, or DataLoader worker ``i``) starts next lives in shared memory, so forked, spawned and persistent
  workers all agree with each other and with ``set_epoch`` in the main process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mmpool.augment.dihedral import Augmentation
from mmpool.errors import ConfigError, MemoryLimitExceeded
from mmpool.sampling.entries import ENTRY_BYTES, MAX_SYMMETRIES
from mmpool.sampling.plan import ELASTIC_KEYS, MIXES, changes, check_origin, collect
from mmpool.sampling.pool import default_threshold
from mmpool.store.catalog import Catalog, Weights
from mmpool.stream.games import GameKey
from mmpool.stream.iterator import Participant, Position, StreamIterator
from mmpool.stream.memory import GIB, PREFETCH_BATCHES, anon_bytes, batch_buffer_bytes, measure, report
from mmpool.stream.stats import MAX_WORKERS, Stats, StatsBoard

log = logging.getLogger("mmpool")
STATE_VERSION = 2  # 2: shards enter the pool in slices (mmpool 0.3); a version-1 order differs
PROGRESS_KEYS = ("epoch", "start", "items", "worker", "num_workers")
Transform = Callable[[dict[str, np.ndarray]], dict[str, Any]]


class StreamingMixedShardDataset(IterableDataset):
    """Streams every selected position once per epoch (once per symmetry with augmentation), mixed across
    directories in proportion to their weights, from a pool of indices that costs 8 bytes per entry.

    Args:
        data_dirs: converted directories (``mmpool convert``).
        shard_ranges: one range string per directory (``"all"``, ``"0-99"``, ``"100-"``, ``"0-9,20-29"``);
            None selects all shards.
        pool_size: entries in the pool of this rank (split between its DataLoader workers).
        refill_threshold: refill back to ``pool_size`` when the pool drops below this; default 3/4 of the pool.
        max_memory_gb: cap, in GiB, on the anonymous memory of the whole training process and its DataLoader
            workers (everything they hold, not only mmpool's pool and batches).
        enable_augmentation: False shows each position once and never calls ``augmentation`` (validation data);
            ``transform`` still runs.
        max_examples_unaugmented: positions used per epoch (over all ranks), None for all.
        verbose: log activations, refills, shares and memory at INFO level.
        random_seed: seed of the order; None draws a fresh one.
        batch_size: None yields single examples; an int yields whole batches (leading batch dimension).
        augmentation: an object with ``factor`` and ``apply(batch, symmetry_ids)`` (see ``mmpool.augment.dihedral``);
            applied whenever ``enable_augmentation`` is True, also at factor 1.
        transform: a vectorised function of the batch dict (numpy arrays in, numpy arrays or tensors out), run
            on every batch after the augmentation, in training and validation alike.
        weights: ``"shards"`` (selected shards per directory), ``"records"``, or one number per directory.
        rank, world_size: explicit values win; otherwise taken from torch.distributed when iteration starts.
        drop_last: in batch mode, drop each worker's last partial batch.
        num_epochs: epochs one ``iter()`` runs, each with a new order; None runs forever.
        prefetch: read the rows entering the pool ahead, in a background thread (helps a cold page cache).
        prefetch_batches: in batch mode, batches prepared ahead in a background thread while the training step
            runs (0: each batch is made when asked for). They count in the memory reserved for batches.
        max_open_packs: bound on open pack mappings (each holds a file descriptor).
        memory_check_interval: seconds between memory checks (0 checks every batch).
        chunk_size: entries drawn at a time in single-example mode.
        mix: ``"pool"`` draws every batch uniformly from the whole pool (each directory's share holds over
            windows of a few batches, as in a global shuffle); ``"stratified"`` keeps one sub-pool per directory
            and gives every batch each directory's share exactly, up to rounding (``mmpool.sampling.stratified``).
        game_field: a field, or a range of one (``"globalTargetsNC[41:47]"``), that identifies a position's
            game: ``stats()`` then reports distinct games per batch and the most positions of one game in a batch.

    ``state_dict()`` describes the iterator this object created last (in this process: with DataLoader workers,
    each worker's copy describes its own; torchdata's StatefulDataLoader collects them).
    """

    def __init__(
        self,
        data_dirs: Sequence[str | Path] | str | Path,
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
        transform: Transform | None = None,
        weights: Weights = "shards",
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        num_epochs: int | None = 1,
        prefetch: bool = True,
        prefetch_batches: int = PREFETCH_BATCHES,
        max_open_packs: int = 64,
        memory_check_interval: float = 0.5,
        chunk_size: int = 1024,
        mix: str = "pool",
        game_field: str | None = None,
    ) -> None:
        super().__init__()
        if verbose:
            _enable_info_logging()
        _check_int("pool_size", pool_size, 2)
        if refill_threshold is None:
            refill_threshold = default_threshold(pool_size)
        _check_int("refill_threshold", refill_threshold, 1)
        if refill_threshold >= pool_size:
            raise ConfigError(f"refill_threshold={refill_threshold} must be below pool_size={pool_size}")
        for name, value, low in (
            ("batch_size", batch_size, 1),
            ("max_examples_unaugmented", max_examples_unaugmented, 1),
            ("num_epochs", num_epochs, 1),
        ):
            if value is not None:
                _check_int(name, value, low)
        _check_int("chunk_size", chunk_size, 1)
        _check_int("max_open_packs", max_open_packs, 1)
        for name, value in (("rank", rank), ("world_size", world_size)):
            if value is not None:
                _check_int(name, value, 0 if name == "rank" else 1)
        if rank is not None and world_size is not None and rank >= world_size:
            raise ConfigError(f"rank={rank} must be below world_size={world_size}")
        if not _positive(max_memory_gb):
            raise ConfigError(f"max_memory_gb={max_memory_gb!r}: must be a positive number of GiB")
        if not (_positive(memory_check_interval) or memory_check_interval == 0):
            raise ConfigError(f"memory_check_interval={memory_check_interval!r}: must be a number of seconds >= 0")
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform={transform!r}: must be a function of the batch dict")
        self.data_dirs = [str(Path(d)) for d in ([data_dirs] if isinstance(data_dirs, (str, Path)) else data_dirs)]
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
        _check_int("prefetch_batches", prefetch_batches, 0)
        self.prefetch_batches = int(prefetch_batches)
        self.max_open_packs = max_open_packs
        self.memory_check_interval = float(memory_check_interval)
        self.chunk_size = chunk_size
        self.augmentation = augmentation
        self.enable_augmentation = bool(enable_augmentation and augmentation is not None)
        self.transform = transform
        self.factor = _check_augmentation(augmentation, self.catalog) if self.enable_augmentation else 1
        self.random_seed = secrets.randbits(63) if random_seed is None else int(random_seed)
        self._rank, self._world_size = rank, world_size  # None: resolved when iteration starts
        self._inherited: tuple[int, int] | None = None  # rank and world size resolved by the main process
        self._refuse_if_pool_cannot_fit()
        if mix not in MIXES:
            raise ConfigError(f"mix={mix!r}: use one of {', '.join(repr(m) for m in MIXES)}")
        self.mix = mix
        self.game_key = None if game_field is None else GameKey(game_field, self.catalog.schema.field_specs())
        self.board = StatsBoard(self.catalog.num_dirs, game_key=self.game_key is not None)
        # The epoch each participant's next iteration starts: [main process, worker 0, worker 1, ...].
        self._next_epoch = torch.zeros(MAX_WORKERS + 1, dtype=torch.int64).share_memory_()
        self._position: Position | None = None  # of the iterator created last; None before the first
        self._resume: dict[str, Any] | None = None

    # ----- public controls -----

    @property
    def rank(self) -> int:
        """This process's rank as the next iteration will use it (explicit, else torch.distributed's)."""
        return self._rank_and_world(strict=False)[0]

    @property
    def world_size(self) -> int:
        return self._rank_and_world(strict=False)[1]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next ``iter()`` starts at (each epoch has its own order); picks up new shards.

        Optional: without it every new iteration is the next epoch. It reaches persistent DataLoader workers too.
        """
        _check_int("epoch", epoch, 0)
        self._next_epoch.fill_(epoch)
        self._refresh_catalog(epoch)

    def stats(self) -> Stats:
        """Per-directory counts against targets, the mix (worst share error over windows of 10k examples, shards
        and, with ``game_field``, games per batch), shards activated and exhausted, refills, drops, peak memory.

        Works during or after iteration, also with DataLoader workers (they report through shared memory).
        """
        return self.board.read(self.catalog.weights)

    def state_dict(self) -> dict[str, Any]:
        """A small JSON-serialisable state: where the iterator created last is, and a fingerprint of the
        configuration. Before any iteration it describes the start of the next one.

        With DataLoader workers each worker's copy has its own state: save ``StatefulDataLoader.state_dict()``
        (torchdata), which collects them, not the state of the dataset object in the main process.
        """
        if self._position is not None:
            progress = self._position.as_dict()
        else:  # no iteration yet (also a DataLoader worker's state taken before its first item)
            info = get_worker_info()
            epoch = int(self._next_epoch[self._slot_index()])
            progress = Position(epoch, epoch, 0, info.id if info else 0, info.num_workers if info else 0).as_dict()
        config = self._config()
        return {
            "version": STATE_VERSION,
            **progress,
            "shards_upto": _last_numbers(self.catalog),
            "config": config,
            "fingerprint": _fingerprint(config),
        }

    def load_state_dict(self, state: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Make the next iteration continue right after the item the state was taken at.

        ``state`` is the state this rank (or DataLoader worker) saved, or, to continue on another number of ranks
        or workers or with other ``weights`` (an elastic resume), the list of the states of every rank and worker
        of the saved run (``mmpool.gather_states``), the same list on every rank of the new run.

        The saved position takes precedence over ``set_epoch`` for that iteration. A state saved after an
        iteration ended leaves nothing to continue: the next iteration starts the epoch after it, except in a
        DataLoader worker, where it means that this worker has nothing left to yield. Rank and world size are
        checked when iteration starts (the process group may not exist yet).
        """
        if isinstance(state, list):
            self._load_states(state)
            return
        _check_state(state)
        if "origin" in state:
            check_origin(state["origin"])
        _config_diff(state["config"], self._config(), skip=("rank", "world_size"))
        info = get_worker_info()
        if info is not None:
            _check_workers(state, info.id, info.num_workers)
        finished = self.num_epochs is not None and state["epoch"] >= state["start"] + self.num_epochs
        if finished and info is None:
            self._resume, self._position = None, None
            self._next_epoch[0] = state["epoch"]
            return
        self._resume = dict(state)
        epoch, start, items, worker, workers = (int(state[k]) for k in PROGRESS_KEYS)
        self._position = Position(epoch, start, items, worker, workers, state.get("origin"))

    def _load_states(self, states: list[dict[str, Any]]) -> None:
        """An elastic resume: continue the epoch of a run of any shape from the states of all its participants."""
        for s in states:
            _check_state(s)
        position = collect(states)
        _config_diff(states[0]["config"], self._config(), skip=ELASTIC_KEYS)
        epoch, start = position["epoch"], position["start"]
        if self.num_epochs is not None and epoch >= start + self.num_epochs:  # that run's iteration had ended
            self._resume, self._position = None, None
            self._next_epoch[0] = epoch
            return
        self._resume = {"epoch": epoch, "start": start, "shards_upto": states[0]["shards_upto"], **position}
        self._position = Position(epoch, start, 0, 0, 0, position["origin"])

    # ----- iteration -----

    def __iter__(self) -> StreamIterator:
        info = get_worker_info()
        rank, world = self._rank_and_world(strict=True)
        who = Participant(rank, world, info.id if info else 0, info.num_workers if info else 1, info is not None)
        # Between the epochs of one iteration the main process reads new shards; DataLoader workers would each read
        # the manifests at their own moment and might see different shard lists: there new shards join at set_epoch.
        refresh = self._refresh_catalog if info is None else None
        slot = self.board.slot(who.worker if info else None)
        return StreamIterator(self, who, lambda: self._begin(who), slot, refresh)

    def _begin(self, who: Participant) -> tuple[Catalog, Position]:
        """The catalog and start position of an iteration that yields its first item now: a loaded state, else the
        next epoch of this participant (main process or DataLoader worker)."""
        slot = 0 if not who.in_worker else 1 + who.worker % MAX_WORKERS
        resume, self._resume = self._resume, None
        catalog = self.catalog
        if resume is not None and "config" not in resume:  # an elastic resume: any rank and worker of any shape
            position = Position(resume["epoch"], resume["start"], 0, who.worker, who.workers if who.in_worker else 0)
            position.origin = resume["origin"]
            catalog = Catalog(self.data_dirs, self.shard_ranges, self.weights, upto=resume["shards_upto"])
        elif resume is not None:
            _check_workers(resume, who.worker, who.workers if who.in_worker else 0)
            saved = resume["config"]
            if (saved["rank"], saved["world_size"]) != (who.rank, who.world_size):
                raise ConfigError(
                    f"the state was saved by rank {saved['rank']} of world_size={saved['world_size']}, it is loaded "
                    f"by rank {who.rank} of world_size={who.world_size}; resume on the same ranks, or load the list "
                    f"of every rank's states (mmpool.gather_states) to continue on {who.world_size}"
                )
            position = Position(resume["epoch"], resume["start"], resume["items"], who.worker, resume["num_workers"])
            position.origin = resume.get("origin")
            catalog = Catalog(self.data_dirs, self.shard_ranges, self.weights, upto=resume["shards_upto"])
        else:
            epoch = int(self._next_epoch[slot])
            if not who.in_worker and who.world_size == 1 and self._position is not None:
                catalog = self._refresh_catalog(epoch)  # new shards join at the next epoch
            position = Position(epoch, epoch, 0, who.worker, who.workers if who.in_worker else 0)
        if self.num_epochs is not None:
            self._next_epoch[slot] = position.start + self.num_epochs
        self._position = position
        return catalog, position

    def batch_buffer_bytes(self) -> int:
        """Bytes of the gathered batch buffers one gathering process may hold at once."""
        ahead = self.prefetch_batches if self.batch_size is not None else 0
        return batch_buffer_bytes(self.batch_size or self.chunk_size, self.catalog.schema.itemsize, ahead)

    # ----- configuration -----

    def _slot_index(self) -> int:
        info = get_worker_info()
        return 0 if info is None else 1 + info.id % MAX_WORKERS

    def _rank_and_world(self, strict: bool) -> tuple[int, int]:
        """Explicit arguments win; then torch.distributed's group; then what the main process resolved before it
        sent this copy to a DataLoader worker. ``strict`` refuses a launcher's WORLD_SIZE > 1 without a group."""
        rank, world = self._rank, self._world_size
        if rank is not None and world is not None:
            return rank, world
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            found = dist.get_rank(), dist.get_world_size()
        elif self._inherited is not None:
            found = self._inherited
        else:
            env = os.environ.get("WORLD_SIZE", "1")
            if strict and env.isdigit() and int(env) > 1:
                raise ConfigError(
                    f"WORLD_SIZE={env} says this is one of several ranks, but torch.distributed has no process "
                    "group yet, so every rank would stream every record. Start iterating after "
                    "torch.distributed.init_process_group() (Lightning: inside fit, e.g. in train_dataloader()), or "
                    "pass rank= and world_size= to StreamingMixedShardDataset"
                )
            found = 0, 1
        rank = found[0] if rank is None else rank
        world = found[1] if world is None else world
        if rank >= world:
            raise ConfigError(f"rank={rank} must be below world_size={world}")
        return rank, world

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for a spawned DataLoader worker, where torch.distributed is not initialised: carry the rank and
        # world size the main process sees.
        state = self.__dict__.copy()
        state["_inherited"] = self._rank_and_world(strict=False)
        return state

    def _config(self) -> dict[str, Any]:
        """What a saved state must match to be resumed."""
        rank, world = self._rank_and_world(strict=False)
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
            "world_size": world,
            "rank": rank,
            "mix": self.mix,
        }

    def _refuse_if_pool_cannot_fit(self) -> None:
        cap = int(self.max_memory_gb * GIB)
        pool = self.pool_size * ENTRY_BYTES
        batch = self.batch_buffer_bytes()
        now = anon_bytes()
        own = (
            f"mmpool's own memory: pool {self.pool_size} entries x {ENTRY_BYTES} B = {pool / GIB:.3f} GiB, "
            f"batch buffers ~{batch / GIB:.3f} GiB"
        )
        if now > cap:
            raise MemoryLimitExceeded(report(cap, measure(), f"before building any pool; {own}"))
        if now + pool + batch > cap:
            fits = (cap - now - batch) // ENTRY_BYTES
            raise ConfigError(
                f"pool_size={self.pool_size} needs {pool / GIB:.3f} GiB for its indices; with {now / GIB:.2f} GiB "
                f"already used by this process (the cap counts the whole training process) it cannot fit under "
                f"max_memory_gb={self.max_memory_gb}. The largest pool that fits is about {max(0, fits)}; lower "
                "pool_size or raise max_memory_gb"
            )

    def _refresh_catalog(self, epoch: int, current: Catalog | None = None) -> Catalog:
        """Pick up shards converted since ``current`` (default: the dataset's catalog) was read; only ever between
        epochs; ``epoch`` is the next."""
        upto = None
        rank, world = self._rank_and_world(strict=False)
        dist = torch.distributed
        if world > 1 and dist.is_available() and dist.is_initialized():
            # Every rank must see the same shards, or they split them differently and yield different batch
            # counts (a DDP hang): rank 0 reads the manifests and tells the others how far to read.
            fresh = Catalog(self.data_dirs, self.shard_ranges, self.weights) if rank == 0 else None
            message = [_last_numbers(fresh) if fresh is not None else None]
            dist.broadcast_object_list(message, src=0)
            upto = message[0]
        fresh = Catalog(self.data_dirs, self.shard_ranges, self.weights, upto=upto)
        old = self.catalog if current is None else current
        if fresh.num_shards == old.num_shards and np.array_equal(fresh.shard_rows, old.shard_rows):
            self.catalog = old
            return old
        for d in range(fresh.num_dirs):
            new = set(fresh.shard_number[fresh.shard_dir == d].tolist())
            new -= set(old.shard_number[old.shard_dir == d].tolist())
            if new:
                log.info(
                    "%s: %d new shards (%s) join from epoch %d; weights now %s",
                    fresh.dirs[d],
                    len(new),
                    ",".join(map(str, sorted(new)[:10])),
                    epoch,
                    np.round(fresh.weights, 4).tolist(),
                )
        self.catalog = fresh
        return fresh


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _config_diff(saved: dict[str, Any], mine: dict[str, Any], skip: Sequence[str] = ()) -> None:
    """Raise a ConfigError naming every setting in which a saved state's configuration differs from this one."""
    what = changes(saved, mine, skip)
    if what:
        hint = ""
        if not changes(saved, mine, ELASTIC_KEYS) and "weights" not in skip:
            hint = "; to change the weights, load the list of every rank's states (mmpool.gather_states)"
        elif "weights" in skip:
            hint = "; an elastic resume may change only the number of ranks and workers and the weights"
        raise ConfigError(f"the state was saved with another configuration ({what}){hint}")


def _check_state(state: Any) -> None:
    """A ConfigError unless ``state`` is an unedited mmpool state."""
    keys = ("version", *PROGRESS_KEYS, "shards_upto", "config", "fingerprint")
    if isinstance(state, dict) and state.get("version") == 1:
        raise ConfigError(
            "the state was saved by mmpool 0.2 (state version 1), whose order differs from this version's (shards "
            "now enter the pool in slices): resume it with mmpool 0.2, or start this epoch anew (set_epoch)"
        )
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or any(k not in state for k in keys):
        raise ConfigError(f"not an mmpool state (version {STATE_VERSION}): {str(state)[:200]}")
    if _fingerprint(state["config"]) != state["fingerprint"]:
        raise ConfigError(
            f"the state's configuration does not match its fingerprint {state['fingerprint']}: "
            "it was edited or corrupted; use a state saved by StreamingMixedShardDataset.state_dict"
        )


def _last_numbers(catalog: Catalog) -> list[int]:
    """The highest selected shard number of every directory (what a resume or another rank should read up to)."""
    return [int(catalog.shard_number[catalog.shard_dir == d].max()) for d in range(catalog.num_dirs)]


def _check_workers(state: dict[str, Any], worker: int, num_workers: int) -> None:
    """A state is resumed by the same DataLoader worker of the same number of workers (0 and 1 give one stream)."""
    if max(1, state["num_workers"]) != max(1, num_workers) or state["worker"] != worker:
        raise ConfigError(
            f"num_workers: the state was saved by worker {state['worker']} of num_workers={state['num_workers']}, "
            f"it is loaded into worker {worker} of num_workers={num_workers}; resume with the same number of workers, "
            "or load the list of every rank's and worker's states (mmpool.gather_states) to continue with another"
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


def _fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _enable_info_logging() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s mmpool %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
