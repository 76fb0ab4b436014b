"""The demo end to end at its tiny scale: data made then reused, training, summary figures, the PNG."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mmpool.cli import main
from mmpool.errors import ConfigError
from mmpool.format.manifest import read_manifest
from mmpool.ops.demo import DEMO_MARKER, PNG_NAME, SCALES, DemoSummary, demo_data, demo_root, run_demo

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = SCALES["tiny"]
TINY_RECORDS = [n * r for n, r in zip(TINY.shards, TINY.rows)]  # 3000, 1600, 600


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # not blank


def assert_sane(s: DemoSummary, examples: int) -> None:
    assert s.examples == examples and s.batches >= examples / TINY.batch_size
    np.testing.assert_allclose(s.targets, np.array(TINY_RECORDS) / sum(TINY_RECORDS))
    np.testing.assert_allclose(s.shares, s.targets, atol=0.01)  # exact proportions, to the last partial batch
    assert s.distinct_mixed > 2.5  # the pool mixes many shards into every batch ...
    assert 1.0 <= s.distinct_sequential < 1.3  # ... reading shards one after another gives one a batch
    assert 0 < s.first_batch_seconds < s.train_seconds
    assert 0 < s.peak_memory_bytes < s.max_memory_gb * 2**30
    assert s.loss_end < s.loss_start  # it learns
    assert_png(s.png)


def test_demo_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "demo"
    assert main(["demo", "--dir", str(root), "--scale", "tiny", "--quiet"]) == 0
    out = capsys.readouterr().out
    png = root / PNG_NAME
    assert f"  picture:                     {png}\n" in out
    assert "demo: made and converted the data in " in out
    assert "  distinct shards per batch:   " in out and "  loss (policy + value):       " in out
    assert out.endswith(
        f"\nthe data stays in {root} and is reused by the next run (--fresh makes it again; "
        "delete the directory to reclaim its space)\n"
    )
    assert_png(png)
    assert (root / DEMO_MARKER).exists() and not (root / "legacy").exists()
    assert [sum(s.rows for s in read_manifest(root / "converted" / n).shards) for n in TINY.names] == TINY_RECORDS
    pack = root / "converted" / "run3" / "pack-00000.npy"
    made = pack.stat().st_mtime_ns
    png.unlink()

    # A second run reuses the converted data; its summary figures are sane.
    summary = run_demo(root, scale="tiny", progress=False)
    assert summary.reused and pack.stat().st_mtime_ns == made
    assert_sane(summary, sum(TINY_RECORDS))
    assert f"  picture:                     {png}" in str(summary)


def test_data_is_reused_only_when_complete_and_valid(tmp_path: Path) -> None:
    root = demo_root(tmp_path / "demo")
    dirs, reused = demo_data(root, TINY, 0, progress=False)
    assert not reused and [d.name for d in dirs] == list(TINY.names)
    pack = root / "converted" / "run3" / "pack-00000.npy"
    made = pack.stat().st_mtime_ns
    assert demo_data(root, TINY, 0, progress=False) == (dirs, True) and pack.stat().st_mtime_ns == made
    assert demo_data(root, TINY, 1, progress=False) == (dirs, False)  # another seed: other data
    os.truncate(pack, 1000)  # damaged data is made again, not trusted
    assert demo_data(root, TINY, 1, progress=False) == (dirs, False)
    assert pack.stat().st_size > 1000
    (root / "data.json").unlink()  # an interrupted run (no stamp) is made again
    assert demo_data(root, TINY, 1, progress=False) == (dirs, False)
    # --fresh empties the directory first, and marks it again.
    (root / "stray.txt").write_text("x")
    demo_root(root, fresh=True)
    assert sorted(p.name for p in root.iterdir()) == [DEMO_MARKER]


def test_augmented_in_the_main_process(tmp_path: Path) -> None:
    s = run_demo(tmp_path / "demo", scale="tiny", augment=True, workers=0, progress=False)
    selected = list(TINY.rows)  # the first eighth of each directory's shards: one shard each
    assert s.examples == sum(selected) * 8  # every selected position under each of the 8 symmetries
    np.testing.assert_allclose(s.targets, np.array(selected) / sum(selected))
    np.testing.assert_allclose(s.shares, s.targets, atol=0.01)
    assert s.distinct_mixed > 2.5 and s.loss_end < s.loss_start
    assert_png(s.png)


def test_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("precious")
    for fresh in (False, True):
        with pytest.raises(ConfigError, match="exists and was not made by the demo; give an empty or new --dir"):
            run_demo(tmp_path, scale="tiny", fresh=fresh, progress=False)
    assert (tmp_path / "mine.txt").read_text() == "precious" and not (tmp_path / DEMO_MARKER).exists()
    with pytest.raises(ConfigError, match="scale 'huge': use one of small, tiny"):
        run_demo(tmp_path / "new", scale="huge")


def test_without_matplotlib_the_demo_says_so_before_training_and_still_trains(tmp_path: Path) -> None:
    """After a plain ``pip install`` (no extras) the demo must not die at its last step."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # as if it were not installed
        "from mmpool.cli import main\n"
        f"sys.exit(main(['demo', '--dir', {str(tmp_path / 'demo')!r}, '--scale', 'tiny', '--quiet', '-v']))\n"
    )
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warning = 'pip install "mmpool[demo]"'
    assert warning in proc.stderr
    # Said before training starts: before the first pool is built (logged at -v).
    assert "pool of" in proc.stderr and proc.stderr.index(warning) < proc.stderr.index("pool of")
    assert "distinct shards per batch" in proc.stdout
    assert "  picture:                     none" in proc.stdout
    assert not (tmp_path / "demo" / PNG_NAME).exists()
