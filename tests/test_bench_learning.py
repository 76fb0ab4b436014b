"""Smoke test of tools/bench_learning.py: its quick mode, run as a user runs it (a subprocess, real data, real
DataLoaders), trains every variant to finite losses, and the sequential reader's batches come from fewer shards
than mmpool's."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from mmpool.stream.dataset import StreamingMixedShardDataset

REPO = Path(__file__).resolve().parent.parent
STRATIFIED = "mix" in inspect.signature(StreamingMixedShardDataset).parameters


def test_quick_learning_benchmark(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))  # this checkout's mmpool, whatever is installed
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_learning.py"), "--quick", "--out", str(tmp_path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "learning.json").read_text())
    assert (tmp_path / "learning.png").stat().st_size > 0
    runs = {r["variant"]: r for r in doc["runs"]}
    expected = {"sequential", "list-pool", "mmpool", "mmpool-stratified", "global-shuffle", "mmpool-whole"}
    assert set(runs) == expected
    if not STRATIFIED:
        assert runs["mmpool-stratified"]["status"] == "unavailable"
        assert "mix='stratified' not available in this mmpool" in proc.stdout
    ran = [r for r in runs.values() if STRATIFIED or r["variant"] != "mmpool-stratified"]
    for r in ran:
        assert r["status"] == "ok", r
        assert r["examples"] == ran[0]["examples"] > 0
        assert len(r["curve"]) >= 2
        losses = [p["val_loss"] for p in r["curve"]] + [p["train_loss"] for p in r["curve"][1:]]
        assert all(math.isfinite(x) for x in losses), (r["variant"], losses)
    assert runs["sequential"]["shards_per_batch"] < runs["mmpool"]["shards_per_batch"]
    assert "| (a) shards one after another |" in proc.stdout
