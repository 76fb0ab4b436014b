"""The on-disk format of a converted directory (version 1), described here and nowhere else.

A converted directory holds:

``mmpool.json`` -- the manifest, UTF-8 JSON::

    {"format": "mmpool", "version": 1,
     "pack_format": "npy" | "hdf5",
     "schema": {"itemsize": 280,
                "fields": [{"name": "planes", "dtype": "|u1", "shape": [4, 8, 8], "offset": 0}, ...]},
     "packs":  [{"file": "pack-00000.npy", "rows": 400000, "bytes": 112004096, "data_offset": 4096}, ...],
     "shards": [{"number": 42, "source": "shard_00042.npz", "pack": 0, "first_row": 0,
                 "rows": 50000, "crc32": 1234567890}, ...],
     "numbering": "last-integer"}

Optional keys, written only when they apply (a manifest without them is read as before):

* ``numbering`` -- how shard numbers were given (``mmpool.convert.sources``): ``"last-integer"`` (the last integer of
  the file name; what a manifest without the key means) or ``"order:natural"``, ``"order:name"``,
  ``"order:mtime"``, ``"order:number"``: new files numbered in that order after the highest number in use.
  Numbers once given never change.
* shard ``source`` -- the input file's path relative to the source directory (``selfplay/m1/tdata/X.npz``);
  for shards made of many game files (lc0), the first game's name.
* shard ``adapted`` -- what was done to the shard's fields to give it the directory's schema, as a list of
  strings: ``"pad globalTargetsNC (64,)->(80,)"`` (zeros appended on the last axis), ``"fill
  qValueTargetsNCMove=0"`` (a field the source lacked, every element set to the value), ``"drop
  metadataInputNC"`` (a source field left out).
* pack ``sources`` -- the name of a JSON file beside the pack (``pack-00000.sources.json``) for shards built
  from many input files (lc0 games): ``{"shards": [{"number": 7, "parts": [["a.tar/g1.gz", 0],
  ["a.tar/g2.gz", 118], ...]}, ...]}``, the input file of each of a shard's rows as (name, first row inside
  the shard). It is written (atomically) before the manifest names it.

The converter's options that shape these keys (``--recursive``, ``--order``, ``--like``, ``--pad``, ``--fill``,
``--drop``, ``--rows-per-shard``) are described in ``mmpool.convert.converter.convert`` and the README's converter section.

Readers that predate these keys refuse a manifest holding ``adapted`` or ``sources`` as malformed rather than
misread it; the format version stays 1.

Pack files -- a few large files, each one array of fixed-size records:

* A record is one position, row-major: the fields sit at the byte offsets of an aligned numpy structured dtype
  (``schema``), so a random gather touches one place per record.
* ``npy`` packs are ordinary ``.npy`` files holding a 1-D structured array; ``np.load(path, mmap_mode="r")`` opens
  them. mmpool writes a 4096-byte header so the records start on a page boundary.
* ``hdf5`` packs hold one contiguous (unchunked, uncompressed) compound dataset named ``records`` that h5py and the
  HDF5 tools read; its data starts at ``data_offset`` bytes into the file, where it can be memory-mapped.
* ``bytes`` is the full file size; a pack file of another size is truncated or foreign, and is refused.

Shards are row ranges inside packs: shard ``number`` is rows ``first_row .. first_row + rows - 1`` of pack ``pack``
(an index into ``packs``). Many shards share a pack; ``crc32`` is the zlib CRC-32 of the shard's record bytes.
Shards are listed in ascending ``number``; every shard of a directory has the same schema.

Writing is atomic: packs are written under temporary names, fsynced and renamed; the manifest is replaced last,
so it never refers to anything half-written. Files in the directory that the manifest does not name are ignored.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmpool.errors import ConfigError, ShardError

FORMAT_NAME = "mmpool"
FORMAT_VERSION = 1
MANIFEST_NAME = "mmpool.json"
HDF5_DATASET = "records"
NPY_HEADER_BYTES = 4096
PackKind = Literal["npy", "hdf5"]
PACK_SUFFIX: dict[str, str] = {"npy": ".npy", "hdf5": ".h5"}


@dataclass(frozen=True)
class Field:
    """One field of a record: name, base dtype (numpy ``str`` form), per-record shape and byte offset."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int


