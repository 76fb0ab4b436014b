"""The demo (``mmpool demo``): day one in about a minute.

1. Synthetic chess-like shards in 3 directories of different sizes (labels a small net can learn: the move is the
   square with the highest plane-weighted occupancy, the result leans with the material balance), converted once
   into packs. A second run reuses the converted data when it is complete and its checksums verify.
2. A tiny conv net trained for one epoch from StreamingMixedShardDataset (batch mode, 2 DataLoader workers,
   directories mixed by record count, Dihedral augmentation optional), with a progress bar.
3. A summary (shares against targets, distinct shards per batch, peak memory, time to the first batch, loss) and a
   PNG that puts the old order, shards read one after another, beside the mixed stream.

The synthetic ids ``(dir << 40) | (shard << 20) | row`` tell which shard each example came from.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmpool.errors import ConfigError, MmpoolError

log = logging.getLogger("mmpool")

DEMO_MARKER = ".mmpool-demo"  # marks a directory the demo made, so it only ever deletes its own
DATA_VERSION = 1
PNG_NAME = "mixing.png"
NO_PICTURE = 'none (pip install "mmpool[demo]" to draw it)'


@dataclass(frozen=True)
class Scale:
    names: tuple[str, ...]
    shards: tuple[int, ...]
    rows: tuple[int, ...]  # rows per shard, per directory
    pack_size: str
    batch_size: int
    pool_size: int
    channels: int = 4


SCALES = {
    # ~290k positions (80 MB) in 56 shards; one epoch trains in ~15-30 s on 2 cores.
    "small": Scale(("run3", "run2", "run1"), (28, 16, 12), (5000, 5500, 4000), "8M", 256, 64_000),
    # For tests: a few thousand positions, a few seconds end to end.
    "tiny": Scale(("run3", "run2", "run1"), (6, 4, 2), (500, 400, 300), "300K", 64, 1024),
}


@dataclass(frozen=True)
class DemoSummary:
    dirs: list[str]
    reused: bool  # the converted data of an earlier run was reused
    data_seconds: float
    train_seconds: float
    first_batch_seconds: float
    examples: int
    batches: int
    shares: list[float]
    targets: list[float]
    distinct_mixed: float  # distinct shards per batch, mean, in the mixed stream
    distinct_sequential: float  # the same when shards are read one after another
    peak_memory_bytes: int  # anonymous memory of the process and its workers, as the cap counts it
    max_memory_gb: float
    loss_start: float
    loss_end: float
    png: Path | None  # None: matplotlib is not installed, no picture drawn

    def __str__(self) -> str:
        names = [Path(d).name for d in self.dirs]
        shares = ", ".join(f"{n} {s:.1%} (target {t:.1%})" for n, s, t in zip(names, self.shares, self.targets))
        data = "reused converted data" if self.reused else "made and converted the data"
        return "\n".join(
            [
                f"demo: {data} in {self.data_seconds:.1f} s; trained on {self.examples:,} examples in {self.batches:,} "
                f"batches in {self.train_seconds:.1f} s ({self.examples / max(self.train_seconds, 1e-9):,.0f} "
                "examples/s)",
                f"  time to the first batch:     {self.first_batch_seconds:.2f} s (workers started, pools built)",
                f"  per-directory share:         {shares}",
                f"  distinct shards per batch:   {self.distinct_mixed:.1f} mixed, vs {self.distinct_sequential:.2f} "
                "when shards are read one after another",
                f"  peak memory:                 {self.peak_memory_bytes / 2**30:.2f} GiB anonymous (main process + "
                f"workers, as the {self.max_memory_gb:g} GiB cap counts it)",
                f"  loss (policy + value):       {self.loss_start:.2f} -> {self.loss_end:.2f} "
                "(mean of the first and of the last 10% of batches)",
                f"  picture:                     {self.png or NO_PICTURE}",
            ]
        )


def demo_root(path: Path, fresh: bool = False) -> Path:
    """The demo's directory: created and marked; kept for reuse if the demo made it, emptied if ``fresh``.

    Refuses a non-empty directory the demo did not make.
    """
    if path.exists():
        if not (path / DEMO_MARKER).exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(f"{path} exists and was not made by the demo; give an empty or new --dir")
        if fresh:
            shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / DEMO_MARKER).touch()
    return path


def run_demo(
    root: Path,
    scale: str = "small",
    fresh: bool = False,
    augment: bool = False,
    workers: int = 2,
    seed: int = 0,
    max_memory_gb: float = 5.0,
    progress: bool = True,
) -> DemoSummary:
    """Make or reuse the data under ``root`` (see ``demo_root``), train, write the PNG; returns the summary."""
    if scale not in SCALES:
        raise ConfigError(f"scale {scale!r}: use one of {', '.join(SCALES)}")
    sc = SCALES[scale]
    root = demo_root(Path(root), fresh)
    drawing = _can_draw()
    t0 = time.perf_counter()
    dirs, reused = demo_data(root, sc, seed, progress)
    data_seconds = time.perf_counter() - t0
    run = _train(dirs, sc, augment, workers, seed, max_memory_gb, progress)
    png = root / PNG_NAME if drawing else None
    if png is not None:
        _picture(png, run, [d.name for d in dirs])
    return DemoSummary(
        dirs=[str(d) for d in dirs],
        reused=reused,
        data_seconds=data_seconds,
        png=png,
        max_memory_gb=max_memory_gb,
        **{k: v for k, v in run.items() if k in DemoSummary.__dataclass_fields__},
    )


# --------------------------------------------------------------------------- data


def demo_data(root: Path, sc: Scale, seed: int, progress: bool) -> tuple[list[Path], bool]:
    """Converted directories under ``root/converted``: reused when complete and verified, else made afresh."""
    from mmpool.convert.converter import convert
    from mmpool.ops.check import verify_dirs

    dirs = [root / "converted" / name for name in sc.names]
    stamp = root / "data.json"
    params = {"version": DATA_VERSION, "seed": seed, **sc.__dict__}
    params = json.loads(json.dumps(params))  # tuples as lists, to compare with what was written
    if stamp.exists():  # written last, once the data is complete
        try:
            same = json.loads(stamp.read_text()) == params
            problems = verify_dirs(dirs, progress=False) if same else ["it was made with other parameters"]
        except (OSError, ValueError, MmpoolError) as exc:
            problems = [str(exc)]
        if not problems:
            return dirs, True
        print(f"demo: the data in {root} cannot be reused ({problems[0]}); making it again")
        stamp.unlink()
    for sub in ("legacy", "converted"):
        shutil.rmtree(root / sub, ignore_errors=True)
    legacy = _make_shards(root / "legacy", sc, seed, progress)
    for src, dst in zip(legacy, dirs):
        summary = convert(src, dst, pack_size=sc.pack_size, progress=False)
        print(f"demo: {dst}: {summary}")
    shutil.rmtree(root / "legacy")  # the legacy shards were only the converter's input
    stamp.write_text(json.dumps(params))
    return dirs, False


def _make_shards(root: Path, sc: Scale, seed: int, progress: bool) -> list[Path]:
    """Legacy ``.npz`` shards with learnable labels (``make_positions`` planes and ids)."""
    from mmpool.testing.synthetic import make_positions, write_legacy_shard

    out = []
    with tqdm(total=sum(sc.shards), desc="demo: shards", unit="shard", disable=not progress) as bar:
        for d, (name, count, rows) in enumerate(zip(sc.names, sc.shards, sc.rows)):
            (root / name).mkdir(parents=True)
            for number in range(count):
                arrays = make_positions(rows, seed, id_base=(d << 40) | (number << 20), channels=sc.channels)
                write_legacy_shard(root / name / f"shard_{number:05d}.npz", _label(arrays))
                bar.update(1)
            out.append(root / name)
    return out


def _label(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Move: the square whose occupancy, weighted 1, 2, 4, ... by plane, is highest (it turns with the board, so
    Dihedral augmentation keeps it right, ties aside). Result: a soft win/draw/loss leaning with the material
    balance."""
    planes = arrays["planes"]
    n, c = planes.shape[:2]
    score = np.tensordot(planes, 1 << np.arange(c), axes=([1], [0])).reshape(n, -1)
    material = (
        planes[:, : (c + 1) // 2].sum(axis=(1, 2, 3), dtype=np.int64)
        - planes[:, (c + 1) // 2 :].sum(axis=(1, 2, 3), dtype=np.int64)
    ) / 4.0
    logits = np.stack([material, np.zeros(n), -material], axis=1)
    wdl = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {
        **arrays,
        "move": score.argmax(axis=1).astype(np.int16),
        "wdl": (wdl / wdl.sum(axis=1, keepdims=True)).astype(np.float32),
    }


# --------------------------------------------------------------------------- training


def _model(channels: int):
    import torch
    from torch import nn

    class TinyNet(nn.Module):
        """One 3x3 conv layer; a per-square policy head (64 squares + pass) and a win/draw/loss head."""

        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(channels, 32, 3, padding=1)
            self.policy = nn.Conv2d(32, 1, 1)
            self.pass_move = nn.Linear(32, 1)
            self.value = nn.Linear(32, 3)

        def forward(self, planes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.relu(self.body(planes))
            pooled = h.mean(dim=(2, 3))
            return torch.cat([self.policy(h).flatten(1), self.pass_move(pooled)], dim=1), self.value(pooled)

    return TinyNet()


def _train(
    dirs: list[Path], sc: Scale, augment: bool, workers: int, seed: int, max_memory_gb: float, progress: bool
) -> dict:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from mmpool.augment.dihedral import Dihedral
    from mmpool.sampling.schedule import split_epoch
    from mmpool.stream.dataset import StreamingMixedShardDataset
    from mmpool.stream.memory import measure

    aug = Dihedral(planes=("planes",), square_indices=("move",)) if augment else None
    factor = aug.factor if aug else 1
    # Augmented, each position is shown under every symmetry: train on the first 1/factor of each directory's
    # shards, so the run stays as long and the mix stays exact, with a pool spanning as many positions.
    ranges = [f"0-{-(-n // factor) - 1}" for n in sc.shards]
    ds = StreamingMixedShardDataset(
        dirs,
        ranges,
        pool_size=sc.pool_size * factor,
        batch_size=sc.batch_size,
        random_seed=seed,
        weights="records",
        augmentation=aug,
        max_memory_gb=max_memory_gb,
    )
    cat = ds.catalog
    first_global = np.concatenate([[0], np.cumsum(cat.shards_per_dir())])  # selected shards are 0..n-1 per dir
    _, quota = split_epoch(cat.shard_dir, cat.shard_rows, cat.weights, max(1, workers))
    expected = quota * max(1, workers) * factor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 cores: one trains, the workers gather on the other
    torch.manual_seed(seed)
    model = _model(sc.channels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    shard_ids, losses = [], []
    peak, next_look, first = 0, 0.0, None
    t0 = time.perf_counter()
    try:
        with tqdm(
            total=expected, desc="demo: train", unit="ex", unit_scale=True, disable=not progress, mininterval=0.5
        ) as bar:
            for batch in loader:
                if first is None:
                    first = time.perf_counter() - t0
                ids = batch["id"].numpy()
                shard_ids.append((first_global[ids >> 40] + ((ids >> 20) & 0xFFFFF)).astype(np.int32))
                policy, value = model(batch["planes"].float())
                loss = (
                    F.cross_entropy(policy, batch["move"].long())
                    - (batch["wdl"] * F.log_softmax(value, dim=1)).sum(dim=1).mean()
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.update(len(ids))
                if time.perf_counter() >= next_look:  # memory and pool: twice a second
                    next_look = time.perf_counter() + 0.5
                    used = sum(p.anon for p in measure())
                    peak = max(peak, used)
                    pool = ds.stats().pool_entries
                    bar.set_postfix_str(
                        f"pool {pool / ds.pool_size:.0%} of {ds.pool_size:,}, "
                        f"mem {used / 2**30:.2f} GiB, loss {np.mean(losses[-20:]):.2f}"
                    )
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    if not losses:
        raise ConfigError("the demo stream yielded no batch")
    stats = ds.stats()
    mixed = np.concatenate(shard_ids)
    # The old order over the same data: every shard read whole, one after another (directory by directory).
    sequential = np.repeat(np.arange(cat.num_shards, dtype=np.int32), cat.shard_rows)
    sequential = np.resize(sequential, len(mixed))
    tenth = max(1, len(losses) // 10)
    return {
        "train_seconds": seconds,
        "first_batch_seconds": first,
        "examples": int(len(mixed)),
        "batches": len(losses),
        "shares": [float(x) for x in stats.shares],
        "targets": [float(x) for x in cat.weights],
        "distinct_mixed": float(np.mean([len(np.unique(b)) for b in shard_ids])),
        "distinct_sequential": _distinct_per_batch(sequential, sc.batch_size),
        "peak_memory_bytes": max(peak, stats.peak_memory_bytes),
        "loss_start": float(np.mean(losses[:tenth])),
        "loss_end": float(np.mean(losses[-tenth:])),
        "mixed": mixed,
        "sequential": sequential,
        "shard_dir": cat.shard_dir,
        "batch_size": sc.batch_size,
        "weights": cat.weights,
    }


def _distinct_per_batch(stream: np.ndarray, batch: int) -> float:
    """Mean number of distinct shards in consecutive batches of ``stream``."""
    n = -(-len(stream) // batch)
    return float(np.mean([len(np.unique(stream[i * batch : (i + 1) * batch])) for i in range(n)]))


# --------------------------------------------------------------------------- picture


def _can_draw() -> bool:
    """Whether matplotlib (the optional "demo" extra) is there; said before training starts, not after."""
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        pass
    else:
        return True
    log.warning(
        "matplotlib is not installed: the demo trains and prints its summary but draws no picture; "
        'pip install "mmpool[demo]" for the picture'
    )
    return False


def _picture(path: Path, run: dict, names: list[str]) -> None:
    """Shard id along the stream and per-directory share over time, old order against the mixed stream."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(13, 8))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.07, top=0.86, wspace=0.15, hspace=0.3)
    axes = fig.subplots(2, 2, sharex="col")
    shard_dir, weights = run["shard_dir"], run["weights"]
    colors = [f"C{d}" for d in range(len(names))]
    n = len(run["mixed"])
    window = max(run["batch_size"], n // 60)
    for col, (key, title) in enumerate(
        (("sequential", "old order: shards read one after another"), ("mixed", "mmpool: mixed stream"))
    ):
        stream = run[key]
        distinct = run[f"distinct_{key}"]
        ax = axes[0, col]
        pick = np.unique(np.linspace(0, n - 1, min(n, 12_000)).astype(np.int64))
        dirs = shard_dir[stream[pick]]
        for d, name in enumerate(names):
            sel = dirs == d
            ax.scatter(pick[sel], stream[pick][sel], s=2, color=colors[d], label=name, linewidths=0)
        ax.set_title(f"{title}\n{distinct:.1f} distinct shards per batch of {run['batch_size']}")
        ax.set_ylabel("shard id")
        ax.legend(loc="upper left", markerscale=6, fontsize="small")
        ax = axes[1, col]
        starts = np.arange(0, n - window + 1, window)
        share = np.stack(
            [np.bincount(shard_dir[stream[s : s + window]], minlength=len(names)) / window for s in starts]
        )
        for d, name in enumerate(names):
            ax.plot(starts + window / 2, share[:, d], color=colors[d], label=name)
            ax.axhline(weights[d], color=colors[d], linestyle=":", linewidth=1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("examples into the epoch")
        ax.set_ylabel(f"share per window of {window:,} examples")
        ax.set_title("per-directory share over time (dotted: target)")
    fig.suptitle("Blockwise batches vs a mixed pool of indices", fontsize=14)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
