"""ShardStore: gathers records by (shard, row) from memory-mapped pack files, one vectorised gather per pack.

Packs are mapped lazily and kept in a small LRU of open mappings: Python's ``mmap`` holds a duplicate file
descriptor per mapping, so the number of open descriptors stays bounded however many packs there are.
Chunked or compressed HDF5 packs written by other tools cannot be mapped and are read through h5py instead.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
from collections import OrderedDict
from typing import Any

import numpy as np

from mmpool.catalog import Catalog, PackRef
from mmpool.errors import ConfigError, ShardError
from mmpool.format import HDF5_DATASET
from mmpool.packing import row_of, shard_of

log = logging.getLogger("mmpool")
PAGE = mmap.PAGESIZE
# Linux reads at most max(read_ahead_kb, the device's largest request) per MADV_WILLNEED call and silently drops
# the rest of the range (mm/readahead.c, force_page_cache_ra): one call over a 100 MB shard reads 128 KB with the
# default read_ahead_kb. So advise in chunks no larger than the kernel's default read-ahead window.
ADVISE_CHUNK = 128 << 10


class _Mapped:
    """One pack mapped read-only; ``rows`` is a 1-D void array of whole records over the mapping."""

    def __init__(self, ref: PackRef, itemsize: int, offset: int) -> None:
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        self.delta = offset - start
        length = self.delta + ref.entry.rows * itemsize
        with open(ref.path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=start)
        self.rows = np.frombuffer(self.mm, dtype=np.dtype((np.void, itemsize)), count=ref.entry.rows, offset=self.delta)
        self.itemsize = itemsize
        self.nbytes = length

    def take(self, rows: np.ndarray, out: np.ndarray) -> None:
        # mode="clip": the caller has checked the rows, and under the default mode="raise" numpy gathers into a
        # temporary buffer and copies it to ``out`` (one more pass over the batch).
        self.rows.take(rows, out=out, mode="clip")

    def advise(self, first: int, stop: int) -> None:
        """Ask the kernel to read rows ``first..stop-1`` ahead (cold page cache)."""
        lo = self.delta + first * self.itemsize
        hi = self.delta + stop * self.itemsize
        lo -= lo % PAGE
        for start in range(lo, hi, ADVISE_CHUNK):
            self.mm.madvise(mmap.MADV_WILLNEED, start, min(ADVISE_CHUNK, hi - start))


class _Hdf5Reader:
    """A chunked or compressed HDF5 pack, read through h5py (slower: a sorted read per batch)."""

    nbytes = 0

    def __init__(self, ref: PackRef, itemsize: int) -> None:
        import h5py

        self.file = h5py.File(ref.path, "r")
        self.dset = self.file[HDF5_DATASET]
        self.itemsize = itemsize

    def take(self, rows: np.ndarray, out: np.ndarray) -> None:
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py wants increasing indices
        data = self.dset[uniq]
        out[...] = data.view(np.dtype((np.void, self.itemsize)))[inverse]

    def advise(self, first: int, stop: int) -> None:
        pass


def _open(ref: PackRef, itemsize: int) -> Any:
    if ref.kind == "npy":
        return _Mapped(ref, itemsize, ref.entry.data_offset)
    import h5py

    try:
        with h5py.File(ref.path, "r") as f:
            dset = f[HDF5_DATASET]
            offset = dset.id.get_offset()
            mappable = dset.chunks is None and dset.compression is None and offset is not None
            if dset.dtype.itemsize != itemsize or len(dset) != ref.entry.rows:
                raise ShardError(
                    f"{ref.path}: dataset '{HDF5_DATASET}' holds {len(dset)} records of {dset.dtype.itemsize} bytes, "
                    f"the manifest says {ref.entry.rows} of {itemsize}; convert the shards again"
                )
    except (OSError, KeyError) as exc:
        raise ShardError(f"{ref.path}: cannot open HDF5 pack ({exc})") from exc
    return _Mapped(ref, itemsize, int(offset)) if mappable else _Hdf5Reader(ref, itemsize)


class ShardStore:
    """Random access to the records of a catalog, batch by batch."""

    def __init__(self, catalog: Catalog, max_open_packs: int = 64) -> None:
        if not isinstance(max_open_packs, (int, np.integer)) or isinstance(max_open_packs, bool) or max_open_packs < 1:
            raise ConfigError(f"max_open_packs={max_open_packs!r}: must be an integer >= 1")
        self.catalog = catalog
        self.dtype = catalog.schema.dtype
        self.itemsize = catalog.schema.itemsize
        self.max_open_packs = max_open_packs
        self._open: OrderedDict[int, Any] = OrderedDict()
        self._void = np.dtype((np.void, self.itemsize))

    def _pack(self, p: int) -> Any:
        m = self._open.get(p)
        if m is None:
            while len(self._open) >= self.max_open_packs:
                self._open.popitem(last=False)  # the mapping closes when its last reference goes
            try:
                m = self._open[p] = _open(self.catalog.packs[p], self.itemsize)
            except OSError as exc:
                if exc.errno != errno.EMFILE:
                    raise
                raise ShardError(
                    f"{self.catalog.packs[p].path}: cannot map the pack: this process has run out of file "
                    f"descriptors ({exc.strerror}). Each mapped pack holds one and max_open_packs="
                    f"{self.max_open_packs}: lower max_open_packs or raise the open-file limit (ulimit -n)"
                ) from exc
        else:
            self._open.move_to_end(p)
        return m

    def gather_rows(self, shards: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Records (a structured array in the schema's dtype) of ``rows`` of global ``shards``, in the order given."""
        cat = self.catalog
        out = np.empty(len(shards), dtype=self.dtype)
        if len(shards) == 0:
            return out
        rows = np.asarray(rows, dtype=np.int64)
        if (rows.view(np.uint64) >= cat.shard_rows[shards].view(np.uint64)).any():  # a negative row wraps to huge
            bad = np.flatnonzero((rows >= cat.shard_rows[shards]) | (rows < 0))[0]
            raise ShardError(
                f"row {rows[bad]} is outside {cat.describe_shard(shards[bad])} ({cat.shard_rows[shards[bad]]} rows)"
            )
        packs = cat.shard_pack[shards]
        pack_rows = cat.shard_first_row[shards] + rows
        flat = out.view(self._void)
        counts = np.bincount(packs)
        touched = np.flatnonzero(counts).tolist()
        if len(touched) == 1:
            self._pack(touched[0]).take(pack_rows, flat)
            return out
        # One vectorised gather per pack touched, into a block ordered by pack, then one scatter back to the
        # order given: Python work scales with the packs a batch touches, not with its shards or rows.
        # (A stable argsort of uint16 is a radix sort: a few microseconds for a batch.)
        order = np.argsort(packs.astype(np.uint16) if len(counts) <= 1 << 16 else packs, kind="stable")
        by_pack = pack_rows[order]
        block = np.empty(len(order), dtype=self._void)
        at = 0
        for p in touched:
            stop = at + int(counts[p])
            self._pack(p).take(by_pack[at:stop], block[at:stop])
            at = stop
        flat[order] = block
        return out

    def gather(self, packed: np.ndarray) -> dict[str, np.ndarray]:
        """Field arrays (views into one gathered block) of packed pool entries, in the order given."""
        records = self.gather_rows(shard_of(packed), row_of(packed))
        return {f.name: records[f.name] for f in self.catalog.schema.fields}

    def prefetch(self, shard: int, first: int, stop: int) -> None:
        """Read rows ``first..stop-1`` of a shard ahead of the random gathers that follow (cold page cache)."""
        cat = self.catalog
        base = int(cat.shard_first_row[shard])
        try:
            self._pack(int(cat.shard_pack[shard])).advise(base + first, base + stop)
        except OSError as exc:  # advice only: never fail a stream over it
            log.debug("madvise failed on %s: %s", cat.describe_shard(shard), exc)

    def keep_only(self, live_shards: np.ndarray) -> None:
        """Unmap the packs none of whose shards is live (``live_shards``: a mask over the catalog's shards)."""
        if not self._open:
            return
        needed = np.zeros(len(self.catalog.packs), dtype=bool)
        needed[self.catalog.shard_pack[live_shards]] = True
        for p in [p for p in self._open if not needed[p]]:
            del self._open[p]

    @property
    def open_packs(self) -> int:
        return len(self._open)

    def mapped_packs(self) -> list[int]:
        """Global ids of the packs mapped now."""
        return list(self._open)

    @property
    def mapped_bytes(self) -> int:
        """Bytes of address space currently mapped (file-backed; page cache, not process memory)."""
        return sum(m.nbytes for m in self._open.values())

    def close(self) -> None:
        """Unmap everything."""
        self._open.clear()

    def __getstate__(self) -> dict[str, Any]:
        # Mappings are per process: a copy sent to a DataLoader worker maps its packs afresh.
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state


def fd_count() -> int:
    """Open file descriptors of this process (Linux), for checks and reports."""
    return len(os.listdir("/proc/self/fd"))
