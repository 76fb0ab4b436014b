"""Symmetry augmentation of board positions (numpy only, vectorised over the batch).

Augmentation protocol
---------------------
An augmentation is any object with:

``factor: int``
    Number of symmetries. Every position is shown once under each symmetry id
    ``0 .. factor-1`` per epoch.
``apply(batch: dict[str, np.ndarray], symmetry_ids: np.ndarray) -> dict[str, np.ndarray]``
    Vectorised transform of a whole batch (leading axis = examples); example ``i`` is
    transformed by ``symmetry_ids[i]``. It must not modify its input arrays in place (they
    may be read-only memmap views) and returns a new dict; fields it does not touch may be
    passed through as they are.
``validate(fields: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> None`` (optional)
    Called once by the dataset with the schema (field name -> (dtype, per-example shape));
    raises :class:`~mmpool.errors.ConfigError` if the augmentation cannot work on it.

:class:`Augmentation` states this as a ``typing.Protocol``; :class:`Dihedral` is the
built-in implementation (rotations and mirrors of the board).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from mmpool.errors import ConfigError

__all__ = ["Augmentation", "Dihedral", "packed_bytes"]


@runtime_checkable
class Augmentation(Protocol):
    """Structural type of an augmentation (see the module docstring)."""

    factor: int

    def apply(self, batch: dict[str, np.ndarray], symmetry_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Return a new batch with example ``i`` transformed by ``symmetry_ids[i]``."""
        ...


def _square_maps(h: int, w: int, factor: int) -> np.ndarray:
    """Image square of every square under symmetries ``0..factor-1``; shape (factor, h*w)."""
    r, c = np.divmod(np.arange(h * w), w)
    maps = np.empty((factor, h * w), dtype=np.intp)
    for s in range(factor):
        rr, cc = (c, r) if s & 4 else (r, c)  # transpose first (only used when h == w)
        if s & 1:
            cc = w - 1 - cc
        if s & 2:
            rr = h - 1 - rr
        maps[s] = rr * w + cc
    return maps


