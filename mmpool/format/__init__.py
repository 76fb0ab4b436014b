"""The on-disk format: the manifest, the record schema and the pack files (imports nothing of mmpool but errors)."""
