"""Two real ranks (torch.distributed, gloo on CPU, one process each): disjoint, complete, equal batch counts.

Each rank runs the script below in its own process, steps through its DataLoader with an all_reduce per batch
(as DDP does, so unequal batch counts would hang until the gloo timeout), and saves what it saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FIELDS, Data, id_dir, id_row, id_shard, launch_ranks

WORLD = 2

RANK_SCRIPT = r"""
import datetime, json, logging, os, sys
import numpy as np, torch, torch.distributed as dist
from torch.utils.data import DataLoader
from mmpool.stream.dataset import StreamingMixedShardDataset

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
rank = dist.get_rank()
for cfg in json.loads(sys.argv[1]):  # several runs per process: starting torch twice per run would be slow
    print("=== " + cfg["name"], file=sys.stderr, flush=True)
    ds = StreamingMixedShardDataset(cfg["dirs"], pool_size=cfg["pool_size"], batch_size=cfg["batch_size"],
                                    random_seed=5, drop_last=cfg["drop_last"])
    assert (ds.rank, ds.world_size) == (rank, 2), (ds.rank, ds.world_size)
    parts, batches = [], 0
    for batch in DataLoader(ds, batch_size=None, num_workers=cfg["workers"]):
        parts.append({k: v.numpy() for k, v in batch.items()})
        batches += 1
        step = torch.ones(1)
        dist.all_reduce(step)  # what DDP does every step: a rank with fewer batches would leave the other hanging
    st = ds.stats()
    out = os.path.join(cfg["out"], cfg["name"])
    os.makedirs(out, exist_ok=True)
    np.savez(f"{out}/rank{rank}.npz", **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    with open(f"{out}/rank{rank}.json", "w") as f:
        json.dump({"batches": batches, "dropped": st.dropped, "examples": st.examples, "per_dir": st.per_dir,
                   "activated": st.shards_activated, "exhausted": st.shards_exhausted}, f)
    dist.barrier()
dist.destroy_process_group()
"""

Run = tuple[list[dict], list[dict], list[str]]  # per rank: fields, report, stderr of this run


def run_ranks(out: Path, runs: dict[str, dict]) -> dict[str, Run]:
    """Start WORLD ranks that do every run in turn; returns per run each rank's fields, report and stderr."""
    out.mkdir(parents=True, exist_ok=True)
    script = out / "rank.py"
    script.write_text(RANK_SCRIPT)
    cfgs = [
        {"name": name, "out": str(out), "pool_size": 1000, "drop_last": False, "workers": 0, **cfg}
        for name, cfg in runs.items()
    ]
    errs = launch_ranks(script, WORLD, [json.dumps(cfgs)])
    results = {}
    for name in runs:
        fields, reports, logs = [], [], []
        for rank in range(WORLD):
            with np.load(out / name / f"rank{rank}.npz") as z:
                fields.append({k: z[k] for k in z.files})
            reports.append(json.loads((out / name / f"rank{rank}.json").read_text()))
            logs.append(errs[rank].split(f"=== {name}\n")[1].split("=== ")[0])
        results[name] = (fields, reports, logs)
    return results


ODD_RUNS = {  # name: (workers, drop_last, batches per rank)
    "odd": (0, False, 8),
    "odd_workers": (2, False, 8),
    "odd_drop_last": (0, True, 7),
}


@pytest.fixture(scope="module")
def runs(two_dirs: Data, odd_dirs: Data, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """One launch of the two ranks for every case of this module."""
    cases = {"even": {"dirs": [str(d) for d in two_dirs.dirs], "batch_size": 100}}
    for name, (workers, drop_last, _) in ODD_RUNS.items():
        cases[name] = {
            "dirs": [str(d) for d in odd_dirs.dirs],
            "batch_size": 64,
            "workers": workers,
            "drop_last": drop_last,
        }
    return run_ranks(tmp_path_factory.mktemp("ranks"), cases)


def check_disjoint_and_complete(data: Data, fields: list[dict], reports: list[dict], errs: list[str]) -> int:
    """Ranks see disjoint records with their source content; together every record but the logged drop."""
    ids = [f["id"] for f in fields]
    for f in fields:
        assert set(f) == set(FIELDS)
        assert len(np.unique(f["id"])) == len(f["id"])
        data.source.assert_matches(f)
    assert not set(ids[0].tolist()) & set(ids[1].tolist())
    union = np.concatenate(ids)
    dropped = data.total - len(union)
    assert dropped == reports[0]["dropped"] and reports[1]["dropped"] == 0  # rank 0 reports the drop
    if dropped:
        assert f"dropping {dropped} of {data.total} examples" in errs[0], errs[0]
    else:
        assert "dropping" not in errs[0] + errs[1]
    assert reports[0]["batches"] == reports[1]["batches"]
    assert len(ids[0]) == len(ids[1])
    for r, rep in enumerate(reports):
        assert rep["examples"] == len(ids[r])
        assert rep["per_dir"] == np.bincount(id_dir(ids[r]), minlength=len(data.dirs)).tolist()
    return dropped


def test_two_ranks_split_every_record_once(two_dirs: Data, runs: dict[str, Run]) -> None:
    fields, reports, errs = runs["even"]
    assert check_disjoint_and_complete(two_dirs, fields, reports, errs) == 0
    assert [r["batches"] for r in reports] == [40, 40]
    assert all(r["activated"] == r["exhausted"] == 16 for r in reports)
    # Each rank reads one contiguous block of every shard, rank 0 the first half.
    for rank, f in enumerate(fields):
        ids = f["id"]
        key = id_dir(ids) * 100 + id_shard(ids)
        for k in np.unique(key):
            rows = np.sort(id_row(ids[key == k]))
            assert rows.tolist() == list(range(250 * rank, 250 * rank + 250))


@pytest.mark.parametrize("name", list(ODD_RUNS))
def test_an_odd_total_drops_so_every_rank_yields_the_same_batches(
    odd_dirs: Data, runs: dict[str, Run], name: str
) -> None:
    """903 positions: 2 ranks (x 2 workers) cannot split them evenly, so the drop path runs and is logged."""
    workers, drop_last, batches = ODD_RUNS[name]
    fields, reports, errs = runs[name]
    if not drop_last:
        dropped = check_disjoint_and_complete(odd_dirs, fields, reports, errs)
        assert dropped == odd_dirs.total % (WORLD * max(1, workers)) and dropped > 0
    else:
        assert all(len(f["id"]) == 7 * 64 for f in fields)  # 451 per rank: 7 full batches, the partial one dropped
        assert not set(fields[0]["id"].tolist()) & set(fields[1]["id"].tolist())
        for f in fields:
            odd_dirs.source.assert_matches(f)
    assert [r["batches"] for r in reports] == [batches, batches]


NEW_SHARDS_SCRIPT = r"""
import datetime, json, shutil, sys, time
from pathlib import Path
import torch, torch.distributed as dist
from mmpool.convert.converter import convert
from mmpool.stream.dataset import StreamingMixedShardDataset

src, dst, later, out = (Path(p) for p in sys.argv[1:5])
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
rank = dist.get_rank()
ds = StreamingMixedShardDataset([dst], pool_size=500, batch_size=50, random_seed=1)
before = ds.catalog.num_shards
dist.barrier()
if rank == 0:
    # Rank 1 is already waiting in set_epoch; without an agreed shard list it would have read the old manifest.
    time.sleep(1.0)
    for f in sorted(later.iterdir()):
        shutil.move(str(f), src / f.name)
    convert(src, dst, pack_size=1 << 20, progress=False)
ds.set_epoch(1)
ids, batches = [], 0
for batch in ds:
    ids += batch["id"].tolist()
    batches += 1
    dist.all_reduce(torch.ones(1))
(out / f"rank{rank}.json").write_text(json.dumps({"before": before, "after": ds.catalog.num_shards,
                                                   "ids": ids, "batches": batches}))
dist.destroy_process_group()
"""


def test_ranks_agree_on_shards_converted_between_epochs(tmp_path: Path) -> None:
    """set_epoch picks up new shards on every rank at once: rank 0 decides, the others follow (no DDP hang)."""
    from mmpool.convert.converter import convert
    from mmpool.testing.synthetic import make_synthetic

    (src,) = make_synthetic(tmp_path / "src", [6], 200, seed=3)
    (extra,) = make_synthetic(tmp_path / "extra", [8], 200, seed=3)
    later = tmp_path / "later"
    later.mkdir()
    for f in sorted(extra.iterdir())[6:]:  # shards 6 and 7 arrive while rank 1 waits in set_epoch
        f.rename(later / f.name)
    dst = tmp_path / "conv"
    convert(src, dst, pack_size=1 << 20, progress=False)
    script = tmp_path / "rank.py"
    script.write_text(NEW_SHARDS_SCRIPT)
    launch_ranks(script, WORLD, [str(src), str(dst), str(later), str(tmp_path)])
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert [(r["before"], r["after"]) for r in reports] == [(6, 8), (6, 8)]
    assert reports[0]["batches"] == reports[1]["batches"] == 16  # 1600 records, 2 ranks, batches of 50
    ids = reports[0]["ids"] + reports[1]["ids"]
    assert len(ids) == len(set(ids)) == 8 * 200
    assert not set(reports[0]["ids"]) & set(reports[1]["ids"])
