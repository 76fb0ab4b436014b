"""Leela Chess Zero training data: V6 and V7 records, one game per ``.gz`` file, games bundled in ``.tar`` archives.

The layout (lc0's ``struct V6TrainingData`` in ``src/trainingdata/trainingdata_v6.h`` and ``V7TrainingData`` in
``trainingdata_v7.h``), packed (no padding), little-endian, in this order:

* ``version`` u32 (6 or 7), ``input_format`` u32;
* ``probabilities`` f32[1858], the policy target over lc0's 1858 moves, -1 for illegal moves (89% of the record);
* ``planes`` u64[104], the input bitboards;
* eight u8: ``castling_us_ooo``, ``castling_us_oo``, ``castling_them_ooo``, ``castling_them_oo``,
  ``side_to_move_or_enpassant``, ``rule50_count``, ``invariance_info``, ``dummy``;
* fifteen f32: ``root_q``, ``best_q``, ``root_d``, ``best_d``, ``root_m``, ``best_m``, ``plies_left``, ``result_q``,
  ``result_d``, ``played_q``, ``played_d``, ``played_m``, ``orig_q``, ``orig_d``, ``orig_m`` (the ``orig_*``
  are NaN when lc0 did not find the position in its cache);
* ``visits`` u32, ``played_idx`` u16, ``best_idx`` u16, ``policy_kld`` f32;
* V6 ends with ``reserved`` u32: 8,356 bytes a record.
* V7 has no ``reserved``; instead ``q_st`` f32, ``d_st`` f32, ``opp_played_idx`` u16, ``next_played_idx`` u16,
  ``reserved1`` .. ``reserved8`` f32: 8,396 bytes a record.

A game file is the gzip of its records one after another. Every field sits at an offset that is a multiple of its
size, so the converted (aligned) record keeps the same offsets and only rounds its size up to 8,360 / 8,400 bytes.

V6 and V7 differ in their fields, so they are different record schemas: converted into one directory, or mixed
in one dataset, the V6 rows take V7's schema with ``--like V7DIR --drop reserved --fill q_st=nan --fill d_st=nan
--fill opp_played_idx=0 --fill next_played_idx=0 --fill reserved1=0 ... --fill reserved8=0`` (or V7 rows V6's
with the opposite flags); see ``V6_TO_V7``.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpool.errors import ShardError
from mmpool.format.manifest import Schema

GAME_SUFFIX = ".gz"
ARCHIVE_SUFFIX = ".tar"
POLICY_SIZE = 1858
PLANES = 104
# NaN is a legitimate value here (not in lc0's cache); everywhere else it marks a broken record.
NAN_FIELDS = frozenset({"orig_q", "orig_d", "orig_m"})

_HEAD: list[tuple[str, str] | tuple[str, str, tuple[int, ...]]] = [
    ("version", "<u4"),
    ("input_format", "<u4"),
    ("probabilities", "<f4", (POLICY_SIZE,)),
    ("planes", "<u8", (PLANES,)),
    *[
        (name, "u1")
        for name in (
            "castling_us_ooo",
            "castling_us_oo",
            "castling_them_ooo",
            "castling_them_oo",
            "side_to_move_or_enpassant",
            "rule50_count",
            "invariance_info",
            "dummy",
        )
    ],
    *[
        (name, "<f4")
        for name in (
            "root_q",
            "best_q",
            "root_d",
            "best_d",
            "root_m",
            "best_m",
            "plies_left",
            "result_q",
            "result_d",
            "played_q",
            "played_d",
            "played_m",
            "orig_q",
            "orig_d",
            "orig_m",
        )
    ],
    ("visits", "<u4"),
    ("played_idx", "<u2"),
    ("best_idx", "<u2"),
    ("policy_kld", "<f4"),
]
V6_DTYPE = np.dtype([*_HEAD, ("reserved", "<u4")])  # packed: numpy adds no padding without align=True
V7_DTYPE = np.dtype(
    [
        *_HEAD,
        ("q_st", "<f4"),
        ("d_st", "<f4"),
        ("opp_played_idx", "<u2"),
        ("next_played_idx", "<u2"),
        *[(f"reserved{k}", "<f4") for k in range(1, 9)],
    ]
)
DTYPES: dict[int, np.dtype] = {6: V6_DTYPE, 7: V7_DTYPE}
assert V6_DTYPE.itemsize == 8356 and V7_DTYPE.itemsize == 8396

# The flags that give V6 rows V7's schema (``mmpool convert V6 DST --like V7DIR`` plus these).
V6_TO_V7: tuple[str, ...] = (
    "--drop reserved",
    "--fill q_st=nan",
    "--fill d_st=nan",
    "--fill opp_played_idx=0",
    "--fill next_played_idx=0",
    *(f"--fill reserved{k}=0" for k in range(1, 9)),
)


def fields_of(version: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """``{name: (dtype, per-record shape)}`` of a record version, in struct order."""
    return Schema.from_dtype(DTYPES[version]).field_specs()


@dataclass(frozen=True)
class Game:
    """One game: a ``.gz`` file, or a ``.gz`` member of a ``.tar`` archive (at ``offset``, ``size`` bytes).

    ``name`` is how messages and the manifest name it: the file's path relative to the source directory,
    ``archive.tar/member.gz`` for a member.
    """

    name: str
    path: Path
    member: str | None
    offset: int
    size: int
    version: int = 0
    rows: int = 0


def list_games(root: Path, files: Sequence[str]) -> list[Game]:
    """The games of ``.gz`` files and ``.tar`` archives (relative paths under ``root``), in the order given;
    archive members in archive order. Reads only tar headers."""
    games: list[Game] = []
    for rel in files:
        path = root / rel
        if not rel.lower().endswith(ARCHIVE_SUFFIX):
            games.append(Game(rel, path, None, 0, path.stat().st_size))
            continue
        try:
            with tarfile.open(path, "r:") as tar:
                for info in tar:
                    if info.isfile() and info.name.lower().endswith(GAME_SUFFIX):
                        games.append(Game(f"{rel}/{info.name}", path, info.name, info.offset_data, info.size))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ShardError(f"cannot read archive {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    return games


def _where(game: Game) -> str:
    if game.member is None:
        return f"game file {str(game.path)!r}"
    return f"game {game.member!r} in archive {str(game.path)!r}"


def _compressed(game: Game) -> bytes:
    with open(game.path, "rb") as f:
        f.seek(game.offset)
        data = f.read(game.size)
    if len(data) != game.size:
        raise ShardError(f"{_where(game)}: the archive ends inside it; the archive is truncated")
    return data


def scan_game(game: Game) -> Game:
    """Version and record count of a game from its first bytes and the gzip size trailer (no full decompress).

    Raises ShardError naming the file (and member) for unreadable data, an unknown version or a size that is
    not a whole number of records; ``read_game`` checks the same again on the full data.
    """
    try:
        with open(game.path, "rb") as f:
            f.seek(game.offset)
            head = f.read(min(game.size, 1 << 16))
            f.seek(game.offset + game.size - 4)
            trailer = f.read(4)
        if len(head) < 18 or len(trailer) != 4:
            raise ShardError(f"{_where(game)}: {game.size} bytes, too short for a gzip file")
        first = zlib.decompressobj(wbits=31).decompress(head, 4)
    except (OSError, zlib.error) as exc:
        raise ShardError(f"cannot read {_where(game)}: {type(exc).__name__}: {exc}") from exc
    if len(first) < 4:
        raise ShardError(f"{_where(game)} holds no record")
    version = int.from_bytes(first[:4], "little")
    if version not in DTYPES:
        raise ShardError(
            f"{_where(game)}: record 0 has version {version}; this reader knows lc0 training data "
            f"versions {sorted(DTYPES)} (V6TrainingData, V7TrainingData)"
        )
    # The trailer holds the uncompressed size mod 2**32; lc0 games are far smaller than 4 GiB.
    size = int.from_bytes(trailer, "little")
    return _checked_size(game, version, size)


def _checked_size(game: Game, version: int, size: int) -> Game:
    itemsize = DTYPES[version].itemsize
    rows, rest = divmod(size, itemsize)
    if rest or rows == 0:
        raise ShardError(
            f"{_where(game)}: {size} bytes uncompressed, not a whole number of V{version} records of "
            f"{itemsize} bytes (the file is cut after record {rows - 1 if rows else 0}, or is not lc0 training data)"
        )
    return Game(game.name, game.path, game.member, game.offset, game.size, version, rows)


def read_game(game: Game, allow_nonfinite: bool = False) -> np.ndarray:
    """The records of a scanned game as a packed structured array, checked: whole records, every record of the
    game's version, and (unless ``allow_nonfinite``) no NaN/inf outside ``orig_q``/``orig_d``/``orig_m``."""
    try:
        raw = gzip.decompress(_compressed(game))
    except (OSError, EOFError, zlib.error) as exc:
        raise ShardError(f"cannot read {_where(game)}: {type(exc).__name__}: {exc}") from exc
    if len(raw) != game.rows * DTYPES[game.version].itemsize:
        _checked_size(game, game.version, len(raw))  # raises for a cut file
        raise ShardError(f"{_where(game)} changed since it was scanned: {len(raw)} bytes uncompressed")
    records = np.frombuffer(raw, dtype=DTYPES[game.version])
    bad = np.flatnonzero(records["version"] != game.version)
    if len(bad):
        raise ShardError(
            f"{_where(game)}: record {bad[0]} has version {records['version'][bad[0]]}, record 0 has "
            f"{game.version}; a game holds records of one version"
        )
    if not allow_nonfinite:
        check_records(records, _where(game))
    return records


