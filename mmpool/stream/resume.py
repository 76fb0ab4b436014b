"""Collect the states an elastic resume needs: one mmpool state per rank and DataLoader worker of a run.

A rank's loader holds its workers' states (torchdata's ``StatefulDataLoader``) or is the dataset itself;
``gather_states`` takes either, on every rank, and returns the states of all ranks (through
``torch.distributed.all_gather_object`` when it is initialised), ready to save and to hand to
``StreamingMixedShardDataset.load_state_dict`` of the new run, whatever its shape.
"""

from __future__ import annotations

from typing import Any

from mmpool.errors import ConfigError


def loader_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """The mmpool states inside one rank's saved state: a ``StatefulDataLoader.state_dict()`` (one per worker,
    or one without workers) or a dataset's own ``state_dict()``."""
    if "fingerprint" in state:  # the dataset's own state
        return [state]
    if "_snapshot" in state:  # StatefulDataLoader with workers: one snapshot per worker
        workers = state["_snapshot"]["_worker_snapshots"]
        return [workers[k]["dataset_state"] for k in sorted(workers, key=lambda k: int(k.rsplit("_", 1)[1]))]
    if isinstance(state.get("dataset_state"), dict):  # StatefulDataLoader without workers
        return [state["dataset_state"]]
    raise ConfigError(
        "not a state of StreamingMixedShardDataset or of a StatefulDataLoader over one "
        f"(keys {sorted(state)[:8]}); pass the loader, the dataset, or one of their state_dict()s"
    )


def gather_states(source: Any) -> list[dict[str, Any]]:
    """The states of every rank and DataLoader worker of this run, in one list (the same on every rank).

    ``source`` is this rank's ``StatefulDataLoader``, ``StreamingMixedShardDataset`` (no workers), or a
    ``state_dict()`` of either. Call it on every rank at the same step: with ``torch.distributed`` initialised it
    is a collective (``all_gather_object``); without, it returns this process's states.
    """
    state = source if isinstance(source, dict) else source.state_dict()
    mine = loader_states(state)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return mine
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return [s for rank_states in everyone for s in rank_states]
