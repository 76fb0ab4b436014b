"""Tests for mmpool.store.gather: exact gathers across packs and directories, the open-pack bound, HDF5 packs."""

from __future__ import annotations

import os
import pickle
import threading
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from mmpool.convert.converter import convert
from mmpool.errors import ConfigError, ShardError
from mmpool.format.manifest import Manifest, read_manifest, write_manifest
from mmpool.sampling.entries import pack
from mmpool.store.catalog import Catalog
from mmpool.store.gather import ShardStore, fd_count
from mmpool.testing.synthetic import make_positions, make_synthetic

FIELDS = ("planes", "move", "wdl", "id")


def source_of(cat: Catalog, rows_per_dir: list[int]) -> list[dict[str, np.ndarray]]:
    """The synthetic arrays of every global shard of ``cat`` (seed 0)."""
    return [
        make_positions(rows_per_dir[d], 0, id_base=(int(d) << 40) | (int(n) << 20))
        for d, n in zip(cat.shard_dir, cat.shard_number)
    ]


def expected_records(
    source: list[dict[str, np.ndarray]], shards: np.ndarray, rows: np.ndarray
) -> dict[str, np.ndarray]:
    return {name: np.stack([source[s][name][r] for s, r in zip(shards, rows)]) for name in FIELDS}


def assert_gathered(records: np.ndarray, want: dict[str, np.ndarray]) -> None:
    assert records.dtype.names == FIELDS
    for name in FIELDS:
        np.testing.assert_array_equal(records[name], want[name], strict=True)


def build(tmp_path: Path, fmt: str, counts: list[int], rows: list[int], pack_size: int) -> list[Path]:
    out = []
    for s in make_synthetic(tmp_path / "src", counts, rows):
        convert(s, tmp_path / fmt / s.name, fmt=fmt, pack_size=pack_size, progress=False)
        out.append(tmp_path / fmt / s.name)
    return out


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_gather_exact_across_packs_and_dirs(tmp_path: Path, fmt: str) -> None:
    dirs = build(tmp_path, fmt, [6, 3], [120, 70], pack_size=250 * 280)
    cat = Catalog(dirs, ["1-", "all"])
    # dir0: two 120-row shards per pack (3 packs), dir1: its three 70-row shards in one pack
    assert cat.shard_pack.tolist() == [0, 1, 1, 2, 2, 3, 3, 3]
    source = source_of(cat, [120, 70])
    store = ShardStore(cat)
    rng = np.random.default_rng(5)
    for _ in range(20):
        shards = rng.integers(0, cat.num_shards, size=257)
        rows = rng.integers(0, cat.shard_rows[shards])
        assert_gathered(store.gather_rows(shards, rows), expected_records(source, shards, rows))
    # The ids encode (dir, shard, row): a direct check of the order of results.
    shards = np.array([7, 0, 7, 3])
    rows = np.array([69, 0, 0, 119])
    ids = store.gather_rows(shards, rows)["id"]
    assert ids.tolist() == [
        (1 << 40) | (2 << 20) | 69,
        (0 << 40) | (1 << 20) | 0,
        (1 << 40) | (2 << 20),
        (4 << 20) | 119,
    ]
    # One pack only (the fast path), and the empty batch.
    assert store.gather_rows(np.array([1, 1]), np.array([5, 4]))["id"].tolist() == [(2 << 20) | 5, (2 << 20) | 4]
    empty = store.gather_rows(np.array([], dtype=np.intp), np.array([], dtype=np.int64))
    assert empty.shape == (0,) and empty.dtype == cat.schema.dtype
    # gather() takes packed pool entries and returns field views.
    fields = store.gather(pack(np.array([6, 2]), np.array([1, 2]), np.array([3, 0])))
    assert fields["id"].tolist() == [(1 << 40) | (1 << 20) | 1, (3 << 20) | 2]
    assert list(fields) == list(FIELDS)
    store.close()
    assert store.open_packs == 0


