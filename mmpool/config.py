"""StreamConfig: every parameter of a stream, checked once, in one frozen object.

``StreamingMixedShardDataset`` builds one from its arguments and hands it to each iterator; the iterator, the
memory refusal, ``mmpool plan`` and the resume state's fingerprint all read it, so a parameter means the same
thing everywhere and is validated in one place (``__post_init__``). Checks that need the data (the record schema
an augmentation or ``game_field`` names) are in :meth:`StreamConfig.check_fields`.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmpool.errors import ConfigError, check_int
from mmpool.sampling.entries import MAX_SYMMETRIES
from mmpool.sampling.mixes import MIXES
from mmpool.sampling.pool import default_threshold
from mmpool.sampling.schedule import Weights

# Batches made ahead by default (batch mode). A tight loop whose step holds the GIL gains nothing from it; a step
# that releases the GIL (a GPU step) hides the batch work behind it.
PREFETCH_BATCHES = 2
# Batch buffers one gathering process holds at once besides those made ahead: the gathered records, the copy the
# augmentation makes, the tensors handed over, and the one the consumer still holds.
BATCH_BUFFERS = 4
Transform = Callable[[dict[str, np.ndarray]], dict[str, Any]]


@dataclass(frozen=True)
class StreamConfig:
    """The configuration of a stream (the arguments of ``StreamingMixedShardDataset``), checked when built."""

    data_dirs: tuple[str, ...]
    """Converted directories (``mmpool convert``)."""
    shard_ranges: Sequence[str] | str | None = None
    """One range string per directory (``"all"``, ``"0-99"``, ``"100-"``, ``"0-9,20-29"``); None: every shard."""
    pool_size: int = 2_000_000
    """Entries in the pool of this rank (split between its DataLoader workers)."""
    refill_threshold: int | None = None
    """Refill back to ``pool_size`` below this; None: 3/4 of the pool (an int once the config is built)."""
    max_memory_gb: float = 5.0
    """Cap in GiB on the anonymous memory of the training process and its DataLoader workers."""
    enable_augmentation: bool = True
    """False shows each position once and never calls ``augmentation`` (validation data)."""
    max_examples_unaugmented: int | None = None
    """Positions used per epoch over all ranks; None: all."""
    verbose: bool = False
    """Log activations, refills, shares and memory at INFO level."""
    random_seed: int | None = None
    """Seed of the order; None draws a fresh one when the config is built."""
    batch_size: int | None = None
    """None yields single examples; an int yields whole batches."""
    augmentation: Any = None
    """An object with an integer ``factor`` and ``apply(batch, symmetry_ids)`` (``mmpool.augment``)."""
    transform: Transform | None = None
    """A vectorised function of the batch dict, run on every batch after the augmentation."""
    weights: Weights = "shards"
    """``"shards"``, ``"records"``, or one positive number per directory."""
    rank: int | None = None
    """This process's rank; None: torch.distributed's when iteration starts."""
    world_size: int | None = None
    """The number of ranks; None: torch.distributed's when iteration starts."""
    drop_last: bool = False
    """In batch mode, drop each worker's last partial batch."""
    num_epochs: int | None = 1
    """Epochs one ``iter()`` runs, each with a new order; None runs forever."""
    prefetch: bool = True
    """Read the rows entering the pool ahead, in a background thread (a cold page cache)."""
    prefetch_batches: int = PREFETCH_BATCHES
    """Batches made ahead in a background thread while the training step runs (batch mode; 0: none)."""
    max_open_packs: int = 64
    """Bound on open pack mappings (each holds a file descriptor)."""
    memory_check_interval: float = 0.5
    """Seconds between memory checks (0: every batch)."""
    chunk_size: int = 1024
    """Entries drawn at a time in single-example mode."""
    mix: str = "pool"
    """How batches mix the directories: a name of ``mmpool.sampling.mixes.MIXES``."""
    game_field: str | None = None
    """A field, or a range of one (``"globalTargetsNC[41:47]"``), naming a position's game, for ``stats()``."""

    def __post_init__(self) -> None:
        dirs: Any = self.data_dirs
        dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
        object.__setattr__(self, "data_dirs", tuple(str(Path(d)) for d in dirs))
        check_int("pool_size", self.pool_size, 2)
        threshold = default_threshold(self.pool_size) if self.refill_threshold is None else self.refill_threshold
        check_int("refill_threshold", threshold, 1)
        if threshold >= self.pool_size:
            raise ConfigError(f"refill_threshold={threshold} must be below pool_size={self.pool_size}")
        object.__setattr__(self, "refill_threshold", int(threshold))
        for name in ("batch_size", "max_examples_unaugmented", "num_epochs", "rank", "world_size"):
            value = getattr(self, name)
            if value is not None:
                check_int(name, value, 0 if name == "rank" else 1)
        check_int("chunk_size", self.chunk_size, 1)
        check_int("max_open_packs", self.max_open_packs, 1)
        check_int("prefetch_batches", self.prefetch_batches, 0)
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ConfigError(f"rank={self.rank} must be below world_size={self.world_size}")
        if not _positive(self.max_memory_gb):
            raise ConfigError(f"max_memory_gb={self.max_memory_gb!r}: must be a positive number of GiB")
        if not (_positive(self.memory_check_interval) or self.memory_check_interval == 0):
            raise ConfigError(f"memory_check_interval={self.memory_check_interval!r}: must be a number of seconds >= 0")
        if self.transform is not None and not callable(self.transform):
            raise ConfigError(f"transform={self.transform!r}: must be a function of the batch dict")
        if self.mix not in MIXES:
            raise ConfigError(f"mix={self.mix!r}: use one of {', '.join(repr(m) for m in MIXES)}")
        if self.augment is not None:
            _check_augmentation(self.augment)
        if self.random_seed is None:
            object.__setattr__(self, "random_seed", secrets.randbits(63))
        for name in ("max_memory_gb", "memory_check_interval"):
            object.__setattr__(self, name, float(getattr(self, name)))
        for name in ("pool_size", "random_seed", "prefetch_batches"):
            object.__setattr__(self, name, int(getattr(self, name)))

    @property
    def threshold(self) -> int:
        """The refill threshold (``refill_threshold``, resolved)."""
        assert self.refill_threshold is not None, "set in __post_init__"
        return self.refill_threshold

    @property
    def augment(self) -> Any:
        """The augmentation applied (None when there is none or it is disabled)."""
        return self.augmentation if self.enable_augmentation else None

    @property
    def factor(self) -> int:
        """Entries per position in the pool: the augmentation's symmetries, 1 without one."""
        return 1 if self.augment is None else int(self.augment.factor)

    @property
    def step(self) -> int:
        """Entries one draw takes: the batch size, or the chunk size for single examples."""
        return self.batch_size or self.chunk_size

    @property
    def batches_ahead(self) -> int:
        """Batches made ahead of the training step (0 for single examples)."""
        return self.prefetch_batches if self.batch_size is not None else 0

    def batch_buffer_bytes(self, itemsize: int) -> int:
        """Bytes of the gathered batch buffers one gathering process may hold at once."""
        return (BATCH_BUFFERS + self.batches_ahead) * self.step * itemsize

    def check_fields(self, field_specs: Mapping[str, Any]) -> None:
        """Check what the parameters name against the record schema (``Schema.field_specs()``)."""
        if self.augment is not None and hasattr(self.augment, "validate"):
            self.augment.validate(field_specs)

    def state_config(self, rank: int, world_size: int) -> dict[str, Any]:
        """What a saved state must match to be resumed: plain JSON values, so it compares equal after a round trip."""
        ranges = self.shard_ranges
        return {
            "data_dirs": list(self.data_dirs),
            "shard_ranges": ranges if ranges is None or isinstance(ranges, str) else [str(r) for r in ranges],
            "weights": self.weights if isinstance(self.weights, str) else [float(w) for w in self.weights],
            "random_seed": self.random_seed,
            "pool_size": self.pool_size,
            "refill_threshold": self.threshold,
            "batch_size": None if self.batch_size is None else int(self.batch_size),
            "chunk_size": int(self.chunk_size),
            "drop_last": self.drop_last,
            "factor": self.factor,
            "max_examples_unaugmented": None
            if self.max_examples_unaugmented is None
            else int(self.max_examples_unaugmented),
            "world_size": world_size,
            "rank": rank,
            "mix": self.mix,
        }


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _check_augmentation(aug: Any) -> None:
    factor = getattr(aug, "factor", None)
    if not callable(getattr(aug, "apply", None)) or not isinstance(factor, (int, np.integer)):
        raise ConfigError(f"augmentation {aug!r} needs an integer 'factor' and an 'apply(batch, symmetry_ids)' method")
    if not 1 <= factor <= MAX_SYMMETRIES:
        raise ConfigError(f"augmentation factor {factor}: must be between 1 and {MAX_SYMMETRIES}")
