"""Deterministic chess-like synthetic positions, written as legacy shards for tests and benchmarks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmpool.errors import ConfigError

__all__ = ["FORMATS", "katago_rows", "make_positions", "make_synthetic", "position_dtype", "write_legacy_shard"]

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


KATAGO_BOARD = 19
_KATAGO_SQUARES = KATAGO_BOARD * KATAGO_BOARD
_KATAGO_HASH = slice(41, 47)  # globalTargetsNC channels holding the game hash
_BELL = np.exp(-0.5 * (np.arange(-24, 25) / 6.0) ** 2)


def _neighbours(x: np.ndarray) -> np.ndarray:
    """Count of set orthogonal neighbours of every square of boolean boards ``(n, H, W)``."""
    c = np.zeros(x.shape, dtype=np.int8)
    c[:, 1:] += x[:, :-1]
    c[:, :-1] += x[:, 1:]
    c[:, :, 1:] += x[:, :, :-1]
    c[:, :, :-1] += x[:, :, 1:]
    return c


def _one_of(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One uniformly chosen set square per row of ``mask`` (n, S) as a one-hot bool array; empty rows stay empty."""
    score = np.where(mask, rng.random(mask.shape, dtype=np.float32) + 1, 0)
    hot = np.zeros(mask.shape, dtype=bool)
    hot[np.arange(len(mask)), score.argmax(axis=1)] = True
    return hot & mask


