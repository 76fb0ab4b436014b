"""Real clients start the ranks: Lightning's Trainer (strategy="ddp", 2 CPU devices) and ``torchrun``.

In both the dataset is built at script level, before any process group exists (the common pattern that used to
stream every record on every rank). Each rank records the ids of every batch its training step receives, per epoch;
the test checks that over both ranks every record comes exactly once per epoch, with its source content, that the
ranks take equal numbers of batches, and that the second epoch (no ``set_epoch`` anywhere) has a new order.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import Data, free_port

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 2

LIGHTNING_SCRIPT = r"""
import json, os, sys
import numpy as np, torch, lightning as L
from torch.utils.data import DataLoader
from mmpool import StreamingMixedShardDataset

cfg = json.loads(sys.argv[1])
EPOCHS = cfg["epochs"]
ds = StreamingMixedShardDataset(cfg["dirs"], pool_size=1000, batch_size=100, random_seed=3)  # before fit


class Model(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = {}

    def training_step(self, batch, i):
        self.seen.setdefault(self.current_epoch, []).append({k: v.numpy().copy() for k, v in batch.items()})
        return (self.w * batch["planes"].float().mean()).sum()

    def on_train_epoch_end(self):
        parts = self.seen[self.current_epoch]
        out = os.path.join(cfg["out"], f"rank{self.global_rank}_epoch{self.current_epoch}.npz")
        np.savez(out, batches=len(parts), **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=EPOCHS, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Model(), DataLoader(ds, batch_size=None, num_workers=cfg["workers"],
                                persistent_workers=cfg["workers"] > 0))
"""

TORCHRUN_SCRIPT = r"""
import json, os, sys
import numpy as np, torch, torch.distributed as dist
from torch.utils.data import DataLoader
from mmpool import StreamingMixedShardDataset

def main():  # spawned DataLoader workers import this file: nothing may run at import
    cfg = json.loads(sys.argv[1])
    EPOCHS = cfg["epochs"]
    ds = StreamingMixedShardDataset(cfg["dirs"], pool_size=1000, batch_size=100, random_seed=3)  # before the group
    dist.init_process_group("gloo")
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(1, 1))
    loader = DataLoader(ds, batch_size=None, num_workers=cfg["workers"], multiprocessing_context=cfg["context"])
    for epoch in range(EPOCHS):
        parts = []
        for batch in loader:
            parts.append({k: v.numpy().copy() for k, v in batch.items()})
            model(batch["planes"].float().mean().reshape(1, 1)).sum().backward()  # DDP all-reduces every step
        rank = dist.get_rank()
        out = os.path.join(cfg["out"], f"rank{rank}_epoch{epoch}.npz")
        np.savez(out, batches=len(parts), **{k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
"""


def launch(cmd: list[str], out: Path, timeout: float = 300) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    proc = subprocess.run(cmd, env=env, cwd=out, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def check_epochs(data: Data, out: Path) -> None:
    orders = []
    for epoch in range(EPOCHS):
        ranks = []
        for rank in range(2):
            with np.load(out / f"rank{rank}_epoch{epoch}.npz") as z:
                ranks.append({k: z[k] for k in z.files})
        assert ranks[0]["batches"] == ranks[1]["batches"], "ranks took different numbers of batches"
        ids = np.concatenate([r["id"] for r in ranks])
        # Every record exactly once per epoch over both ranks (the 8000 records split evenly: nothing dropped).
        assert len(ids) == data.total and np.array_equal(np.sort(ids), data.source.ids)
        assert not set(ranks[0]["id"].tolist()) & set(ranks[1]["id"].tolist())
        for r in ranks:
            data.source.assert_matches({k: v for k, v in r.items() if k != "batches"})
        orders.append(ids)
    assert not np.array_equal(orders[0], orders[1]), "the second epoch repeated the first one's order"


@pytest.mark.parametrize("workers", [0, 2])
def test_lightning_ddp_with_the_dataset_built_before_fit(two_dirs: Data, tmp_path: Path, workers: int) -> None:
    pytest.importorskip("lightning")
    script = tmp_path / "train.py"
    script.write_text(LIGHTNING_SCRIPT)
    cfg = {"dirs": [str(d) for d in two_dirs.dirs], "out": str(tmp_path), "workers": workers, "epochs": EPOCHS}
    launch([sys.executable, str(script), json.dumps(cfg)], tmp_path)
    check_epochs(two_dirs, tmp_path)


@pytest.mark.parametrize(("workers", "context"), [(0, None), (2, "spawn")])
def test_torchrun_with_the_dataset_built_before_the_process_group(
    two_dirs: Data, tmp_path: Path, workers: int, context: str | None
) -> None:
    """Spawned DataLoader workers have no process group of their own: they use the rank the main process saw."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun, "torchrun is installed with torch"
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    cfg = {
        "dirs": [str(d) for d in two_dirs.dirs],
        "out": str(tmp_path),
        "workers": workers,
        "context": context,
        "epochs": EPOCHS,
    }
    cmd = [torchrun, "--nproc_per_node=2", f"--master_port={free_port()}", str(script), json.dumps(cfg)]
    launch(cmd, tmp_path)
    check_epochs(two_dirs, tmp_path)