_ROW_INTS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _transform_planes(x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """A copy of ``x`` with symmetry ``ids[i]`` applied to the last two axes of ``x[i]``.

    Three whole-batch steps, each on the examples with its bit set: transpose (bit 2), then reverse the rows
    (bit 1) and the columns (bit 0), which commute. Rows are reversed as whole rows, and columns of one-byte
    planes 2, 4 or 8 wide by a byte swap of each row, so only the transpose copies element by element: ~1.6x
    faster than one strided copy per symmetry (1024 positions, 4 planes of 8x8 bytes).
    """
    y = np.empty(x.shape, dtype=x.dtype)
    y[...] = x
    w = x.shape[-1]
    sel = np.flatnonzero(ids & 4)
    if len(sel):
        y[sel] = np.ascontiguousarray(np.swapaxes(y[sel], -1, -2))
    sel = np.flatnonzero(ids & 2)
    if len(sel):
        rows = y.view(np.dtype((np.void, w * y.itemsize))).reshape(y.shape[:-1])  # one element per row
        rows[sel] = rows[sel][..., ::-1]
    sel = np.flatnonzero(ids & 1)
    if len(sel):
        if y.itemsize == 1 and w in _ROW_INTS:
            ints = y.view(_ROW_INTS[w]).reshape(y.shape[:-1])  # one integer per row
            ints[sel] = ints[sel].byteswap()
        else:
            y[sel] = y[sel][..., ::-1]
    return y


def packed_bytes(board: tuple[int, int]) -> int:
    """Bytes of one bit-packed plane of ``board``: ceil(H*W/8) (KataGo's 19x19 planes: 46)."""
    return -(-board[0] * board[1] // 8)


def _packed_tables(maps: np.ndarray, nbytes: int) -> np.ndarray:
    """Byte lookup tables for bit-packed planes, shape (factor, nbytes, 256, words) uint64.

    ``tables[s, i, v]`` is the packed plane (``words`` native uint64, i.e. ``8 * words`` bytes in memory order)
    holding only the bits of input byte ``i`` with value ``v``, moved by symmetry ``s``; so a transformed plane is
    the OR over its input bytes of their table rows. Bits past the board are never set, whatever the input's
    padding held.
    """
    factor, hw = maps.shape
    words = -(-nbytes // 8)
    values = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1)  # (256, 8), bit k = 2**(7-k)
    tables = np.zeros((factor, nbytes, 256, words), dtype=np.uint64)
    for s in range(factor):
        for i in range(nbytes):
            bits = np.zeros((256, 64 * words), dtype=np.uint8)
            for k in range(min(8, hw - 8 * i)):
                bits[:, maps[s, 8 * i + k]] = values[:, k]
            tables[s, i] = np.packbits(bits, axis=1).view(np.uint64)
    return tables


def _transform_packed(x: np.ndarray, ids: np.ndarray, tables: np.ndarray) -> np.ndarray:
    """A copy of packed planes ``x`` (N, ..., nbytes) with symmetry ``ids[i]`` applied to every plane of ``x[i]``.

    The examples are sorted by symmetry; each symmetry's planes are ORed together from ``tables`` one input-byte
    column at a time, so the Python loop runs factor x nbytes times per batch, never per example. With 1024
    KataGo rows (22 planes of 46 bytes), ~31 ms against ~36 ms for unpacking, permuting the squares by a map and
    packing again; within the noise of a shared machine (tools/bench_katago.py, part b).
    """
    n, nbytes = len(x), x.shape[-1]
    order = np.argsort(ids, kind="stable")
    counts = np.bincount(ids, minlength=tables.shape[0])
    per = int(np.prod(x.shape[1:-1], dtype=np.int64))  # planes per example
    columns = np.ascontiguousarray(np.asarray(x)[order].reshape(n * per, nbytes).T)  # (nbytes, planes)
    acc = np.zeros((n * per, tables.shape[-1]), dtype=np.uint64)
    part = np.empty_like(acc)
    start = 0
    for s in np.flatnonzero(counts).tolist():
        stop = start + int(counts[s]) * per
        a, t = acc[start:stop], part[start:stop]
        for i in range(nbytes):
            np.take(tables[s, i], columns[i, start:stop], axis=0, out=t)
            a |= t
        start = stop
    y = np.empty(x.shape, dtype=np.uint8)
    y[order] = acc.view(np.uint8)[:, :nbytes].reshape((n,) + x.shape[1:])
    return y


def _looks_packed(dtype: np.dtype, shape: tuple[int, ...]) -> int | None:
    """The side n of an n x n board whose bit-packed planes are ``shape[-1]`` bytes, if a uint8 non-square
    field looks like that (KataGo's (22, 46): n = 19); None otherwise."""
    if np.dtype(dtype) != np.uint8 or len(shape) < 2 or shape[-1] == shape[-2]:
        return None
    nbytes = shape[-1]
    for n in range(2, 3 * nbytes + 2):
        if packed_bytes((n, n)) == nbytes and n != nbytes:
            return n
    return None


class Dihedral:
    """Rotations and mirrors of the board, bit-coded so smaller settings nest in larger ones.

    Symmetry id bits: bit 2 = transpose ``(r, c) -> (c, r)`` applied first, then bit 0 =
    mirror left-right ``c -> W-1-c``, bit 1 = mirror up-down ``r -> H-1-r``. Ids 0..3 keep
    the board shape; ids 4..7 need a square board.

    Every named field of one example is transformed by the same symmetry. :meth:`validate` refuses fields that do
    not agree on one board, and any field that looks like board data (last two axes H x W, a last axis of H*W or
    H*W+1 entries, or uint8 with ceil(H*W/8) bytes: packed planes) which is not named: a Dihedral that moves the
    targets but not the inputs would train on garbage without a sound. List such fields in ``untouched`` if they
    really are not board data.

    Args:
        planes: fields whose last two axes are the board (H, W).
        packed_planes: bit-packed plane fields and their board, e.g. KataGo's
            ``{"binaryInputNCHWPacked": (19, 19)}``: uint8 ``(..., ceil(H*W/8))``, each plane's H*W bits big-endian
            in row-major order (``np.packbits`` over the flattened squares), padded with zero bits. They stay
            packed (same dtype and shape, padding bits zero); unpack them with ``mmpool.unpack_planes``.
        square_indices: integer fields holding a square index ``r*W + c``; values outside
            ``[0, H*W)`` (pass, -1, ...) are left unchanged.
        square_vectors: fields whose last axis starts with H*W per-square values (row-major);
            entries after the first H*W (pass) are left unchanged.
        symmetries: 8 (full group, square board), 4 (shape-preserving), 2 (identity and
            left-right mirror) or 1 (identity).
        board: (H, W), or None to take it from ``packed_planes`` or else the first planes field.
        untouched: fields that look like board data but must pass through unchanged.
    """

    def __init__(
        self,
        planes: tuple[str, ...] | list[str] = ("planes",),
        square_indices: tuple[str, ...] | list[str] = (),
        square_vectors: tuple[str, ...] | list[str] = (),
        symmetries: int = 8,
        board: tuple[int, int] | None = None,
        packed_planes: dict[str, tuple[int, int]] | None = None,
        untouched: tuple[str, ...] | list[str] = (),
    ) -> None:
        if symmetries not in (1, 2, 4, 8):
            raise ConfigError(f"Dihedral: symmetries={symmetries!r} is not supported; use 1, 2, 4 or 8")
        self.planes = tuple(planes)
        self.packed_planes: dict[str, tuple[int, ...]] = {k: tuple(v) for k, v in (packed_planes or {}).items()}
        self.square_indices = tuple(square_indices)
        self.square_vectors = tuple(square_vectors)
        self.untouched = tuple(untouched)
        self.factor: int = int(symmetries)
        named = self.planes + tuple(self.packed_planes) + self.square_indices + self.square_vectors + self.untouched
        twice = sorted({n for n in named if named.count(n) > 1})
        if twice:
            raise ConfigError(f"Dihedral: fields {twice} are named more than once; name each field in one argument")
        self.board: tuple[int, int] | None = None
        self._maps: np.ndarray | None = None
        self._tables: np.ndarray | None = None
        sources: list[tuple[str, tuple[int, ...]]] = [("board argument", tuple(board))] if board is not None else []
        sources += [(f"packed_planes field {k!r}", v) for k, v in self.packed_planes.items()]
        for source, b in sources:
            if self.board is None:
                self._set_board(tuple(b), source)
            elif tuple(b) != self.board:
                raise ConfigError(
                    f"Dihedral: board {tuple(b)} from {source} disagrees with board {self.board} from {sources[0][0]}; "
                    "all fields must be on one board"
                )
        if self.board is None and not self.planes:
            raise ConfigError(
                "Dihedral: give board=(H, W), packed_planes={name: (H, W)} or at least one planes field to infer it from"
            )
        # The group law does not depend on the board size, so derive it on a 3x3 board.
        ref = _square_maps(3, 3, self.factor)
        rows = {m.tobytes(): s for s, m in enumerate(ref)}
        self._table = np.array(
            [[rows[ref[b][ref[a]].tobytes()] for b in range(self.factor)] for a in range(self.factor)],
            dtype=np.intp,
        )
        # inverse[a] is the b with a then b == identity (id 0).
        self.inverse: np.ndarray = np.argmax(self._table == 0, axis=1).astype(np.intp)

    def _set_board(self, board: tuple[int, ...], source: str) -> None:
        if len(board) != 2 or min(board) < 1:
            raise ConfigError(f"Dihedral: board from {source} must be (H, W) with H, W >= 1, got {board}")
        h, w = int(board[0]), int(board[1])
        if h != w and self.factor > 4:
            raise ConfigError(
                f"Dihedral: symmetries={self.factor} needs a square board but the board is {h}x{w}; "
                "the maximum for a non-square board is 4"
            )
        self.board = (h, w)
        self._maps = _square_maps(h, w, self.factor)
        if self.packed_planes:
            self._tables = _packed_tables(self._maps, packed_bytes(self.board))

    @property
    def square_map(self) -> np.ndarray:
        """(factor, H*W) intp; ``square_map[s, q]`` is the image of square ``q`` under ``s``."""
        if self._maps is None:
            raise ConfigError("Dihedral: the board is not known yet; pass board= or call validate()/apply()")
        return self._maps

    def compose(self, a: int, b: int) -> int:
        """Id of the symmetry equal to applying ``a`` first and then ``b``."""
        return int(self._table[a, b])

    def validate(self, fields: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
        """Check the schema (name -> (dtype, per-example shape)); raise ConfigError if unusable.

        Refuses a named field the schema lacks, fields that do not agree on one board, and board-like fields
        that are not named (see the class docstring).
        """
        named = self.planes + tuple(self.packed_planes) + self.square_indices + self.square_vectors + self.untouched
        missing = [name for name in named if name not in fields]
        if missing:
            raise ConfigError(f"Dihedral: fields {missing} are not in the data; available: {sorted(fields)}")
        spec = {name: (np.dtype(fields[name][0]), tuple(fields[name][1])) for name in fields}
        for name in self.planes:
            if len(spec[name][1]) < 2:
                raise ConfigError(f"Dihedral: planes field {name!r} needs at least 2 axes, has shape {spec[name][1]}")
        if self.board is None:
            name = self.planes[0]
            side = _looks_packed(*spec[name])
            if side is not None:
                raise ConfigError(
                    f"Dihedral: planes field {name!r} is uint8 {spec[name][1]}: that looks like bit-packed planes of a "
                    f"{side}x{side} board, which planes= would garble; pass packed_planes={{{name!r}: ({side}, {side})}}"
                    f" instead, or board={spec[name][1][-2:]} if it really is a board of that shape"
                )
            self._set_board(spec[name][1][-2:], f"planes field {name!r}")
        board = self.board
        assert board is not None  # set above or in __init__
        hw, nbytes = board[0] * board[1], packed_bytes(board)
        where = f"the board is {board[0]}x{board[1]}"
        for name in self.planes:
            shape = spec[name][1]
            if shape[-2:] != board:
                hint = ""
                if np.dtype(spec[name][0]) == np.uint8 and shape[-1] == nbytes:
                    hint = f"; it looks bit-packed: pass packed_planes={{{name!r}: {board}}} instead"
                raise ConfigError(f"Dihedral: planes field {name!r} has shape {shape} but {where}{hint}")
        for name in self.packed_planes:
            dtype, shape = spec[name]
            if dtype != np.uint8 or len(shape) < 1 or shape[-1] != nbytes:
                raise ConfigError(
                    f"Dihedral: packed_planes field {name!r} is {dtype} {shape}, but packed planes of {where} are "
                    f"uint8 with a last axis of ceil({hw}/8) = {nbytes} bytes"
                )
        for name in self.square_indices:
            if not np.issubdtype(spec[name][0], np.integer):
                raise ConfigError(f"Dihedral: square_indices field {name!r} must be integer, is {spec[name][0]}")
        for name in self.square_vectors:
            shape = spec[name][1]
            if len(shape) < 1 or shape[-1] < hw:
                raise ConfigError(
                    f"Dihedral: square_vectors field {name!r} has shape {shape}; its last axis must be >= {hw} "
                    f"({where})"
                )
        board_like = [
            f"{name!r} {dtype} {shape}"
            for name, (dtype, shape) in spec.items()
            if name not in named
            and (
                shape[-2:] == board
                or (len(shape) >= 1 and shape[-1] in (hw, hw + 1))
                or (dtype == np.uint8 and len(shape) >= 1 and shape[-1] == nbytes)
            )
        ]
        if board_like:
            raise ConfigError(
                f"Dihedral: {', '.join(board_like)} look like board data of the {board[0]}x{board[1]} board "
                f"(planes, per-square vectors or {nbytes}-byte packed planes) but would not be transformed, so they "
                "would disagree with the fields that are; name them in planes=, packed_planes= or square_vectors=, "
                "or in untouched= if they are not board data"
            )

    def apply(self, batch: dict[str, np.ndarray], symmetry_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Return a new batch with example ``i`` transformed by ``symmetry_ids[i]``."""
        ids = np.asarray(symmetry_ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise ConfigError(f"Dihedral: symmetry_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.factor):
            raise ConfigError(f"Dihedral: symmetry_ids must be in [0, {self.factor}), got {ids.min()}..{ids.max()}")
        if self.board is None:
            self.validate({k: (v.dtype, v.shape[1:]) for k, v in batch.items()})
        for name in self.planes + tuple(self.packed_planes) + self.square_indices + self.square_vectors:
            if name not in batch:
                raise ConfigError(f"Dihedral: field {name!r} is not in the batch; available: {sorted(batch)}")
            if len(batch[name]) != len(ids):
                raise ConfigError(f"Dihedral: field {name!r} has {len(batch[name])} examples but {len(ids)} ids")
        maps = self.square_map
        hw = maps.shape[1]
        out = dict(batch)
        for name in self.planes:
            out[name] = _transform_planes(batch[name], ids)
        for name in self.packed_planes:
            out[name] = _transform_packed(batch[name], ids, self._tables)  # type: ignore[arg-type]  # set with board
        for name in self.square_indices:
            v = np.asarray(batch[name])
            sid = ids.reshape((-1,) + (1,) * (v.ndim - 1))
            inside = (v >= 0) & (v < hw)
            mapped = maps[sid, np.where(inside, v, 0)]
            out[name] = np.where(inside, mapped, v).astype(v.dtype, copy=False)
        for name in self.square_vectors:
            v = np.asarray(batch[name])
            y = np.array(v, copy=True)  # keeps the entries after H*W (e.g. pass) as they were
            # The squares as (..., H, W) planes: whole-row moves and one transpose, ~4x faster than a gather by
            # square map (1024 KataGo rows, policy + q-values).
            squares = v[..., :hw].reshape(v.shape[:-1] + self.board)  # type: ignore[operator]  # board is set
            y[..., :hw] = _transform_planes(squares, ids).reshape(v.shape[:-1] + (hw,))
            out[name] = y
        return out
