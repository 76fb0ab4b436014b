"""Resume states: what ``state_dict()`` holds, the checks a loaded state passes, and ``gather_states``.

A state is a few integers (``Position``: where an iteration is), the configuration it was saved with
(``StreamConfig.state_config``) and that configuration's fingerprint, versioned (``STATE_VERSION``). A loaded state
is refused with a ConfigError that names what differs, never resumed into another order.

``gather_states`` collects the states an elastic resume needs: one per rank and DataLoader worker of a run.
A rank's loader holds its workers' states (torchdata's ``StatefulDataLoader``) or is the dataset itself;
``gather_states`` takes either, on every rank, and returns the states of all ranks (through
``torch.distributed.all_gather_object`` when it is initialised), ready to save and to hand to
``StreamingMixedShardDataset.load_state_dict`` of the new run, whatever its shape.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mmpool.errors import ConfigError
from mmpool.sampling.remainder import ELASTIC_KEYS, changes

STATE_VERSION = 2  # 2: shards enter the pool in slices (mmpool 0.3); a version-1 order differs
PROGRESS_KEYS = ("epoch", "start", "items", "worker", "num_workers")
STATE_KEYS = ("version", *PROGRESS_KEYS, "shards_upto", "config", "fingerprint")


@dataclass
class Position:
    """Where an iteration is: the epoch it is in, the epoch it started at, items yielded in this epoch, and which
    DataLoader worker of how many runs it (0 of 0 in the main process). The PROGRESS_KEYS of a state; after an
    elastic resume also the ``origin`` (``mmpool.sampling.remainder.collect``) of the epoch it continues."""

    epoch: int
    start: int
    items: int
    worker: int
    num_workers: int
    origin: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epoch": self.epoch,
            "start": self.start,
            "items": self.items,
            "worker": self.worker,
            "num_workers": self.num_workers,
        }
        if self.continues():
            out["origin"] = self.origin
        return out

    def continues(self) -> bool:
        """Whether this epoch is the rest of one that a run of another shape began."""
        return self.origin is not None and self.origin["epoch"] == self.epoch


def make_state(position: Position, shards_upto: list[int], config: dict[str, Any]) -> dict[str, Any]:
    """The state ``state_dict()`` returns: the position, how far each directory's shards were read, the config."""
    return {
        "version": STATE_VERSION,
        **position.as_dict(),
        "shards_upto": shards_upto,
        "config": config,
        "fingerprint": fingerprint(config),
    }


def check_state(state: Any) -> None:
    """A ConfigError unless ``state`` is an unedited mmpool state."""
    if isinstance(state, dict) and state.get("version") == 1:
        raise ConfigError(
            "the state was saved by mmpool 0.2 (state version 1), whose order differs from this version's (shards "
            "now enter the pool in slices): resume it with mmpool 0.2, or start this epoch anew (set_epoch)"
        )
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or any(k not in state for k in STATE_KEYS):
        raise ConfigError(f"not an mmpool state (version {STATE_VERSION}): {str(state)[:200]}")
    if fingerprint(state["config"]) != state["fingerprint"]:
        raise ConfigError(
            f"the state's configuration does not match its fingerprint {state['fingerprint']}: "
            "it was edited or corrupted; use a state saved by StreamingMixedShardDataset.state_dict"
        )


def check_config(saved: dict[str, Any], mine: dict[str, Any], skip: Sequence[str] = ()) -> None:
    """Raise a ConfigError naming every setting in which a saved state's configuration differs from this one."""
    what = changes(saved, mine, skip)
    if what:
        hint = ""
        if not changes(saved, mine, ELASTIC_KEYS) and "weights" not in skip:
            hint = "; to change the weights, load the list of every rank's states (mmpool.gather_states)"
        elif "weights" in skip:
            hint = "; an elastic resume may change only the number of ranks and workers and the weights"
        raise ConfigError(f"the state was saved with another configuration ({what}){hint}")


def check_workers(state: dict[str, Any], worker: int, num_workers: int) -> None:
    """A state is resumed by the same DataLoader worker of the same number of workers (0 and 1 give one stream)."""
    if max(1, state["num_workers"]) != max(1, num_workers) or state["worker"] != worker:
        raise ConfigError(
            f"num_workers: the state was saved by worker {state['worker']} of num_workers={state['num_workers']}, "
            f"it is loaded into worker {worker} of num_workers={num_workers}; resume with the same number of workers, "
            "or load the list of every rank's and worker's states (mmpool.gather_states) to continue with another"
        )


def fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
