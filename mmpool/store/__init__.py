"""Where records live and how a batch of them is read.

- ``catalog``: the converted directories a job reads, their selected shards, sizes and weights.
- ``ranges``: shard range strings (``"0-99,200-"``).
- ``gather``: ``ShardStore``, the mapped packs and the gather of a batch of entries into records.
- ``readahead``: a background thread that reads the rows entering the pool ahead of the gather.
- ``pagecache``: what of a file is in the page cache, and how much page cache this process may use."""

from mmpool.store.catalog import Catalog, Split, train_val_split
from mmpool.store.gather import ShardStore
from mmpool.store.ranges import parse_range, to_range

__all__ = ["Catalog", "ShardStore", "Split", "parse_range", "to_range", "train_val_split"]