@dataclass(frozen=True)
class Schema:
    """The record layout shared by every shard of a directory."""

    fields: tuple[Field, ...]
    itemsize: int

    @classmethod
    def from_fields(cls, fields: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> Schema:
        """Build the aligned row-major record layout for ``{name: (dtype, per-record shape)}``, in that order."""
        dtype = np.dtype([(name, dt, shape) for name, (dt, shape) in fields.items()], align=True)
        return cls.from_dtype(dtype)

    @classmethod
    def from_dtype(cls, dtype: np.dtype) -> Schema:
        """The schema of a structured dtype."""
        out = []
        fields: Any = dtype.fields or {}
        for name in dtype.names or ():
            sub, offset = fields[name][:2]
            base, shape = (sub.base, sub.shape) if sub.subdtype else (sub, ())
            out.append(Field(name, base.str, tuple(int(s) for s in shape), int(offset)))
        return cls(tuple(out), int(dtype.itemsize))

    @property
    def dtype(self) -> np.dtype:
        """The numpy structured dtype of one record."""
        return np.dtype(
            {
                "names": [f.name for f in self.fields],
                "formats": [(f.dtype, f.shape) if f.shape else f.dtype for f in self.fields],
                "offsets": [f.offset for f in self.fields],
                "itemsize": self.itemsize,
            }
        )

    def field_specs(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """``{name: (dtype, per-record shape)}``, the form augmentations and readers use."""
        return {f.name: (np.dtype(f.dtype), f.shape) for f in self.fields}

    def describe(self) -> str:
        """One line per field, for messages and ``mmpool inspect``."""
        return "\n".join(
            f"  {f.name:<16} {np.dtype(f.dtype).name:<8} {str(f.shape):<14} offset {f.offset}" for f in self.fields
        )


@dataclass(frozen=True)
class PackEntry:
    """One pack file: its name inside the directory, record count, file size and where the records start."""

    file: str
    rows: int
    bytes: int
    data_offset: int
    sources: str | None = None


@dataclass(frozen=True)
class ShardEntry:
    """One shard: a row range of a pack."""

    number: int
    source: str
    pack: int
    first_row: int
    rows: int
    crc32: int
    adapted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """The parsed ``mmpool.json`` of one converted directory."""

    pack_format: PackKind
    schema: Schema
    packs: tuple[PackEntry, ...]
    shards: tuple[ShardEntry, ...]
    numbering: str = "last-integer"

    def to_json(self) -> dict[str, Any]:
        """The JSON document, as written to disk."""
        schema = {"itemsize": self.schema.itemsize, "fields": [asdict(f) for f in self.schema.fields]}
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "pack_format": self.pack_format,
            "schema": schema,
            "packs": [_present(asdict(p)) for p in self.packs],
            "shards": [_present(asdict(s)) for s in self.shards],
            "numbering": self.numbering,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], where: Path) -> Manifest:
        """Parse and sanity-check a manifest document; ``where`` names the file in errors."""
        if doc.get("format") != FORMAT_NAME:
            raise ShardError(f'{where}: not an mmpool manifest (no "format": "mmpool")')
        if doc.get("version") != FORMAT_VERSION:
            raise ShardError(
                f"{where}: manifest version {doc.get('version')!r}, this mmpool reads version {FORMAT_VERSION}; "
                "convert the shards again with this version"
            )
        try:
            fields = tuple(
                Field(f["name"], f["dtype"], tuple(f["shape"]), int(f["offset"])) for f in doc["schema"]["fields"]
            )
            schema = Schema(fields, int(doc["schema"]["itemsize"]))
            packs = tuple(PackEntry(**p) for p in doc["packs"])
            shards = tuple(ShardEntry(**{**s, "adapted": tuple(s.get("adapted", ()))}) for s in doc["shards"])
            kind = doc["pack_format"]
            numbering = str(doc.get("numbering", "last-integer"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ShardError(f"{where}: malformed manifest ({exc!r}); convert the shards again") from exc
        for s in shards:
            if not 0 <= s.pack < len(packs) or s.first_row + s.rows > packs[s.pack].rows:
                raise ShardError(f"{where}: shard {s.number} points outside its pack; convert the shards again")
        return cls(kind, schema, packs, shards, numbering)


def _present(entry: dict[str, Any]) -> dict[str, Any]:
    """A manifest entry without its empty optional keys, so plain conversions write what old readers read."""
    return {k: v for k, v in entry.items() if not (k in ("sources", "adapted") and not v)}


def read_manifest(directory: Path) -> Manifest:
    """Read the manifest of a converted directory.

    A missing directory or manifest is a ConfigError (the wrong directory was given: the same error wherever a
    directory is named, in the dataset, ``plan`` and the CLI); a malformed manifest is a ShardError.
    """
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        what = "does not exist" if not Path(directory).exists() else f"has no {MANIFEST_NAME}"
        raise ConfigError(
            f"{directory} {what}: it is not a converted directory; "
            f"convert its shards first: mmpool convert SRC {directory}"
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: cannot read the manifest ({exc}); convert the shards again") from exc
    return Manifest.from_json(doc, path)


def fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, doc: Any, indent: int | None = 1) -> None:
    """Write a JSON file atomically: temporary file, fsync, rename, fsync of the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=indent)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically."""
    write_json(Path(directory) / MANIFEST_NAME, manifest.to_json())


SOURCES_SUFFIX = ".sources.json"
Parts = list[tuple[str, int]]


def write_sources(path: Path, parts: dict[int, Parts]) -> str:
    """Write a pack's sources file (shard number -> [(input name, first row)]); returns its file name."""
    doc = {"shards": [{"number": n, "parts": [list(p) for p in rows]} for n, rows in parts.items()]}
    write_json(path, doc, indent=None)
    return Path(path).name


def read_sources(directory: Path, manifest: Manifest) -> dict[int, Parts]:
    """Shard number -> [(input name, first row inside the shard)] of every shard listed in a sources file."""
    out: dict[int, Parts] = {}
    for pack in manifest.packs:
        if pack.sources is None:
            continue
        path = Path(directory) / pack.sources
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            for shard in doc["shards"]:
                out[int(shard["number"])] = [(str(name), int(row)) for name, row in shard["parts"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ShardError(
                f"{path}: cannot read the sources of {pack.file} ({exc!r}); restore it or convert the shards again"
            ) from exc
    return out


def npy_header(dtype: np.dtype, rows: int) -> bytes:
    """A version 1.0 ``.npy`` header padded to exactly NPY_HEADER_BYTES, so records start page-aligned."""
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows,)}
    text = repr(d).encode("latin1")
    body = NPY_HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    if len(text) + 1 > body:
        raise ShardError(f"record schema too large for a {NPY_HEADER_BYTES}-byte .npy header ({len(text)} bytes)")
    text = text + b" " * (body - len(text) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + body.to_bytes(2, "little") + text


def record_bytes(records: np.ndarray) -> memoryview:
    """The raw bytes of a contiguous record array (for checksums and writing) without a copy."""
    return memoryview(np.ascontiguousarray(records).view(np.uint8).reshape(-1).data)


def checksum(records: np.ndarray) -> int:
    """CRC-32 of the record bytes, as stored per shard in the manifest."""
    return zlib.crc32(record_bytes(records)) & 0xFFFFFFFF


class PackWriter:
    """Writes one pack file under a temporary name; ``commit`` makes it durable and gives it its final name."""

    def __init__(self, path: Path, dtype: np.dtype, rows: int, kind: PackKind) -> None:
        self.path = Path(path)
        self.dtype = dtype
        self.rows = rows
        self.kind = kind
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.written = 0
        self._file: Any  # an open .npy file, or an h5py.File
        if kind == "npy":
            self._file = open(self.tmp, "wb")
            self._file.write(npy_header(dtype, rows))
        else:
            import h5py

            self._file = h5py.File(self.tmp, "w")
            # Contiguous and uncompressed, so the records can be memory-mapped at one offset.
            self._dset = self._file.create_dataset(HDF5_DATASET, shape=(rows,), dtype=dtype)

    def write(self, records: np.ndarray) -> None:
        """Append records (in order) to the pack."""
        end = self.written + len(records)
        if end > self.rows:
            raise ShardError(f"{self.path}: writing {end} records into a pack planned for {self.rows}")
        if self.kind == "npy":
            self._file.write(record_bytes(records))
        else:
            self._dset[self.written : end] = records
        self.written = end

    def commit(self) -> PackEntry:
        """fsync, close and rename to the final name; returns the manifest entry."""
        if self.written != self.rows:
            raise ShardError(f"{self.path}: wrote {self.written} records of the {self.rows} planned")
        if self.kind == "npy":
            offset = NPY_HEADER_BYTES
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        else:
            offset = int(self._dset.id.get_offset())
            self._file.flush()
            self._file.close()
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return PackEntry(self.path.name, self.rows, self.path.stat().st_size, offset)

    def abort(self) -> None:
        """Close and delete the temporary file."""
        try:
            self._file.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def to_records(dtype: np.dtype, arrays: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
    """Records of ``dtype`` from one array per field (rows first; fields not given stay zero), or records
    already in ``dtype`` (their padding bytes must be zero: they are part of the crc)."""
    if isinstance(arrays, np.ndarray):
        if arrays.dtype != dtype:
            raise ShardError(f"records of dtype {arrays.dtype} given for a pack of {dtype}")
        return np.ascontiguousarray(arrays)
    # zeros, not empty: padding bytes between fields are covered by the crc and must be reproducible.
    records = np.zeros(len(next(iter(arrays.values()))), dtype=dtype)
    for name in dtype.names or ():
        if name in arrays:
            records[name] = arrays[name]
    return records


def write_pack(
    path: Path,
    kind: PackKind,
    schema: Schema,
    rows: int,
    shards: Iterable[tuple[int, str, dict[str, np.ndarray] | np.ndarray]],
) -> tuple[PackEntry, list[ShardEntry]]:
    """Write and commit one pack of ``rows`` records from shards ``(number, source, {field: array} or records)``,
    in order.

    Returns the pack's entry and its shards' entries (``pack`` = 0: the caller places the pack in its manifest).
    The pack exists under its final name only when every shard was written; on any error it is removed.
    """
    dtype = schema.dtype
    writer = PackWriter(path, dtype, rows, kind)
    entries: list[ShardEntry] = []
    try:
        first = 0
        for number, source, arrays in shards:
            records = to_records(dtype, arrays)
            writer.write(records)
            entries.append(ShardEntry(number, source, 0, first, len(records), checksum(records)))
            first += len(records)
        pack = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return pack, entries


def check_pack_file(directory: Path, pack: PackEntry) -> Path:
    """The path of a pack, after checking it exists and has the size the manifest records."""
    path = Path(directory) / pack.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ShardError(
            f"{path}: pack file missing (listed in {MANIFEST_NAME}); restore it or convert the shards again"
        ) from None
    if size != pack.bytes:
        state = "truncated" if size < pack.bytes else "larger than recorded"
        raise ShardError(
            f"{path}: pack file {state}: expected {pack.bytes} bytes, found {size}; "
            "restore it or convert the shards again"
        )
    return path