def test_gather_row_out_of_range(tmp_path: Path) -> None:
    dirs = build(tmp_path, "npy", [2], [30], pack_size=1 << 20)
    store = ShardStore(Catalog(dirs))
    with pytest.raises(ShardError, match=rf"^row 30 is outside {dirs[0]} shard 1 \(30 rows\)$"):
        store.gather_rows(np.array([0, 1]), np.array([29, 30]))
    with pytest.raises(ShardError, match=rf"^row -1 is outside {dirs[0]} shard 0 \(30 rows\)$"):
        store.gather_rows(np.array([0]), np.array([-1]))


def test_max_open_packs_bound(tmp_path: Path) -> None:
    dirs = build(tmp_path, "npy", [40], [50], pack_size=1)  # one pack per shard
    cat = Catalog(dirs)
    assert len(cat.packs) == 40
    source = source_of(cat, [50])
    store = ShardStore(cat, max_open_packs=3)
    base = fd_count()
    rng = np.random.default_rng(0)
    most_fds = 0
    for _ in range(60):
        shards = rng.integers(0, 40, size=rng.integers(1, 6))
        shards = rng.choice(shards, size=64)
        rows = rng.integers(0, 50, size=64)
        assert_gathered(store.gather_rows(shards, rows), expected_records(source, shards, rows))
        assert store.open_packs <= 3
        most_fds = max(most_fds, fd_count() - base)
    assert store.open_packs == 3
    assert most_fds <= 3  # each mapping holds one duplicated descriptor
    assert store.mapped_bytes <= 3 * (50 * 280 + 4096 + 65536)
    live = cat.shard_pack != cat.shard_pack[int(shards[-1])]  # every shard but those of one mapped pack
    store.keep_only(live)
    assert store.open_packs == 2
    with pytest.raises(ConfigError, match="max_open_packs=0: must be an integer >= 1"):
        ShardStore(cat, max_open_packs=0)


def test_store_pickles_without_mappings(tmp_path: Path) -> None:
    dirs = build(tmp_path, "npy", [2], [30], pack_size=1 << 20)
    store = ShardStore(Catalog(dirs))
    store.gather_rows(np.array([0]), np.array([0]))
    assert store.open_packs == 1
    copy = pickle.loads(pickle.dumps(store))
    assert copy.open_packs == 0
    assert copy.gather_rows(np.array([1]), np.array([3]))["id"].tolist() == [(1 << 20) | 3]


def test_chunked_compressed_hdf5_pack(tmp_path: Path) -> None:
    dirs = build(tmp_path, "hdf5", [4], [100], pack_size=200 * 280)
    dst = dirs[0]
    m = read_manifest(dst)
    path = dst / m.packs[1].file
    with h5py.File(path, "r") as f:
        assert f["records"].chunks is None  # the converter's packs are contiguous
        data = f["records"][()]
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_dataset("records", data=data, chunks=(32,), compression="gzip", compression_opts=4)
    packs = (m.packs[0], replace(m.packs[1], bytes=path.stat().st_size))
    write_manifest(dst, Manifest(m.pack_format, m.schema, packs, m.shards))

    cat = Catalog([dst])
    source = source_of(cat, [100])
    store = ShardStore(cat)
    rng = np.random.default_rng(1)
    for _ in range(10):
        shards = rng.integers(0, 4, size=100)
        rows = rng.integers(0, 100, size=100)  # repeats and any order: h5py needs sorted unique reads
        assert_gathered(store.gather_rows(shards, rows), expected_records(source, shards, rows))
    assert type(store._pack(1)).__name__ == "_Hdf5Reader"
    assert type(store._pack(0)).__name__ == "_Mapped"


def test_prefetch_is_harmless(tmp_path: Path) -> None:
    dirs = build(tmp_path, "npy", [2], [300], pack_size=1 << 20)
    cat = Catalog(dirs)
    store = ShardStore(cat)
    store.prefetch(1, 10, 200)
    assert store.open_packs == 1
    assert store.gather_rows(np.array([1]), np.array([150]))["id"].tolist() == [(1 << 20) | 150]


