"""Shared fixtures: small synthetic datasets, converted once per test session, and their source records.

Every fixture is a :class:`Data`: the converted directories (what the dataset reads), the legacy source
directories, and a :class:`Source` with every source record, loaded straight from the legacy ``.npz`` files
(not through mmpool), so tests compare what the dataset yields with what was written, field by field.

Synthetic ids encode ``(dir_index << 40) | (shard_number << 20) | row`` and are unique across directories.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mmpool.convert.converter import convert
from mmpool.testing.synthetic import make_synthetic, position_dtype

ITEMSIZE = position_dtype(4).itemsize
FIELDS = ("planes", "move", "wdl", "id")


def id_dir(ids: np.ndarray) -> np.ndarray:
    """Directory index encoded in synthetic ids."""
    return np.asarray(ids, dtype=np.int64) >> 40


def id_shard(ids: np.ndarray) -> np.ndarray:
    """Shard number (inside its directory) encoded in synthetic ids."""
    return (np.asarray(ids, dtype=np.int64) >> 20) & ((1 << 20) - 1)


def id_row(ids: np.ndarray) -> np.ndarray:
    """Row inside its shard encoded in synthetic ids."""
    return np.asarray(ids, dtype=np.int64) & ((1 << 20) - 1)


class Source:
    """All records of some legacy directories, sorted by id, for exact comparisons."""

    def __init__(self, src_dirs: list[Path]) -> None:
        parts: dict[str, list[np.ndarray]] = {name: [] for name in FIELDS}
        for d in src_dirs:
            for path in sorted(d.glob("shard_*.npz")):
                with np.load(path) as z:
                    for name in FIELDS:
                        parts[name].append(z[name])
        fields = {name: np.concatenate(arrs) for name, arrs in parts.items()}
        order = np.argsort(fields["id"], kind="stable")
        self.fields = {name: a[order] for name, a in fields.items()}
        self.ids = self.fields["id"]
        assert len(np.unique(self.ids)) == len(self.ids), "synthetic ids must be unique"

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, ids: np.ndarray) -> np.ndarray:
        """Positions of ``ids`` in the sorted source; fails if any id is unknown."""
        ids = np.asarray(ids, dtype=np.int64)
        at = np.searchsorted(self.ids, ids)
        at_c = np.minimum(at, len(self.ids) - 1)
        unknown = self.ids[at_c] != ids
        assert not unknown.any(), f"ids not in the source: {ids[unknown][:5]}"
        return at_c

    def records(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        idx = self.index(ids)
        return {name: a[idx] for name, a in self.fields.items()}

    def assert_matches(self, got: dict[str, np.ndarray]) -> None:
        """Every yielded field equals the source record of the same id, exactly (dtype and value)."""
        assert set(got) == set(FIELDS), sorted(got)
        want = self.records(got["id"])
        for name in FIELDS:
            np.testing.assert_array_equal(np.asarray(got[name]), want[name], strict=True, err_msg=name)


@dataclass(frozen=True)
class Data:
    """A converted dataset: ``dirs`` to stream, ``src`` legacy dirs, shards and rows per shard per directory."""

    dirs: list[Path]
    src: list[Path]
    shards: list[int]
    rows: list[int]
    source: Source

    @property
    def total(self) -> int:
        return sum(s * r for s, r in zip(self.shards, self.rows))

    @property
    def records_per_dir(self) -> np.ndarray:
        return np.array([s * r for s, r in zip(self.shards, self.rows)])

    @property
    def max_shard_rows(self) -> int:
        return max(self.rows)


def build(
    root: Path,
    shards: list[int],
    rows: list[int],
    pack_shards: int = 2,
    fmts: list[str] | None = None,
    channels: int = 4,
    seed: int = 0,
) -> Data:
    """make_synthetic + convert each directory with packs of about ``pack_shards`` shards (so several packs)."""
    src = make_synthetic(root / "src", shards, rows, seed=seed, channels=channels)
    itemsize = position_dtype(channels).itemsize
    dirs = []
    for i, d in enumerate(src):
        dst = root / "conv" / d.name
        fmt = fmts[i] if fmts else "npy"
        convert(d, dst, fmt=fmt, pack_size=pack_shards * rows[i] * itemsize, progress=False)
        dirs.append(dst)
    return Data(dirs, src, list(shards), list(rows), Source(src))


@pytest.fixture(scope="session")
def two_dirs(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """dir0: 12 shards x 500 rows (6 npy packs), dir1: 4 x 500 (2 HDF5 packs); weights by shards 3:1."""
    return build(tmp_path_factory.mktemp("two_dirs"), [12, 4], [500, 500], fmts=["npy", "hdf5"])


@pytest.fixture(scope="session")
def uneven_dirs(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """Very different directories: 30 x 200 rows, 3 x 200 rows, 1 x 700 rows."""
    return build(tmp_path_factory.mktemp("uneven_dirs"), [30, 3, 1], [200, 200, 700])


@pytest.fixture(scope="session")
def fine_dirs(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """Many small shards (90 x 50 and 30 x 50 rows, weights 3:1), so a pool of a few thousand is large next to a shard."""
    return build(tmp_path_factory.mktemp("fine_dirs"), [90, 30], [50, 50], pack_shards=10)


@pytest.fixture(scope="session")
def odd_dirs(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """An odd total (3 x 201 + 2 x 150 = 903 rows): not divisible between 2 ranks or workers."""
    return build(tmp_path_factory.mktemp("odd_dirs"), [3, 2], [201, 150])


@pytest.fixture(scope="session")
def single_shard(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """One directory holding one shard of 500 rows."""
    return build(tmp_path_factory.mktemp("single_shard"), [1], [500])


@pytest.fixture(scope="session")
def two_channel_dir(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """A directory whose records have another schema (2 planes channels instead of 4)."""
    return build(tmp_path_factory.mktemp("two_channel"), [2], [100], channels=2)


def collect(batches) -> dict[str, np.ndarray]:
    """Concatenate yielded batches (dicts of tensors with a batch dimension) into numpy arrays."""
    batches = list(batches)
    assert batches, "the dataset yielded nothing"
    return {k: np.concatenate([b[k].numpy() for b in batches]) for k in batches[0]}


def stack(examples) -> dict[str, np.ndarray]:
    """Stack single examples (dicts of tensors without a batch dimension) into numpy arrays."""
    examples = list(examples)
    assert examples, "the dataset yielded nothing"
    return {k: np.stack([e[k].numpy() for e in examples]) for k in examples[0]}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


REPO = Path(__file__).resolve().parent.parent


def launch_ranks(script: Path, world: int, args: list[str], timeout: float = 180) -> list[str]:
    """Run ``script`` as ``world`` torch.distributed ranks (env:// rendezvous on localhost); returns each rank's
    stderr, failing the test with it if a rank fails."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            PYTHONPATH=str(REPO),
            OMP_NUM_THREADS="1",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    errs = []
    try:
        for p in procs:
            _, err = p.communicate(timeout=timeout)
            errs.append(err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, err) in enumerate(zip(procs, errs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{err}"
    return errs
