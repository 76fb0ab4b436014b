"""Packed pool entries: one uint64 per example holding (global shard id, row inside the shard, symmetry id).

Bits 40..63 hold the shard (up to 16.7M shards), bits 8..39 the row (up to 4.29G rows per shard),
bits 0..7 the symmetry id (up to 256 symmetries).
"""

from __future__ import annotations

import numpy as np

SHARD_SHIFT = 40
ROW_SHIFT = 8
ROW_MASK = (1 << 32) - 1
SYM_MASK = (1 << 8) - 1
MAX_SHARDS = 1 << 24
MAX_ROWS = 1 << 32
MAX_SYMMETRIES = 1 << 8


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
