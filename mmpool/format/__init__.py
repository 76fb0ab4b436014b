"""The on-disk format of a converted directory, specified in ``mmpool.format.manifest`` (format version 1).

- ``manifest``: the manifest (``mmpool.json``), the record schema, pack and shard entries, atomic writes, and the
  pack files themselves (``.npy`` and HDF5 layout, writer, size checks).

Imports nothing of mmpool but ``mmpool.errors``: readers in other tools can depend on it alone."""

from mmpool.format.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Field,
    Manifest,
    PackEntry,
    Schema,
    ShardEntry,
    check_pack_file,
    read_manifest,
    write_manifest,
    write_pack,
)

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Field",
    "Manifest",
    "PackEntry",
    "Schema",
    "ShardEntry",
    "check_pack_file",
    "read_manifest",
    "write_manifest",
    "write_pack",
]
