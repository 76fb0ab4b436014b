"""mmpool: a big, well-mixed pool of training positions from many on-disk shards, at almost no RAM.

Convert shards once (``mmpool convert``), then stream them with :class:`StreamingMixedShardDataset`.
"""

from typing import TYPE_CHECKING

from mmpool.augment.dihedral import Augmentation, Dihedral, packed_bytes
from mmpool.errors import ConfigError, MemoryLimitExceeded, MmpoolError, ShardError
from mmpool.store.catalog import Catalog, Split, train_val_split
from mmpool.store.gather import ShardStore
from mmpool.stream.resume import gather_states

if TYPE_CHECKING:  # what the lazy imports below give, for type checkers and IDEs
    from mmpool.augment.planes import unpack_planes
    from mmpool.stream.dataset import StreamingMixedShardDataset
    from mmpool.stream.iterator import StreamIterator
    from mmpool.stream.stats import Stats

__version__ = "0.4.0"

# The dataset and unpack_planes need torch: imported only when asked for, so the converter and tools start fast.
_LAZY = {
    "StreamingMixedShardDataset": "stream.dataset",
    "StreamIterator": "stream.iterator",
    "Stats": "stream.stats",
    "unpack_planes": "augment.planes",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"mmpool.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mmpool' has no attribute {name!r}")


__all__ = [
    "Augmentation",
    "Catalog",
    "ConfigError",
    "Dihedral",
    "MemoryLimitExceeded",
    "MmpoolError",
    "ShardError",
    "ShardStore",
    "Split",
    "Stats",
    "StreamIterator",
    "StreamingMixedShardDataset",
    "gather_states",
    "packed_bytes",
    "train_val_split",
    "unpack_planes",
]
