"""mmpool: a big, well-mixed pool of training positions from many on-disk shards, at almost no RAM.

Convert shards once (``mmpool convert``), then stream them with :class:`StreamingMixedShardDataset`.
"""

from mmpool.augment import Augmentation, Dihedral, packed_bytes
from mmpool.catalog import Catalog, Split, train_val_split
from mmpool.errors import ConfigError, MemoryLimitExceeded, MmpoolError, ShardError
from mmpool.store import ShardStore

__version__ = "0.1.0"


def __getattr__(name: str):
    # The dataset and unpack_planes need torch; import it only when asked for, so the converter and tools start fast.
    if name == "unpack_planes":
        from mmpool.planes import unpack_planes

        return unpack_planes
    if name in ("StreamingMixedShardDataset", "Stats"):
        from mmpool import dataset, stats

        return {"StreamingMixedShardDataset": dataset.StreamingMixedShardDataset, "Stats": stats.Stats}[name]
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
    "StreamingMixedShardDataset",
    "packed_bytes",
    "train_val_split",
    "unpack_planes",
]
