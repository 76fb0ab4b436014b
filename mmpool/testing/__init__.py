"""Synthetic data in the engines' real layouts (KataGo npz keys, chess-like positions, legacy shard files), for
the tests, the benchmarks and the demo.

- ``synthetic``: positions with known ids, KataGo rows, legacy shards and whole source directories."""

from mmpool.testing.synthetic import katago_rows, make_positions, make_synthetic, write_legacy_shard

__all__ = ["katago_rows", "make_positions", "make_synthetic", "write_legacy_shard"]