def check_records(records: np.ndarray, where: str) -> None:
    """Raise ShardError naming the record and field of the first NaN/inf outside ``NAN_FIELDS``."""
    for name in records.dtype.names or ():
        if name in NAN_FIELDS or records.dtype[name].base.kind != "f":
            continue
        values = records[name].reshape(len(records), -1)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))
            bad = values[row][~np.isfinite(values[row])][0]
            raise ShardError(
                f"{where}: record {row} field {name!r} holds a non-finite value ({bad}); lc0 writes NaN only in "
                f"{', '.join(sorted(NAN_FIELDS))}: fix or drop that game (or convert with --allow-nonfinite)"
            )


# --------------------------------------------------------------------------- writing (demo data, tests, benchmarks)


def make_records(rows: int, version: int = 6, seed: int = 0, game: int = 0) -> np.ndarray:
    """``rows`` records of a plausible game: a policy over ~30 legal moves (-1 elsewhere), random bitboards,
    ``orig_*`` NaN in every third record as lc0 writes them for positions not in its cache; ``visits`` holds
    ``game``, ``played_idx`` the ply, so every record of a data set can be told apart."""
    rng = np.random.default_rng([seed, game])
    rec = np.zeros(rows, dtype=DTYPES[version])
    rec["version"] = version
    rec["input_format"] = 1
    probs = np.full((rows, POLICY_SIZE), -1.0, dtype=np.float32)
    legal = rng.integers(0, POLICY_SIZE, size=(rows, 30))
    weights = rng.random((rows, 30), dtype=np.float32)
    np.put_along_axis(probs, legal, weights / weights.sum(axis=1, keepdims=True), axis=1)
    rec["probabilities"] = probs
    rec["planes"] = rng.integers(0, 2**63, size=(rows, PLANES), dtype=np.uint64)
    rec["rule50_count"] = np.arange(rows) % 100
    rec["side_to_move_or_enpassant"] = np.arange(rows) % 2
    for name in ("root_q", "best_q", "played_q", "result_q", "orig_q"):
        rec[name] = rng.uniform(-1, 1, rows)
    for name in ("root_d", "best_d", "played_d", "result_d", "orig_d"):
        rec[name] = rng.uniform(0, 1, rows)
    for name in ("root_m", "best_m", "played_m", "orig_m", "plies_left"):
        rec[name] = rng.uniform(0, 200, rows)
    for name in NAN_FIELDS:
        rec[name][::3] = np.nan
    rec["visits"] = game
    rec["played_idx"] = np.arange(rows)
    rec["best_idx"] = rng.integers(0, POLICY_SIZE, rows)
    rec["policy_kld"] = rng.random(rows)
    return rec


def game_bytes(records: np.ndarray, level: int = 1) -> bytes:
    """A game file's content: the gzip of the packed records (lc0 compresses its games with zlib level 1)."""
    return gzip.compress(np.ascontiguousarray(records).tobytes(), compresslevel=level, mtime=0)


def write_game(path: Path, records: np.ndarray) -> Path:
    """Write one ``.gz`` game file."""
    Path(path).write_bytes(game_bytes(records))
    return Path(path)


def write_archive(path: Path, games: Iterable[tuple[str, np.ndarray]]) -> Path:
    """Write a ``.tar`` of ``.gz`` games ``(member name, records)``, as lc0's training data is distributed."""
    with tarfile.open(path, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, records in games:
            data = game_bytes(records)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Path(path)
