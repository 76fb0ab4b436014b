"""Elastic resume through the dataset: the states of every rank (and worker) of a run, loaded into a run of
another shape, continue the epoch. Every test checks coverage record by record, by the ids read from the data:
the first part plus the continuation (plus the drops it counts) is every record exactly once (once per symmetry)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import Data, launch_ranks
from torchdata.stateful_dataloader import StatefulDataLoader

from mmpool.augment.dihedral import Dihedral
from mmpool.errors import ConfigError
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.stream.resume import gather_states

KW: dict[str, Any] = dict(pool_size=1000, random_seed=3, batch_size=50)


def make(data: Data, world: int = 1, rank: int = 0, **kw: Any) -> StreamingMixedShardDataset:
    return StreamingMixedShardDataset(data.dirs, rank=rank, world_size=world, **{**KW, **kw})


def as_numpy(batches: list[dict[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy().copy() for k, v in b.items()} for b in batches]


def first_part(data: Data, world: int, steps: int, **kw: Any) -> tuple[list[dict], list[dict[str, Any]]]:
    """``world`` ranks (in this process) take ``steps`` items each; returns the items and every rank's state."""
    items, states = [], []
    for rank in range(world):
        ds = make(data, world, rank, **kw)
        it = iter(ds)
        items += as_numpy([next(it) for _ in range(steps)])
        states.append(json.loads(json.dumps(ds.state_dict())))
    return items, states


def continue_run(data: Data, states: list[dict], world: int, **kw: Any) -> tuple[list[list[dict]], int]:
    """Every rank of the new run loads the same list and streams to the end; returns items per rank and drops."""
    per_rank, dropped = [], 0
    for rank in range(world):
        ds = make(data, world, rank, **kw)
        ds.load_state_dict(states)
        per_rank.append(as_numpy(list(ds)))
        dropped += ds.stats().dropped
    return per_rank, dropped


def check_coverage(data: Data, parts: list[dict[str, np.ndarray]], dropped: int, factor: int = 1) -> None:
    """Every record once per symmetry over ``parts``, but for ``dropped`` examples; the content is the source's."""
    got = collect_items(parts)
    if factor == 1:
        data.source.assert_matches(got)
    ids, counts = np.unique(got["id"], return_counts=True)
    data.source.index(ids)  # every id is a record of the data
    assert counts.max() <= factor, "a record was yielded more often than it has symmetries"
    assert len(got["id"]) + dropped == data.total * factor


