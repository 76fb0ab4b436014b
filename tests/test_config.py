"""Tests for mmpool.config: StreamConfig validates every parameter once, and is what a resume state fingerprints."""

from __future__ import annotations

import dataclasses

import pytest

from mmpool.augment.dihedral import Dihedral
from mmpool.config import BATCH_BUFFERS, StreamConfig
from mmpool.errors import ConfigError
from mmpool.stream.resume import fingerprint


def make(**kw) -> StreamConfig:
    return StreamConfig(("a", "b"), **kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"pool_size": 1}, r"pool_size=1: must be an integer >= 2"),
        ({"pool_size": 10, "refill_threshold": 10}, r"refill_threshold=10 must be below pool_size=10"),
        ({"refill_threshold": 0}, r"refill_threshold=0: must be an integer >= 1"),
        ({"batch_size": 0}, r"batch_size=0: must be an integer >= 1"),
        ({"batch_size": True}, r"batch_size=True: must be an integer >= 1"),
        ({"num_epochs": 0}, r"num_epochs=0"),
        ({"rank": 2, "world_size": 2}, r"rank=2 must be below world_size=2"),
        ({"rank": -1}, r"rank=-1: must be an integer >= 0"),
        ({"max_memory_gb": 0}, r"max_memory_gb=0: must be a positive number of GiB"),
        ({"max_memory_gb": float("nan")}, r"max_memory_gb=nan"),
        ({"memory_check_interval": -1}, r"memory_check_interval=-1"),
        ({"prefetch_batches": -1}, r"prefetch_batches=-1"),
        ({"max_open_packs": 0}, r"max_open_packs=0"),
        ({"chunk_size": 0}, r"chunk_size=0"),
        ({"mix": "blend"}, r"mix='blend': use one of 'pool', 'stratified'"),
        ({"transform": 3}, r"transform=3: must be a function"),
        ({"augmentation": object()}, r"needs an integer 'factor'"),
    ],
)
def test_every_bad_parameter_is_refused_by_name(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make(**kw)


def test_defaults_are_resolved_when_built() -> None:
    c = make(pool_size=1000)
    assert c.data_dirs == ("a", "b") and c.threshold == 750 and c.refill_threshold == 750
    assert isinstance(c.random_seed, int) and c.random_seed != make(pool_size=1000).random_seed  # drawn afresh
    assert StreamConfig("one").data_dirs == ("one",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.pool_size = 5  # type: ignore[misc]
    # replace() validates again
    with pytest.raises(ConfigError, match="refill_threshold=750 must be below pool_size=100"):
        dataclasses.replace(c, pool_size=100)


def test_the_factor_counts_only_an_enabled_augmentation() -> None:
    aug = Dihedral(planes=["planes"], symmetries=8)
    assert make(augmentation=aug).factor == 8
    assert make(augmentation=aug, enable_augmentation=False).factor == 1
    assert make(augmentation=aug, enable_augmentation=False).augment is None
    assert make().factor == 1


def test_batch_buffers_count_the_batches_made_ahead() -> None:
    assert make(batch_size=100, prefetch_batches=2).batch_buffer_bytes(10) == (BATCH_BUFFERS + 2) * 100 * 10
    assert make(batch_size=None, chunk_size=50).batch_buffer_bytes(10) == BATCH_BUFFERS * 50 * 10  # none ahead


def test_the_state_config_is_plain_json_and_keeps_its_0_3_keys() -> None:
    c = make(random_seed=7, weights=[3, 1], shard_ranges=("0-9", "all"), batch_size=64)
    state = c.state_config(rank=1, world_size=2)
    assert state == {
        "data_dirs": ["a", "b"],
        "shard_ranges": ["0-9", "all"],
        "weights": [3.0, 1.0],
        "random_seed": 7,
        "pool_size": 2_000_000,
        "refill_threshold": 1_500_000,
        "batch_size": 64,
        "chunk_size": 1024,
        "drop_last": False,
        "factor": 1,
        "max_examples_unaugmented": None,
        "world_size": 2,
        "rank": 1,
        "mix": "pool",
    }
    # The fingerprint mmpool 0.3.0 gave this configuration: its saved states still load.
    assert fingerprint(state) == "c6d02e0fab90d10e"