def evict(dirs: list[Path]) -> None:
    """Drop the packs' pages from the page cache, so the next gathers go to disk (and take the cold path)."""
    for d in dirs:
        for p in Path(d).glob("pack-*"):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def random_batches(cat: Catalog, seed: int, n: int = 20, size: int = 300) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shards = rng.integers(0, cat.num_shards, size=size)
        out.append((shards, rng.integers(0, cat.shard_rows[shards])))
    return out


def wait_caught_up(store: ShardStore) -> None:
    ra = store.read_ahead
    assert ra is not None
    for _ in range(1000):
        if ra.caught_up:
            return
        time.sleep(0.01)
    raise AssertionError("the read-ahead did not finish")


def test_cold_hints_and_read_ahead_return_the_plain_records(tmp_path: Path) -> None:
    dirs = build(tmp_path, "npy", [6, 3], [120, 70], pack_size=250 * 280)
    cat = Catalog(dirs)
    source = source_of(cat, [120, 70])
    plain = ShardStore(cat, cold_hints=False)
    batches = random_batches(cat, 3)
    # Evicted, no read-ahead: batches are tested with mincore and found cold, so their rows are hinted.
    evict(dirs)
    cold = ShardStore(cat)
    for shards, rows in batches:
        assert_gathered(cold.gather_rows(shards, rows), expected_records(source, shards, rows))
    assert cold.hinted_rows > 0
    # Read ahead: every shard's rows entered in two ranges, as a pool activates them.
    evict(dirs)
    ahead = ShardStore(cat, read_ahead_bytes=1 << 30)
    for g in range(cat.num_shards):
        half = int(cat.shard_rows[g]) // 2
        ahead.prefetch(g, 0, half)
        ahead.prefetch(g, half, int(cat.shard_rows[g]))
    wait_caught_up(ahead)
    ra = ahead.read_ahead
    assert ra is not None and ra.dropped_bytes == 0
    assert ra.ready_lo.tolist() == [0] * cat.num_shards and ra.ready_hi.tolist() == cat.shard_rows.tolist()
    assert ahead.cached(*batches[0]).all()
    for shards, rows in batches:
        want = plain.gather_rows(shards, rows)
        assert_gathered(ahead.gather_rows(shards, rows), {name: want[name] for name in FIELDS})
    assert ahead.hinted_rows == 0  # all read ahead: gathered without hints
    for s in (plain, cold, ahead):
        s.close()


def test_read_ahead_keeps_to_its_budget_and_stops_on_close(tmp_path: Path) -> None:
    dirs = build(tmp_path, "npy", [8], [100], pack_size=1 << 20)
    cat = Catalog(dirs)
    threads = threading.active_count()
    shard_bytes = 100 * cat.schema.itemsize
    # A budget below one chunk is raised to one chunk (1 MB): far more than one shard, far less than 4000 of them.
    store = ShardStore(cat, read_ahead_bytes=1)
    ra = None
    for _ in range(500):  # the same shards again and again: more queued than the budget allows
        for g in range(cat.num_shards):
            store.prefetch(g, 0, 100)
        ra = store.read_ahead
    assert ra is not None
    assert ra.dropped_bytes > 0 and ra.dropped_bytes % shard_bytes == 0  # the oldest ranges were dropped, whole
    store.close()
    assert store.read_ahead is None and threading.active_count() == threads
    # The store still gathers after close (it maps again), and a pickled copy carries no thread.
    assert store.gather_rows(np.array([3]), np.array([7]))["id"].tolist() == [(3 << 20) | 7]
    store.prefetch(0, 0, 100)
    copy = pickle.loads(pickle.dumps(store))
    assert copy.read_ahead is None
    store.close()
    assert threading.active_count() == threads
