"""Operations on converted directories, behind the ``mmpool`` commands.

- ``check``: ``inspect_dirs`` (schema, shards, packs) and ``verify_dirs`` (every shard's CRC-32).
- ``sizing``: ``size_run``, what ``mmpool plan`` prints: the largest pool under a cap, its window and cost.
- ``demo``: ``mmpool demo``, generated data converted and trained on."""

from mmpool.ops.check import inspect_dirs, verify_dirs
from mmpool.ops.demo import run_demo
from mmpool.ops.sizing import Sizing, size_run

__all__ = ["Sizing", "inspect_dirs", "run_demo", "size_run", "verify_dirs"]
