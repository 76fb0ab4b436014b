"""Conversion of engine and legacy shards into packs: the converter, source listing, legacy readers, lc0, adapters."""
