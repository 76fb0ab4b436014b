"""Who iterates and what all of them agree on: rank and world size, DataLoader worker, and the shard list.

Rank and world size are resolved when iteration starts, not when the dataset is built (Lightning and torchrun
build datasets before the process group exists). Every rank must see the same shards, or they split them
differently and yield different batch counts (a DDP hang): new shards are read by rank 0 and broadcast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from mmpool.config import StreamConfig
from mmpool.errors import ConfigError
from mmpool.store.catalog import Catalog

log = logging.getLogger("mmpool")


@dataclass(frozen=True)
class Participant:
    """Who iterates: rank of world_size, DataLoader worker of workers (0 of 1 in the main process)."""

    rank: int
    world_size: int
    worker: int
    workers: int
    in_worker: bool

    @property
    def index(self) -> int:
        return self.rank * self.workers + self.worker

    @property
    def count(self) -> int:
        return self.world_size * self.workers


def resolve_rank(
    rank: int | None, world: int | None, inherited: tuple[int, int] | None, strict: bool
) -> tuple[int, int]:
    """Explicit arguments win; then torch.distributed's group; then what the main process resolved before it
    sent this copy to a DataLoader worker (``inherited``). ``strict`` refuses a launcher's WORLD_SIZE > 1 without
    a group."""
    if rank is not None and world is not None:
        return rank, world
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        found = dist.get_rank(), dist.get_world_size()
    elif inherited is not None:
        found = inherited
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


def last_numbers(catalog: Catalog) -> list[int]:
    """The highest selected shard number of every directory (what a resume or another rank should read up to)."""
    return [int(catalog.shard_number[catalog.shard_dir == d].max()) for d in range(catalog.num_dirs)]


def open_catalog(config: StreamConfig, upto: list[int] | None = None) -> Catalog:
    """The catalog of ``config``'s directories, ranges and weights (up to shard ``upto[d]`` of each directory)."""
    return Catalog(config.data_dirs, config.shard_ranges, config.weights, upto=upto)


def refresh_catalog(config: StreamConfig, old: Catalog, epoch: int, rank: int, world: int) -> Catalog:
    """``old``, or a catalog with the shards converted since it was read (the same on every rank); ``epoch`` is
    the epoch they join at, for the log. Only ever between epochs."""
    dist = torch.distributed
    if world > 1 and dist.is_available() and dist.is_initialized():
        # Rank 0 reads the manifests and tells the others how far to read.
        fresh = open_catalog(config) if rank == 0 else None
        message = [last_numbers(fresh) if fresh is not None else None]
        dist.broadcast_object_list(message, src=0)
        if fresh is None:
            fresh = open_catalog(config, message[0])
    else:
        fresh = open_catalog(config)
    if fresh.num_shards == old.num_shards and np.array_equal(fresh.shard_rows, old.shard_rows):
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
    return fresh
