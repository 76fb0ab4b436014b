"""Deterministic chess-like synthetic positions, written as legacy shards for tests and benchmarks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmpool.errors import ConfigError

__all__ = ["FORMATS", "make_positions", "make_synthetic", "position_dtype", "write_legacy_shard"]

FORMATS: tuple[str, ...] = ("npz", "npy", "pt", "pth", "h5", "hdf5")

PASS_MOVE = 64
# Ids are (dir_index << 40) | (shard_number << 20) | row, so each part must fit its bit field.
_ROW_BITS = 20
_SHARD_BITS = 20
_DIR_BITS = 23  # 40 + 23 = 63 bits: ids stay positive int64


def position_dtype(channels: int = 4) -> np.dtype:
    """Aligned record: planes u1 (channels, 8, 8), move i2, wdl f4 (3,), id i8 (280 bytes at 4)."""
    if channels < 1:
        raise ConfigError(f"channels must be >= 1, got {channels}")
    return np.dtype(
        [
            ("planes", np.uint8, (channels, 8, 8)),
            ("move", np.int16),
            ("wdl", np.float32, (3,)),
            ("id", np.int64),
        ],
        align=True,
    )


def make_positions(n: int, seed: int, id_base: int = 0, channels: int = 4) -> dict[str, np.ndarray]:
    """Return ``n`` synthetic positions as arrays ``planes``, ``move``, ``wdl``, ``id``.

    Deterministic in (seed, id_base): the generator is seeded with both, so every shard of a
    synthetic set gets its own stream no matter in which order shards are made.
    """
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    if channels < 1:
        raise ConfigError(f"channels must be >= 1, got {channels}")
    if seed < 0 or id_base < 0:
        raise ConfigError(f"seed and id_base must be >= 0, got seed={seed}, id_base={id_base}")
    rng = np.random.default_rng([seed, id_base])
    # Each plane gets its own density of 8..16 expected pieces out of 64 squares; comparing
    # uint8 noise with density*4 (out of 256) keeps memory at one byte per square.
    density = rng.integers(8, 17, size=(n, channels, 1), dtype=np.uint8)
    noise = rng.integers(0, 256, size=(n, channels, 64), dtype=np.uint8)
    planes = (noise < density * 4).view(np.uint8).reshape(n, channels, 8, 8)
    move = rng.integers(0, 64, size=n, dtype=np.int16)
    move[rng.random(n) < 0.02] = PASS_MOVE
    wdl = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
    wdl /= wdl.sum(axis=1, keepdims=True)  # renormalise after the float32 cast
    ids = np.arange(n, dtype=np.int64) + np.int64(id_base)
    return {"planes": planes, "move": move, "wdl": wdl, "id": ids}


def _rows_of(arrays: dict[str, np.ndarray]) -> int:
    rows = {len(a) for a in arrays.values()}
    if len(rows) != 1:
        raise ConfigError(f"arrays must share their first dimension, got { {k: a.shape for k, a in arrays.items()} }")
    return rows.pop()


def write_legacy_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as a legacy shard, format chosen by the suffix of ``path``.

    .npz: uncompressed np.savez; .npy: one aligned structured array; .pt/.pth: dict of torch
    tensors; .h5/.hdf5: one dataset per field. Atomic: a hidden temporary in the same directory
    is renamed over ``path``, so readers never see a half-written shard.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix.lstrip(".") not in FORMATS:
        raise ConfigError(f"cannot write {str(path)!r}: suffix must be one of {FORMATS}")
    if not arrays:
        raise ConfigError(f"cannot write {str(path)!r}: no arrays given")
    rows = _rows_of(arrays)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(tmp, "w", track_order=True) as fh:  # keep field order
                for name, arr in arrays.items():
                    fh.create_dataset(name, data=arr)
        else:
            # File objects: np.save/np.savez would otherwise append their own suffix to tmp.
            with open(tmp, "wb") as fp:
                if suffix == ".npz":
                    np.savez(fp, **arrays)  # type: ignore[arg-type]  # numpy's stub: a key could be allow_pickle
                elif suffix == ".npy":
                    dtype = np.dtype([(k, a.dtype, a.shape[1:]) for k, a in arrays.items()], align=True)
                    record = np.empty(rows, dtype=dtype)
                    for name, arr in arrays.items():
                        record[name] = arr
                    np.save(fp, record, allow_pickle=False)
                else:
                    import torch  # lazy: only .pt needs it

                    tensors = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in arrays.items()}
                    torch.save(tensors, fp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_synthetic(
    root: Path,
    shards_per_dir: Sequence[int],
    rows_per_shard: int | Sequence[int],
    fmt: str = "npz",
    seed: int = 0,
    channels: int = 4,
    dir_names: Sequence[str] | None = None,
) -> list[Path]:
    """Create one directory of ``shard_{number:05d}.{fmt}`` files per entry of ``shards_per_dir``.

    ``rows_per_shard`` is one count for all directories or one per directory. Ids are unique
    across all directories: ``(dir_index << 40) | (shard_number << 20) | row``. Returns the
    directory paths (``root/dir0``, ``root/dir1``, ... unless ``dir_names`` is given).
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {FORMATS}, got {fmt!r}")
    counts = [int(c) for c in shards_per_dir]
    if not counts:
        raise ConfigError("shards_per_dir must name at least one directory")
    if isinstance(rows_per_shard, int):
        rows = [rows_per_shard] * len(counts)
    else:
        rows = [int(r) for r in rows_per_shard]
        if len(rows) != len(counts):
            raise ConfigError(f"rows_per_shard has {len(rows)} entries but shards_per_dir has {len(counts)}")
    names = [f"dir{i}" for i in range(len(counts))] if dir_names is None else list(dir_names)
    if len(names) != len(counts) or len(set(names)) != len(names):
        raise ConfigError(f"dir_names must be {len(counts)} distinct names, got {names}")
    if len(counts) > 1 << _DIR_BITS:
        raise ConfigError(f"at most {1 << _DIR_BITS} directories, got {len(counts)}")
    for c in counts:
        if not 0 <= c < 1 << _SHARD_BITS:
            raise ConfigError(f"shards per directory must be in [0, {1 << _SHARD_BITS}), got {c}")
    for r in rows:
        if not 1 <= r < 1 << _ROW_BITS:
            raise ConfigError(f"rows per shard must be in [1, {1 << _ROW_BITS}), got {r}")

    dirs = []
    with tqdm(total=sum(counts), desc="synthetic shards", unit="shard", disable=None) as bar:
        for d, (name, count, n) in enumerate(zip(names, counts, rows)):
            out = Path(root) / name
            out.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                id_base = (d << (_SHARD_BITS + _ROW_BITS)) | (number << _ROW_BITS)
                arrays = make_positions(n, seed, id_base=id_base, channels=channels)
                write_legacy_shard(out / f"shard_{number:05d}.{fmt}", arrays)
                bar.update(1)
            dirs.append(out)
    return dirs
