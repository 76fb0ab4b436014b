"""Reading legacy training shards (.npz, .npy, .pt/.pth, .h5/.hdf5) as plain numpy arrays.

A shard is one file holding named arrays that share their first dimension (rows); which files of a directory
are shards, and their numbers, is ``mmpool.convert.sources``'s job. ``scan_shard``
reads only headers/metadata so a whole directory can be validated cheaply before any conversion;
``read_shard`` loads the data and re-checks it against the scan.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmpool.errors import ShardError

__all__ = [
    "SHARD_SUFFIXES",
    "ShardInfo",
    "check_finite",
    "read_shard",
    "scan_shard",
]

SHARD_SUFFIXES: tuple[str, ...] = (".npz", ".npy", ".pt", ".pth", ".h5", ".hdf5")

# Exceptions that numpy / zipfile / h5py raise for unreadable, truncated or corrupt files.
_READ_ERRORS = (
    zipfile.BadZipFile,
    ValueError,
    OSError,
    EOFError,
    KeyError,
    TypeError,
    pickle.UnpicklingError,
    RuntimeError,
)

Fields = dict[str, tuple[np.dtype, tuple[int, ...]]]


@dataclass(frozen=True)
class ShardInfo:
    """What ``scan_shard`` learned about one shard without reading its data.

    ``fields`` maps each array name to (dtype, per-row shape), i.e. the array's shape without
    its first dimension, which is ``rows`` for every field.
    """

    path: Path
    number: int
    rows: int
    fields: dict[str, tuple[np.dtype, tuple[int, ...]]]


# --------------------------------------------------------------------------- helpers


def _norm_dtype(dtype: np.dtype) -> np.dtype:
    """Spell native byte order as '=' so '<f4' and '=f4' compare and print the same."""
    dtype = np.dtype(dtype)
    if dtype.byteorder in "<>" and dtype.isnative:
        return dtype.newbyteorder("=")
    return dtype


def _check_dtype(path: Path, name: str, dtype: np.dtype) -> None:
    # Object / variable-length arrays cannot be memory-mapped into fixed-size records.
    if dtype.hasobject or dtype.kind == "T" or dtype.itemsize == 0:
        raise ShardError(
            f"shard {str(path)!r}: field {name!r} has dtype {dtype} (object, variable-length or "
            f"unsized); only fixed-size numeric/bytes dtypes can be pooled - convert it first"
        )


def _make_info(path: Path, number: int, shapes: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> ShardInfo:
    """Validate full shapes (name -> (dtype, shape)) and build the ShardInfo."""
    if not shapes:
        raise ShardError(f"shard {str(path)!r} holds no arrays")
    fields: Fields = {}
    first: tuple[str, int] | None = None
    for name, (dtype, shape) in shapes.items():
        _check_dtype(path, name, dtype)
        if len(shape) == 0:
            raise ShardError(
                f"shard {str(path)!r}: field {name!r} is a 0-d (scalar) array; every field "
                f"needs a first dimension holding the rows"
            )
        if first is None:
            first = (name, shape[0])
        elif shape[0] != first[1]:
            raise ShardError(
                f"shard {str(path)!r}: fields have different first dimensions: {first[0]!r} has "
                f"{first[1]} rows but {name!r} has {shape[0]}"
            )
        fields[name] = (_norm_dtype(dtype), tuple(int(s) for s in shape[1:]))
    assert first is not None
    if first[1] == 0:
        raise ShardError(f"shard {str(path)!r} is an empty shard (0 rows)")
    return ShardInfo(path=path, number=number, rows=int(first[1]), fields=fields)


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SHARD_SUFFIXES:
        raise ShardError(
            f"shard {str(path)!r} has unsupported suffix {path.suffix!r}; accepted suffixes "
            f"are {', '.join(SHARD_SUFFIXES)}"
        )
    return {".pth": ".pt", ".hdf5": ".h5"}.get(suffix, suffix)


def _structured_fields(
    path: Path, shape: tuple[int, ...], dtype: np.dtype
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Full shapes of the fields of a structured .npy array (field subarray dims appended)."""
    if dtype.names is None:
        raise ShardError(
            f"shard {str(path)!r}: a .npy shard must hold ONE structured array whose fields are "
            f"the arrays; got a plain {dtype} array of shape {shape}"
        )
    out = {}
    fields: Any = dtype.fields or {}
    for name in dtype.names:
        sub = fields[name][0]
        out[name] = (sub.base, tuple(shape) + tuple(sub.shape))
    return out


