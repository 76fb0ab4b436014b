"""StreamingMixedShardDataset: the torch IterableDataset that streams a proportional mix of converted shards.

The dataset is configuration only (a ``StreamConfig``, checked once). Each ``iter(dataset)`` returns a :class:`~mmpool.stream.iterator.StreamIterator`
that owns that iteration's pool, mapped packs, memory guard and position (see ``mmpool/stream/iterator.py`` for the path of
one batch). What is decided when iteration starts, not when the dataset is built:

- rank and world size (from ``torch.distributed`` once the process group exists: Lightning and torchrun build
  datasets before it does);
- the epoch: every new iteration is the next epoch unless ``set_epoch`` chose one. The epoch each participant
  (main process, or DataLoader worker ``i``) starts next lives in shared memory, so forked, spawned and persistent
  workers all agree with each other and with ``set_epoch`` in the main process.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from mmpool.augment.dihedral import Augmentation
from mmpool.config import PREFETCH_BATCHES, StreamConfig, Transform
from mmpool.errors import ConfigError, check_int
from mmpool.sampling.remainder import ELASTIC_KEYS, check_origin, collect
from mmpool.sampling.schedule import Weights
from mmpool.store.catalog import Catalog
from mmpool.stream.epochs import EpochTable
from mmpool.stream.games import GameKey
from mmpool.stream.iterator import StreamIterator
from mmpool.stream.memory import refuse_if_pool_cannot_fit
from mmpool.stream.resume import PROGRESS_KEYS, Position, check_config, check_state, check_workers, make_state
from mmpool.stream.stats import Stats, StatsBoard
from mmpool.stream.world import Participant, last_numbers, open_catalog, refresh_catalog, resolve_rank

log = logging.getLogger("mmpool")


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
        self.config = StreamConfig(
            data_dirs=tuple(str(Path(d)) for d in ([data_dirs] if isinstance(data_dirs, (str, Path)) else data_dirs)),
            shard_ranges=shard_ranges,
            pool_size=pool_size,
            refill_threshold=refill_threshold,
            max_memory_gb=max_memory_gb,
            enable_augmentation=bool(enable_augmentation and augmentation is not None),
            max_examples_unaugmented=max_examples_unaugmented,
            verbose=verbose,
            random_seed=random_seed,
            batch_size=batch_size,
            augmentation=augmentation,
            transform=transform,
            weights=weights,
            rank=rank,
            world_size=world_size,
            drop_last=drop_last,
            num_epochs=num_epochs,
            prefetch=prefetch,
            prefetch_batches=prefetch_batches,
            max_open_packs=max_open_packs,
            memory_check_interval=memory_check_interval,
            chunk_size=chunk_size,
            mix=mix,
            game_field=game_field,
        )
        if verbose:
            _enable_info_logging()
        self.catalog = open_catalog(self.config)
        specs = self.catalog.schema.field_specs()
        self.config.check_fields(specs)
        refuse_if_pool_cannot_fit(self.config, self.catalog.schema.itemsize)
        self.game_key = None if game_field is None else GameKey(game_field, specs)
        self.board = StatsBoard(self.catalog.num_dirs, game_key=self.game_key is not None)
        self._epochs = EpochTable()
        self._inherited: tuple[int, int] | None = None  # rank and world size resolved by the main process
        self._position: Position | None = None  # of the iterator created last; None before the first
        self._resume: dict[str, Any] | None = None

    def __getattr__(self, name: str) -> Any:
        # The parameters read as attributes, as before the config object: ds.pool_size, ds.batch_size, ...
        config = self.__dict__.get("config")
        if config is not None and name in _CONFIG_FIELDS:
            return getattr(config, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ----- public controls -----

    @property
    def factor(self) -> int:
        """Entries per position in the pool: the augmentation's symmetries when it is enabled, else 1."""
        return self.config.factor

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
        check_int("epoch", epoch, 0)
        self._epochs.set_all(epoch)
        self._refresh_catalog(epoch)

    def stats(self) -> Stats:
        """Per-directory counts against targets, the mix (worst share window error over windows of 10k examples,
        shards and, with ``game_field``, games per batch), shards activated and exhausted, refills, drops, peak memory.

        Works during or after iteration, also with DataLoader workers (they report through shared memory).
        """
        return self.board.read(self.catalog.weights)

    def state_dict(self) -> dict[str, Any]:
        """A small JSON-serialisable state: where the iterator created last is, and a fingerprint of the
        configuration. Before any iteration it describes the start of the next one.

        With DataLoader workers each worker's copy has its own state: save ``StatefulDataLoader.state_dict()``
        (torchdata), which collects them, not the state of the dataset object in the main process.
        """
        position = self._position
        if position is None:  # no iteration yet (also a DataLoader worker's state taken before its first item)
            info = get_worker_info()
            epoch = self._epochs.get(EpochTable.slot(info.id if info else None))
            position = Position(epoch, epoch, 0, info.id if info else 0, info.num_workers if info else 0)
        return make_state(position, last_numbers(self.catalog), self._state_config())

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
        check_state(state)
        if "origin" in state:
            check_origin(state["origin"])
        check_config(state["config"], self._state_config(), skip=("rank", "world_size"))
        info = get_worker_info()
        if info is not None:
            check_workers(state, info.id, info.num_workers)
        num_epochs = self.config.num_epochs
        finished = num_epochs is not None and state["epoch"] >= state["start"] + num_epochs
        if finished and info is None:
            self._resume, self._position = None, None
            self._epochs.set(0, state["epoch"])
            return
        self._resume = dict(state)
        epoch, start, items, worker, workers = (int(state[k]) for k in PROGRESS_KEYS)
        self._position = Position(epoch, start, items, worker, workers, state.get("origin"))

    def _load_states(self, states: list[dict[str, Any]]) -> None:
        """An elastic resume: continue the epoch of a run of any shape from the states of all its participants."""
        for s in states:
            check_state(s)
        position = collect(states)
        check_config(states[0]["config"], self._state_config(), skip=ELASTIC_KEYS)
        epoch, start = position["epoch"], position["start"]
        num_epochs = self.config.num_epochs
        if num_epochs is not None and epoch >= start + num_epochs:  # that run's iteration had ended
            self._resume, self._position = None, None
            self._epochs.set(0, epoch)
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
        return StreamIterator(
            self.config, self.catalog, who, lambda: self._begin(who), slot, refresh, game_key=self.game_key
        )

    def _begin(self, who: Participant) -> tuple[Catalog, Position]:
        """The catalog and start position of an iteration that yields its first item now: a loaded state, else the
        next epoch of this participant (main process or DataLoader worker)."""
        slot = EpochTable.slot(who.worker if who.in_worker else None)
        resume, self._resume = self._resume, None
        catalog = self.catalog
        if resume is not None and "config" not in resume:  # an elastic resume: any rank and worker of any shape
            position = Position(resume["epoch"], resume["start"], 0, who.worker, who.workers if who.in_worker else 0)
            position.origin = resume["origin"]
            catalog = open_catalog(self.config, upto=resume["shards_upto"])
        elif resume is not None:
            check_workers(resume, who.worker, who.workers if who.in_worker else 0)
            saved = resume["config"]
            if (saved["rank"], saved["world_size"]) != (who.rank, who.world_size):
                raise ConfigError(
                    f"the state was saved by rank {saved['rank']} of world_size={saved['world_size']}, it is loaded "
                    f"by rank {who.rank} of world_size={who.world_size}; resume on the same ranks, or load the list "
                    f"of every rank's states (mmpool.gather_states) to continue on {who.world_size}"
                )
            position = Position(resume["epoch"], resume["start"], resume["items"], who.worker, resume["num_workers"])
            position.origin = resume.get("origin")
            catalog = open_catalog(self.config, upto=resume["shards_upto"])
        else:
            epoch = self._epochs.get(slot)
            if not who.in_worker and who.world_size == 1 and self._position is not None:
                catalog = self._refresh_catalog(epoch)  # new shards join at the next epoch
            position = Position(epoch, epoch, 0, who.worker, who.workers if who.in_worker else 0)
        if self.config.num_epochs is not None:
            self._epochs.set(slot, position.start + self.config.num_epochs)
        self._position = position
        return catalog, position

    def batch_buffer_bytes(self) -> int:
        """Bytes of the gathered batch buffers one gathering process may hold at once."""
        return self.config.batch_buffer_bytes(self.catalog.schema.itemsize)

    # ----- configuration -----

    def _rank_and_world(self, strict: bool) -> tuple[int, int]:
        return resolve_rank(self.config.rank, self.config.world_size, self._inherited, strict)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for a spawned DataLoader worker, where torch.distributed is not initialised: carry the rank and
        # world size the main process sees.
        state = self.__dict__.copy()
        state["_inherited"] = self._rank_and_world(strict=False)
        return state

    def _state_config(self) -> dict[str, Any]:
        """What a saved state must match to be resumed."""
        return self.config.state_config(*self._rank_and_world(strict=False))

    def _refresh_catalog(self, epoch: int, current: Catalog | None = None) -> Catalog:
        """Pick up shards converted since ``current`` (default: the dataset's catalog) was read; only ever between
        epochs; ``epoch`` is the next."""
        rank, world = self._rank_and_world(strict=False)
        self.catalog = refresh_catalog(self.config, self.catalog if current is None else current, epoch, rank, world)
        return self.catalog


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(StreamConfig))


def _enable_info_logging() -> None:
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s mmpool %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
