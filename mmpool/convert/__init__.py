"""Conversion of input shards into packs, once and incrementally (``mmpool convert``).

- ``converter``: lists new shards, groups them into packs, converts pack by pack in worker processes, commits atomically.
- ``sources``: which input files a directory holds and how they are numbered.
- ``legacy``: readers of input shards (``.npz``, ``.npy``, ``.pt``, ``.h5``), refusing pickles and object arrays.
- ``lc0``: Leela Chess Zero's V6/V7 training games (``.gz``, ``.tar``) as records.
- ``adapt``: giving a shard the directory's schema (pad, fill, drop fields)."""

from mmpool.convert.converter import ConvertSummary, convert, parse_size

__all__ = ["ConvertSummary", "convert", "parse_size"]
