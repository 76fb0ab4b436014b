"""The torch side of the batch path: the dataset, its iterator, and what they keep track of.

- ``dataset``: ``StreamingMixedShardDataset``, configuration only (a ``StreamConfig``) plus resume controls.
- ``iterator``: ``StreamIterator``, one iteration: pool -> store -> augmentation -> transform -> tensors.
- ``tensors``: the fields of a batch as torch tensors (one buffer per batch in DataLoader workers).
- ``prefetcher``: batches made ahead in a background thread.
- ``world``: rank, world size and DataLoader worker; the shard list every rank agrees on.
- ``epochs``: the epoch each participant starts next, in shared memory.
- ``resume``: the resume state (position, fingerprinted configuration), its checks, ``gather_states``.
- ``memory``: the memory cap, measured with psutil, and the up-front refusal of a pool that cannot fit.
- ``stats``: per-directory counts, share windows, shards and games per batch, across workers.
- ``games``: the field that names a position's game, for the statistics.

The modules that need torch are imported on first use of their names, so ``mmpool.stream.memory`` and
``mmpool.stream.resume`` stay cheap for the command line."""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmpool.stream.dataset import StreamingMixedShardDataset
    from mmpool.stream.iterator import StreamIterator
    from mmpool.stream.stats import Stats

_LAZY = {
    "StreamingMixedShardDataset": "mmpool.stream.dataset",
    "StreamIterator": "mmpool.stream.iterator",
    "Stats": "mmpool.stream.stats",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmpool.stream' has no attribute {name!r}")


__all__ = ["Stats", "StreamIterator", "StreamingMixedShardDataset"]
