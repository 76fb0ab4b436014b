"""The registry of mixes: ``mix=`` names and the classes that build their pools (``mmpool.sampling.base.Mix``).

Adding a mix: a module with a class satisfying ``Mix``, and one line here.
"""

from __future__ import annotations

from mmpool.sampling.base import Mix
from mmpool.sampling.pool import UniformMix
from mmpool.sampling.stratified import StratifiedMix

MIXES: dict[str, Mix] = {
    "pool": UniformMix(),  # every batch drawn uniformly from one pool (shares hold over a few batches)
    "stratified": StratifiedMix(),  # a sub-pool per directory, each batch holds every directory's share
}


def get_mix(name: str) -> Mix:
    """The mix registered as ``name``."""
    return MIXES[name]