def katago_rows(
    n: int, seed: int, global_targets: int = 80, with_q: bool = True, game_length: int | None = None
) -> dict[str, np.ndarray]:
    """``n`` KataGo-like 19x19 training rows with the keys, dtypes and per-row shapes of KataGo's npz shards.

    ``binaryInputNCHWPacked`` uint8 (22, 46): 22 planes of 361 squares packed big-endian (row-major ``r*19+c``),
    the 7 padding bits zero. Planes: 0 on board, 1/2 own/opponent stones (random, disjoint, 0-55% of the board),
    3-5 stones with 1/2/3 empty neighbours, 6 a ko ban (3% of rows), 9-13 the last five moves (one stone each,
    alternating opponent/own), 14-16 a ladder-threatened subset of 3, 17/18 pass-alive areas, the rest zero.
    ``policyTargetsNCMove`` int16 (2, 362), pass last: channel 0 visit counts over the empty squares and pass
    (100-800 visits), channel 1 one visit on the opponent's reply. ``valueTargetsNCHW`` int8 (5, 19, 19): ownership
    in {-1, 0, 1} from the stones and the empty squares' neighbours, seki zero, two future boards, scoring.
    ``globalTargetsNC`` float32 (``global_targets``,) with a win/loss/no-result triple summing to 1 and a per-game
    hash in channels 41-46; ``scoreDistrN`` int8 (842,) summing to 100; ``globalInputNC`` float32 (19,);
    ``metadataInputNC`` float32 (192,); ``qValueTargetsNCMove`` int16 (3, 362) (if ``with_q``), non-zero only
    where channel 0 of the policy has visits. Deterministic in ``seed``.

    ``game_length``: rows come in whole games of ``game_length/2 .. 3*game_length/2`` positions, one after
    another, the positions of a game sharing its hash (as a selfplay file holds them before any shuffle);
    None gives every row a hash of its own (a shuffled file).
    """
    if n < 0 or seed < 0:
        raise ConfigError(f"katago_rows: n and seed must be >= 0, got n={n}, seed={seed}")
    if global_targets < _KATAGO_HASH.stop:
        raise ConfigError(
            f"katago_rows: global_targets={global_targets} is too small; KataGo data has 64 (older) or 80, "
            f"and channels {_KATAGO_HASH.start}-{_KATAGO_HASH.stop - 1} hold the game hash"
        )
    rng = np.random.default_rng([seed, 0x4B47])
    size, sq = KATAGO_BOARD, _KATAGO_SQUARES
    density = rng.random((n, 1, 1), dtype=np.float32) * 0.55
    stone = rng.random((n, size, size), dtype=np.float32) < density
    black = rng.random((n, size, size), dtype=np.float32) < 0.5
    own, opp = stone & black, stone & ~black
    empty = ~stone
    libs = _neighbours(empty)
    planes = np.zeros((n, 22, size, size), dtype=bool)
    planes[:, 0] = True
    planes[:, 1], planes[:, 2] = own, opp
    for k in (1, 2, 3):
        planes[:, 2 + k] = stone & (libs == k)
    flat = planes.reshape(n, 22, sq)
    ko = _one_of(empty.reshape(n, sq), rng) & (rng.random((n, 1)) < 0.03)
    flat[:, 6] = ko
    for k in range(5):
        side = opp if k % 2 == 0 else own
        flat[:, 9 + k] = _one_of(side.reshape(n, sq), rng)
    ladder = flat[:, 3] & (rng.random((n, sq), dtype=np.float32) < 0.5)
    flat[:, 14] = flat[:, 15] = flat[:, 16] = ladder
    pull = _neighbours(own).astype(np.int16) - _neighbours(opp)
    owner = np.where(own, 1, np.where(opp, -1, np.sign(pull))).astype(np.int8)
    alive = rng.random((n, 1, 1)) < 0.1
    planes[:, 17] = empty & (owner > 0) & alive
    planes[:, 18] = empty & (owner < 0) & alive
    packed = np.packbits(flat, axis=-1, bitorder="big")

    legal = np.concatenate([(empty.reshape(n, sq) & ~ko), np.ones((n, 1), dtype=bool)], axis=1)  # pass is legal
    weight = np.where(legal, rng.random((n, sq + 1), dtype=np.float32) ** 12, 0.0)  # a few moves get most visits
    weight /= weight.sum(axis=1, keepdims=True)
    visits = rng.integers(100, 801, size=(n, 1))
    policy = np.zeros((n, 2, sq + 1), dtype=np.int16)
    policy[:, 0] = np.floor(weight * visits)
    policy[:, 1] = _one_of(legal, rng)
    searched = policy[:, 0] > 0

    value = np.zeros((n, 5, size, size), dtype=np.int8)
    value[:, 0] = owner
    flip = rng.random((n, size, size), dtype=np.float32) < 0.05
    value[:, 2] = np.where(flip, 0, owner * stone)
    value[:, 3] = np.where(flip | (rng.random((n, size, size), dtype=np.float32) < 0.05), 0, owner * stone)
    value[:, 4] = owner

    lead = rng.normal(0, 15, size=n)
    win = 1 / (1 + np.exp(-lead / 5))
    gt = np.zeros((n, global_targets), dtype=np.float32)
    gt[:, 0], gt[:, 1] = win, 1 - win
    gt[:, 3] = lead
    gt[:, 25] = 1.0  # weight of this row
    gt[:, _KATAGO_HASH] = rng.integers(0, 1 << 24, size=(n, 6))  # exact in float32
    if game_length is not None:
        lengths = rng.integers(
            max(1, game_length // 2), game_length * 3 // 2 + 1, size=n // max(1, game_length // 2) + 1
        )
        game = np.repeat(np.arange(len(lengths)), lengths)[:n]
        gt[:, _KATAGO_HASH] = gt[game, _KATAGO_HASH]
    # One bell of integer percentages summing to 100, centred on each row's lead.
    offsets = np.arange(-24, 25)
    bell = np.floor(100 * _BELL / _BELL.sum()).astype(np.int8)
    bell[24] += 100 - int(bell.sum())
    centre = np.clip(np.round(lead).astype(np.int64) + 421, 24, 841 - 24)
    score = np.zeros((n, 842), dtype=np.int8)
    score[np.arange(n)[:, None], centre[:, None] + offsets] = bell

    gin = np.zeros((n, 19), dtype=np.float32)
    gin[:, :5] = 1.0  # history present
    gin[:, 5] = rng.choice(np.array([6.5, 7.0, 7.5], dtype=np.float32), size=n) / 20
    gin[:, 6:10] = rng.integers(0, 2, size=(n, 4))
    meta = np.zeros((n, 192), dtype=np.float32)
    meta[:, :8] = rng.random((n, 8), dtype=np.float32)

    rows: dict[str, np.ndarray] = {
        "binaryInputNCHWPacked": packed,
        "globalInputNC": gin,
        "policyTargetsNCMove": policy,
        "globalTargetsNC": gt,
        "scoreDistrN": score,
        "valueTargetsNCHW": value,
    }
    if with_q:
        q = np.zeros((n, 3, sq + 1), dtype=np.int16)
        q[:, 0] = np.where(searched, rng.integers(-10000, 10001, size=(n, sq + 1)), 0)
        q[:, 1] = np.where(searched, rng.integers(-3000, 3001, size=(n, sq + 1)), 0)
        q[:, 2] = np.where(searched, rng.integers(0, 10001, size=(n, sq + 1)), 0)
        rows["qValueTargetsNCMove"] = q
    rows["metadataInputNC"] = meta
    return rows


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
