"""Packed pool entries: one uint64 per example holding (global shard id, row inside the shard, symmetry id).

Bits 40..63 hold the shard (up to 16.7M shards), bits 8..39 the row (up to 4.29G rows per shard),
bits 0..7 the symmetry id (up to 256 symmetries).
"""

from __future__ import annotations

import numpy as np

from mmpool.errors import ConfigError

SHARD_SHIFT = 40
ROW_SHIFT = 8
ROW_MASK = (1 << 32) - 1
SYM_MASK = (1 << 8) - 1
MAX_SHARDS = 1 << 24
MAX_ROWS = 1 << 32
MAX_SYMMETRIES = 1 << 8
ENTRY_BYTES = 8  # one uint64 per pool entry: what a pool costs per entry


def check_limits(num_shards: int, max_rows: int, where: str) -> None:
    """Refuse a catalog whose shards or rows do not fit an entry's bit fields (``where`` names the directories)."""
    if num_shards > MAX_SHARDS:
        raise ConfigError(
            f"{where}: {num_shards} shards selected, but a pool entry holds at most {MAX_SHARDS} shard ids "
            f"(24 bits); select fewer shards (shard_ranges) or convert with larger shards"
        )
    if max_rows > MAX_ROWS:
        raise ConfigError(
            f"{where}: a shard of {max_rows} rows, but a pool entry holds rows below {MAX_ROWS} (32 bits); "
            f"convert it into smaller shards"
        )


def pack(shard: np.ndarray | int, row: np.ndarray | int, sym: np.ndarray | int = 0) -> np.ndarray:
    """Pack arrays (or scalars) of shard ids, rows and symmetry ids into uint64 entries."""
    s = np.asarray(shard, dtype=np.uint64)
    r = np.asarray(row, dtype=np.uint64)
    y = np.asarray(sym, dtype=np.uint64)
    return (s << np.uint64(SHARD_SHIFT)) | (r << np.uint64(ROW_SHIFT)) | y


def shard_of(packed: np.ndarray) -> np.ndarray:
    """Global shard ids of packed entries (intp, ready for indexing)."""
    return (packed >> np.uint64(SHARD_SHIFT)).astype(np.intp)


def row_of(packed: np.ndarray) -> np.ndarray:
    """Rows inside their shards (int64)."""
    return ((packed >> np.uint64(ROW_SHIFT)) & np.uint64(ROW_MASK)).astype(np.int64)


def sym_of(packed: np.ndarray) -> np.ndarray:
    """Symmetry ids (intp)."""
    return (packed & np.uint64(SYM_MASK)).astype(np.intp)


def unpack(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(shard, row, sym)`` arrays of packed entries."""
    return shard_of(packed), row_of(packed), sym_of(packed)