def _header(fp: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Read a .npy header from an open binary file: (shape, dtype)."""
    version = np.lib.format.read_magic(fp)
    # v3 only differs from v2 by utf-8 field names; the 2.0 reader handles ascii ones.
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    return tuple(shape), dtype


def _npy_shapes(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    with open(path, "rb") as fp:
        shape, dtype = _header(fp)
        offset = fp.tell()
    fields = _structured_fields(path, shape, dtype)
    # Check per field first so object fields are reported by name, then the size.
    for name, (sub, _shape) in fields.items():
        _check_dtype(path, name, sub)
    expected = offset + int(np.prod(shape)) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise ShardError(f"shard {str(path)!r} is truncated: {actual} bytes, its header needs {expected}")
    return fields


# --- .pt: torch.load with weights_only, numpy arrays allowed through a minimal allow-list.


def _torch_load(path: Path) -> Any:
    import torch  # lazy: torch is heavy and only needed for .pt shards

    # numpy arrays pickle through _reconstruct, ndarray, dtype and the dtype classes; these
    # only build arrays, so allowing them keeps weights_only safe (no arbitrary objects).
    # Found through public API (the pickle protocol, np.typecodes): numpy 1.24-1.26 have neither np._core
    # nor np.dtypes, and numpy 2 moved _reconstruct from numpy.core to numpy._core.
    reconstruct = np.zeros(1).__reduce__()[0]
    dtype_classes = {type(np.dtype(code)) for code in np.typecodes["All"]}
    allowed: list[Any] = [
        np.ndarray,
        np.dtype,
        *dtype_classes,
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),  # files written with numpy 1.x
        (reconstruct, "numpy._core.multiarray._reconstruct"),  # files written with numpy 2.x
    ]
    # mmap needs the zip format of torch.save; legacy (pre-1.6) files are read fully instead.
    mmap = zipfile.is_zipfile(path)
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def _pt_arrays(path: Path) -> dict[str, np.ndarray]:
    """Load a .pt shard as name -> numpy array (views of mmap'd tensors where possible)."""
    import torch

    try:
        obj = _torch_load(path)
    except Exception as exc:  # unpickling untrusted bytes can fail in many ways; all mean corrupt
        raise ShardError(f"cannot read shard {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict):
        raise ShardError(f"shard {str(path)!r} holds a {type(obj).__name__}, not a dict of name -> tensor/array")
    out: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise ShardError(f"shard {str(path)!r} has a non-string key {name!r}")
        if isinstance(value, torch.Tensor):
            try:
                out[name] = value.detach().numpy()
            except (TypeError, RuntimeError) as exc:  # bfloat16, sparse, quantized ...
                raise ShardError(
                    f"shard {str(path)!r}: field {name!r} (tensor of dtype {value.dtype}, layout "
                    f"{value.layout}) has no numpy equivalent: {exc}"
                ) from exc
        elif isinstance(value, np.ndarray):
            out[name] = value
        else:
            raise ShardError(
                f"shard {str(path)!r}: field {name!r} is a {type(value).__name__}, not a tensor or numpy array"
            )
    return out


# --- .npz: read each member's .npy header straight from the zip.


def _npz_shapes(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    shapes = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.infolist():
            if member.is_dir():
                continue
            if not member.filename.endswith(".npy"):
                raise ShardError(f"shard {str(path)!r}: member {member.filename!r} is not a .npy array")
            with zf.open(member) as fp:
                shape, dtype = _header(fp)
            shapes[member.filename[: -len(".npy")]] = (dtype, shape)
    return shapes


def _creation_order(fh: h5py.File) -> list[str]:
    """Names in the order they were written where the file tracks it (``track_order=True``), else h5py's order
    (alphabetical). Asked for explicitly: h5py before 3.10 lists alphabetically even when the order is tracked."""
    names: list[str] = []
    try:
        fh.id.links.iterate(lambda n: names.append(n.decode()), idx_type=h5py.h5.INDEX_CRT_ORDER)
    except (KeyError, RuntimeError, ValueError):  # no creation-order index in this file
        return list(fh.keys())
    return names


def _h5_datasets(path: Path, fh: h5py.File) -> dict[str, h5py.Dataset]:
    out = {}
    for name in _creation_order(fh):
        item = fh[name]
        if not isinstance(item, h5py.Dataset):
            continue  # groups hold metadata, not rows
        if h5py.check_vlen_dtype(item.dtype) is not None or item.dtype.hasobject:
            raise ShardError(
                f"shard {str(path)!r}: dataset {name!r} is variable-length ({item.dtype}); only "
                f"fixed-size dtypes can be pooled - store fixed-length strings/arrays instead"
            )
        if item.shape is None:
            raise ShardError(f"shard {str(path)!r}: dataset {name!r} is empty (null dataspace)")
        out[name] = item
    return out


# --------------------------------------------------------------------------- scan / read


def scan_shard(path: Path, number: int) -> ShardInfo:
    """Read the header/metadata of one shard (not its data) and validate it.

    Raises ShardError, naming the file and field, for unreadable/corrupt files, object or
    variable-length dtypes, 0-d arrays, differing first dimensions, empty or array-less shards.
    """
    path = Path(path)
    kind = _kind(path)
    try:
        if kind == ".npz":
            shapes = _npz_shapes(path)
        elif kind == ".npy":
            shapes = _npy_shapes(path)
        elif kind == ".h5":
            with h5py.File(path, "r") as fh:
                shapes = {n: (d.dtype, tuple(d.shape)) for n, d in _h5_datasets(path, fh).items()}
        else:
            # mmap'd load: tensors are not read, only their storage is mapped.
            shapes = {n: (a.dtype, tuple(a.shape)) for n, a in _pt_arrays(path).items()}
    except ShardError:
        raise
    except _READ_ERRORS as exc:
        raise ShardError(f"cannot read shard {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    return _make_info(path, number, shapes)


def _load_arrays(path: Path, kind: str) -> dict[str, np.ndarray]:
    if kind == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {n: npz[n] for n in npz.files}
    if kind == ".npy":
        # No mmap: a plain read reports truncation as an error instead of SIGBUS later.
        arr = np.load(path, allow_pickle=False)
        _structured_fields(path, arr.shape, arr.dtype)
        return {n: arr[n] for n in arr.dtype.names}
    if kind == ".h5":
        with h5py.File(path, "r") as fh:
            return {n: d[()] for n, d in _h5_datasets(path, fh).items()}
    return _pt_arrays(path)


def read_shard(info: ShardInfo) -> dict[str, np.ndarray]:
    """Load every array of a scanned shard as a C-contiguous numpy array (structured .npy:
    one array per field), checking that the file still matches ``info``."""
    path = info.path
    try:
        raw = _load_arrays(path, _kind(path))
    except ShardError:
        raise
    except _READ_ERRORS as exc:
        raise ShardError(f"cannot read shard {str(path)!r}: {type(exc).__name__}: {exc}") from exc
    if set(raw) != set(info.fields):
        raise ShardError(
            f"shard {str(path)!r} changed since it was scanned: it holds fields {sorted(raw)}, "
            f"expected {sorted(info.fields)}"
        )
    out: dict[str, np.ndarray] = {}
    for name, (dtype, row_shape) in info.fields.items():
        arr = raw[name]
        if _norm_dtype(arr.dtype) != dtype or tuple(arr.shape) != (info.rows, *row_shape):
            raise ShardError(
                f"shard {str(path)!r} changed since it was scanned: field {name!r} is "
                f"{arr.dtype} {arr.shape}, expected {dtype} {(info.rows, *row_shape)}"
            )
        # Copy: detaches from mmaps/open files and makes structured-field views contiguous. An array that owns its
        # contiguous memory already (.npz, .h5 reads) is kept: a copy would be one more pass (~13% of a conversion).
        owned = type(arr) is np.ndarray and arr.flags.owndata and arr.flags.c_contiguous
        out[name] = arr if owned else np.array(arr, order="C", copy=True)
    return out


# --------------------------------------------------------------------------- checks


def check_finite(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Raise ShardError naming the file, field and first row holding a NaN/inf (float fields)."""
    for name, arr in arrays.items():
        if arr.dtype.kind not in "fc" or arr.size == 0:
            continue
        finite = np.isfinite(arr).reshape(len(arr), -1).all(axis=1)
        if not finite.all():
            row = int(np.argmin(finite))  # first False
            values = np.asarray(arr[row]).ravel()
            bad = values[~np.isfinite(values)][0]
            raise ShardError(
                f"shard {str(path)!r}: field {name!r} row {row} holds a non-finite value ({bad}); fix or drop that row"
            )
