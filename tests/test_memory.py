"""The memory cap: going over it raises MemoryLimitExceeded with a full report (not a kill by the OS), and a pool
that cannot fit is refused up front, before anything is allocated."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Data

from mmpool.errors import ConfigError, MemoryLimitExceeded
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.stream.memory import GIB, anon_bytes

REPO = Path(__file__).resolve().parent.parent
BALLAST_MB = 600

CHILD = r"""
import os, sys
import numpy as np
from torch.utils.data import DataLoader
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.errors import MemoryLimitExceeded
from mmpool.stream.memory import GIB, anon_bytes

workers = int(sys.argv[1])
dirs = sys.argv[2:]
pool_size = 4000
# Room for what this process uses now, the pool, and 300 MB of slack: less than the ballast below.
cap_gb = (anon_bytes() + pool_size * 8 + 300 * 2**20) / GIB
print(f"CAP {cap_gb:.4f} PID {os.getpid()}", flush=True)
ds = StreamingMixedShardDataset(dirs, pool_size=pool_size, batch_size=50, random_seed=0, max_memory_gb=cap_gb,
                                memory_check_interval=0)
ballast = None
try:
    source = DataLoader(ds, batch_size=None, num_workers=workers) if workers else ds
    for i, batch in enumerate(source):
        if i == 3:
            ballast = np.ones(BALLAST_MB * 2**20 // 8)  # every page touched: anonymous memory
except MemoryLimitExceeded as exc:
    print(f"BATCH {i}", flush=True)
    print(exc, flush=True)
    sys.exit(3)
print("NO ERROR", flush=True)
""".replace("BALLAST_MB", str(BALLAST_MB))


@pytest.fixture(scope="module")
def children(two_dirs: Data) -> dict[int, tuple[int, str, str]]:
    """Both children (without and with DataLoader workers) run at once: starting torch is most of their time."""
    procs = {
        workers: subprocess.Popen(
            [sys.executable, "-c", CHILD, str(workers), *map(str, two_dirs.dirs)],
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for workers in (0, 2)
    }
    out = {}
    try:
        for workers, p in procs.items():
            stdout, stderr = p.communicate(timeout=120)
            out[workers] = (p.returncode, stdout, stderr)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return out


def run_child(children: dict[int, tuple[int, str, str]], workers: int) -> tuple[str, int, float]:
    code, stdout, stderr = children[workers]
    assert code == 3, f"exit {code} (negative: killed by a signal)\n{stdout}\n{stderr}"
    m = re.search(r"^CAP ([\d.]+) PID (\d+)$", stdout, re.M)
    return stdout, int(m.group(2)), float(m.group(1))


def check_report(out: str, cap_gb: float, roles: list[str], main_pid: int, main_role: str) -> None:
    m = re.search(r"memory cap exceeded: ([\d.]+) GiB of anonymous memory counted against max_memory_gb=([\d.]+)", out)
    assert m, out
    counted, cap = float(m.group(1)), float(m.group(2))
    assert abs(cap - cap_gb) < 0.01 and counted > cap
    assert counted >= BALLAST_MB / 1024  # the ballast is counted
    assert "anonymous (counted)" in out and "file-backed (page cache, not counted)" in out
    rows = re.findall(r"^\s+(this process|main|worker)\s+(\d+)\s+([\d.]+) GiB\s+([\d.]+) GiB\s*$", out, re.M)
    assert sorted({r[0] for r in rows}) == sorted(set(roles)), out
    assert (main_role, str(main_pid)) in {(r[0], r[1]) for r in rows}, out
    assert sum(float(r[2]) for r in rows) == pytest.approx(counted, abs=0.01 * len(rows))
    assert "mmpool's own memory in this process: pool " in out and "batch buffers" in out  # the pool context
    assert "the cap counts the whole training process and its DataLoader workers" in out
    assert "max_memory_gb" in out.split("fix:")[1] and "pool_size" in out.split("fix:")[1]


def test_going_over_the_cap_raises_with_a_report(children: dict) -> None:
    out, pid, cap = run_child(children, workers=0)
    assert re.search(r"^BATCH 3$", out, re.M), out  # raised by the first check after the ballast
    check_report(out, cap, ["this process"], pid, "this process")


def test_going_over_the_cap_raises_in_the_main_process_with_workers(children: dict) -> None:
    """A DataLoader worker sees the main process's ballast (it counts its parent and siblings) and raises; the
    DataLoader re-raises the same exception type, with the report, in the main process."""
    out, pid, cap = run_child(children, workers=2)
    assert int(re.search(r"^BATCH (\d+)$", out, re.M).group(1)) >= 3, out  # not before the ballast
    assert "DataLoader worker process" in out
    check_report(out, cap, ["main", "this process", "worker"], pid, "main")


def test_a_pool_that_cannot_fit_is_refused_before_anything_is_allocated(two_dirs: Data) -> None:
    before = anon_bytes()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as exc:
        StreamingMixedShardDataset(two_dirs.dirs, pool_size=1_000_000_000, max_memory_gb=(before + GIB) / GIB)
    assert time.perf_counter() - t0 < 5
    assert anon_bytes() - before < 100 * 2**20  # the 8 GB pool was never allocated
    msg = str(exc.value)
    assert "pool_size=1000000000" in msg and "max_memory_gb=" in msg
    fits = int(re.search(r"largest pool that fits is about (\d+)", msg).group(1))
    assert 0 < fits < (GIB + 2**27) // 8
    # The size it names does fit.
    StreamingMixedShardDataset(two_dirs.dirs, pool_size=fits // 2, max_memory_gb=(before + GIB) / GIB)


def test_the_memory_exception_is_a_memory_error() -> None:
    assert issubclass(MemoryLimitExceeded, MemoryError)


def _has_pss_anon() -> bool:
    try:
        return "Pss_Anon:" in Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _has_pss_anon(), reason="the kernel does not report Pss_Anon")
def test_pages_shared_with_a_forked_worker_count_once() -> None:
    """A forked DataLoader worker shares its parent's pages: counting them in both would reach the cap with a few
    workers while the memory really held has not grown."""
    import numpy as np

    from mmpool.stream.memory import measure

    ballast = np.ones(300 * 2**20 // 8)
    before = sum(p.anon for p in measure())
    pid = os.fork()
    if pid == 0:  # the child only waits, holding its inherited view of the ballast
        time.sleep(30)
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while True:
            procs = measure()
            if any(p.pid == pid for p in procs) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert any(p.pid == pid and p.role == "worker" for p in procs)
        after = sum(p.anon for p in procs)
        assert after - before < 100 * 2**20, (before, after, procs)  # not another 300 MB
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    del ballast