def collect_items(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    batched = parts[0]["id"].ndim == 1
    return {k: np.concatenate([p[k] if batched else p[k][None] for p in parts]) for k in parts[0]}


def test_two_ranks_to_three(two_dirs: Data) -> None:
    before, states = first_part(two_dirs, 2, 23)
    after, dropped = continue_run(two_dirs, states, 3)
    assert len({len(r) for r in after}) == 1, "every new rank yields the same number of batches"
    assert dropped < 3
    check_coverage(two_dirs, before + [b for r in after for b in r], dropped)


def test_three_ranks_to_one_single_examples(odd_dirs: Data) -> None:
    kw = dict(batch_size=None, chunk_size=40, pool_size=200)
    before, states = first_part(odd_dirs, 3, 77, **kw)
    (after,), dropped = continue_run(odd_dirs, states, 1, **kw)
    assert dropped == 0
    check_coverage(odd_dirs, before + after, dropped)


def test_a_state_after_an_elastic_resume_is_small_and_resumes(two_dirs: Data) -> None:
    """The continued run's own states carry the origin (a few hundred bytes a run): a plain resume of one rank
    and an elastic resume of all ranks both work; after the continued epoch the origin is gone."""
    _, states = first_part(two_dirs, 2, 10)
    ds = make(two_dirs, 3, 1, num_epochs=2)
    ds.load_state_dict(states)
    it = iter(ds)
    head = as_numpy([next(it) for _ in range(4)])
    state = json.loads(json.dumps(ds.state_dict()))
    assert "origin" in state and len(json.dumps(state)) < 4000
    rest = as_numpy(list(it))
    again = make(two_dirs, 3, 1, num_epochs=2)
    again.load_state_dict(state)
    assert [b["id"].tolist() for b in as_numpy(list(again))] == [b["id"].tolist() for b in rest]
    assert head and "origin" not in ds.state_dict()


def test_second_elastic_resume_with_augmentation(two_dirs: Data) -> None:
    kw = dict(augmentation=Dihedral(symmetries=2))
    before, states = first_part(two_dirs, 2, 31, **kw)
    middle, middle_states, dropped = [], [], 0
    for rank in range(3):
        ds = make(two_dirs, 3, rank, **kw)
        ds.load_state_dict(states)
        it = iter(ds)
        middle += as_numpy([next(it) for _ in range(17)])
        middle_states.append(json.loads(json.dumps(ds.state_dict())))
    after, dropped = continue_run(two_dirs, middle_states, 1, **kw)
    check_coverage(two_dirs, before + middle + after[0], dropped, factor=2)


def test_new_weights_at_a_resume(two_dirs: Data) -> None:
    """Entries already pooled stay; rows activated from then on follow the new weights; coverage is exact."""
    before, states = first_part(two_dirs, 2, 12)
    after, dropped = continue_run(two_dirs, states, 2, weights=[1, 3])
    check_coverage(two_dirs, before + [b for r in after for b in r], dropped)
    same, _ = continue_run(two_dirs, states, 2)

    def dir1_share(batches: list[dict]) -> float:
        return float((np.concatenate([b["id"] for b in batches]) >> 40).mean())

    # dir 1 holds a quarter of what remains: the old weights (3:1 by shards) keep it at a quarter, the new ones
    # (1:3) activate it first, until it runs out.
    assert dir1_share(same[0][:30]) < 0.3
    assert dir1_share(after[0][:30]) > dir1_share(same[0][:30]) + 0.1


def test_workers_two_to_three_through_stateful_dataloader(two_dirs: Data) -> None:
    """1 rank x 2 workers -> 1 rank x 3 workers: the loader's state holds one state per worker."""
    dl = StatefulDataLoader(make(two_dirs), batch_size=None, num_workers=2)
    it = iter(dl)
    before = as_numpy([next(it) for _ in range(25)])
    states = json.loads(json.dumps(gather_states(dl)))
    del it, dl
    assert [s["worker"] for s in states] == [0, 1]
    ds = make(two_dirs)
    ds.load_state_dict(states)
    dl = StatefulDataLoader(ds, batch_size=None, num_workers=3)
    it = iter(dl)
    middle = as_numpy([next(it) for _ in range(30)])
    # A plain resume of the continued loader (same shape) through its own state.
    saved = json.loads(json.dumps(dl.state_dict()))
    del it, dl
    dl = StatefulDataLoader(make(two_dirs), batch_size=None, num_workers=3)
    dl.load_state_dict(saved)
    after = as_numpy(list(dl))
    check_coverage(two_dirs, before + middle + after, dl.dataset.stats().dropped)


@pytest.mark.parametrize(
    "name, change",
    [
        ("random_seed", dict(random_seed=4)),
        ("pool_size", dict(pool_size=1200)),
        ("batch_size", dict(batch_size=40)),
        ("shard_ranges", dict(shard_ranges=["0-5", "all"])),
    ],
)
def test_other_changes_are_config_errors(two_dirs: Data, name: str, change: dict) -> None:
    _, states = first_part(two_dirs, 2, 3)
    with pytest.raises(ConfigError, match=name):
        make(two_dirs, 3, 0, **change).load_state_dict(states)


def test_state_list_errors(two_dirs: Data) -> None:
    _, states = first_part(two_dirs, 2, 3)
    ds = make(two_dirs, 3, 0)
    with pytest.raises(ConfigError, match="rank 1 worker 0 are missing"):
        ds.load_state_dict(states[:1])
    with pytest.raises(ConfigError, match="not an mmpool state"):
        ds.load_state_dict([states[0], {"epoch": 0}])
    with pytest.raises(ConfigError, match="data_dirs"):
        StreamingMixedShardDataset(two_dirs.dirs[:1], **KW).load_state_dict(states)
    # One state of another shape (checked when iteration starts): the message says how to resume elastically.
    ds.load_state_dict(states[0])
    with pytest.raises(ConfigError, match="list of every rank's states"):
        next(iter(ds))
    with pytest.raises(ConfigError, match="to change the weights, load the list"):
        make(two_dirs, 2, 0, weights=[1, 1]).load_state_dict(states[0])


ELASTIC_SCRIPT = r"""
import datetime, json, sys
from pathlib import Path
import torch, torch.distributed as dist
from mmpool import StreamingMixedShardDataset, gather_states

dirs, out, steps = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
rank, world = dist.get_rank(), dist.get_world_size()
ds = StreamingMixedShardDataset(dirs, pool_size=1000, random_seed=3, batch_size=50)
saved = out / "states.json"
if saved.exists():  # the continuation: every rank loads the list of all ranks' states
    ds.load_state_dict(json.loads(saved.read_text()))
ids, it = [], iter(ds)
for batch in it:
    ids += batch["id"].tolist()
    dist.all_reduce(torch.ones(1))  # as DDP does every step: unequal batch counts would hang
    if len(ids) == steps * 50:
        break
states = gather_states(ds)  # a collective: every rank gets every rank's state
if rank == 0 and not saved.exists():
    saved.write_text(json.dumps(states))
(out / f"w{world}-rank{rank}.json").write_text(json.dumps({"ids": ids, "dropped": ds.stats().dropped}))
dist.destroy_process_group()
"""


def test_real_ranks_two_to_three(two_dirs: Data, tmp_path: Path) -> None:
    """Two gloo processes save their states mid-epoch; three processes load the list and finish the epoch."""
    script = tmp_path / "rank.py"
    script.write_text(ELASTIC_SCRIPT)
    dirs = json.dumps([str(d) for d in two_dirs.dirs])
    launch_ranks(script, 2, [dirs, str(tmp_path), "19"])
    launch_ranks(script, 3, [dirs, str(tmp_path), "0"])  # 0: never stops early
    before = [json.loads((tmp_path / f"w2-rank{r}.json").read_text()) for r in range(2)]
    after = [json.loads((tmp_path / f"w3-rank{r}.json").read_text()) for r in range(3)]
    assert all(len(b["ids"]) == 19 * 50 for b in before)
    assert len({len(a["ids"]) for a in after}) == 1
    ids = np.array([i for part in before + after for i in part["ids"]])
    dropped = sum(a["dropped"] for a in after)
    assert len(np.unique(ids)) == len(ids) and len(ids) + dropped == two_dirs.total
    two_dirs.source.index(ids)
