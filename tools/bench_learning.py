"""Learning benchmark: what mixing buys in training, measured on a held-out validation loss.

    python tools/bench_learning.py [--quick] [--seeds N] [--out bench_out] [--data DIR]

One small network (an MLP over the board planes, a move head and a win/draw/loss head, Adam) is trained on the
same examples, one epoch, same batch size, same initialisation, through five loaders that differ only in the
order they hand the examples out:

- (a) ``sequential``: shards read one after another (the old sequential dataset): ``bench_peers.ListPool`` with a
  pool of one shard, so every shard is emptied, in random order, before the next one is read; directories
  round-robin shard by shard.
- (b) ``list-pool``: the old in-RAM pool of positions, ``bench_peers.ListPool`` (a Python list of per-position
  dicts refilled shard by shard) with a pool of ``POOL`` positions: 2M-style, scaled down to the data.
- (c) ``mmpool``: ``StreamingMixedShardDataset`` over the converted directories, default mix, pool ``POOL``.
- (d) ``mmpool-stratified``: the same with ``mix="stratified"`` (the exact per-batch mix); skipped with a note
  when the installed mmpool does not know it.
- (e) ``global-shuffle``: every training example in RAM, a uniform random permutation (the ideal).
- (f) ``mmpool-whole`` (beyond the issue's five): (c) with a pool of every training example, which costs mmpool
  8 bytes an entry: how much of the gap between (c) and (e) is the pool's size.

Every loader goes through a torch DataLoader in the training process (``num_workers=0``; torch on one thread).

Data (made by this benchmark, deterministic in the seed): ``GENERATIONS`` directories, generations of selfplay of
rising strength, each a time series of shards. A shard is internally homogeneous, as engine data is: its
positions come from one opening family (a family is a pattern of occupied squares, so it is visible in the
input), and the net that played them had its own move preferences and result bias at that time (a per-shard
drift of the move logits and of the win/loss logit, an AR(1) series along the shards, not visible in the
input). Labels come from a fixed random teacher net over the planes, sharpened by the generation's strength,
plus the family's and the shard's offsets; the move is sampled from that distribution, the win/draw/loss target
is a soft one. Every ``VAL_EVERY``-th shard of each directory is held out (never trained on): the validation set
spans every generation, family and time. The loss is the move cross-entropy plus the win/draw/loss
cross-entropy, as in ``mmpool demo``.

Measured per (variant, seed), each in a fresh subprocess: validation loss (and the mean training loss of the
batches since the last point) at regular intervals; wall time of the epoch (evaluations excluded); peak anonymous
memory (psutil ``rss - shared``, process and children, sampled every 20 ms by a thread: ``bench_peers.PeakMemory``)
and the floor before the loader was built; distinct shards per batch (``bench_peers.MixStats``). Repeated over
``--seeds`` seeds on the same data (made once, from ``DATA_SEED``): seed s sets the initialisation and the
loaders' orders; differences between variants are compared seed by seed. The threshold for
"examples to reach it" is 10% of the way from the initial validation loss down to the global shuffle's final one
(means over seeds): a loader must achieve 90% of the ideal's improvement.

Writes ``OUT/learning.json`` (every number), ``OUT/learning.png`` (validation and training loss against examples
seen, mean over seeds with a min-max band) and prints a markdown table and a summary that says whether the
differences exceed the spread over seeds. ``--quick`` (the smoke test) trains a few hundred steps on small data
with one seed.

Time on the project's 2-core machine: ~2.5 min (3 seeds); ``--quick`` ~25 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bench_peers as peers  # a sibling module: tools/ is on the path of a script run from it
import numpy as np

from mmpool.convert.converter import convert
from mmpool.testing.synthetic import write_legacy_shard

GENERATIONS = 3
CHANNELS = 4
SQUARES = 64
MOVES = SQUARES + 1  # the last is the pass
FAMILIES = 8
TEACHER_HIDDEN = 64
STRENGTH = (0.6, 1.0, 1.4)  # generation g's teacher logits are multiplied by this: later generations play sharper
DRAW_LOGIT = (-1.0, -0.3, 0.4)  # and draw more
FAMILY_BIAS = 1.0  # std of an opening family's move-logit offsets (visible: the family shows in the planes)
SHARD_DRIFT = 0.4  # std of a shard's move-logit offsets (not visible)
RESULT_DRIFT = 0.5  # std of a shard's win/loss logit offset (not visible)
DRIFT_CORRELATION = 0.5  # AR(1) coefficient of the shard offsets along a directory's shards
ID_SHARD_BITS = 20  # ids are (dir << 40) | (shard << 20) | row, as mmpool.testing.synthetic makes them
ID_DIR_BITS = 40
DATA_SEED = 0  # the data is the same for every seed: seeds vary the initialisation and the loaders' orders
MB = 1 << 20


@dataclass(frozen=True)
class Scale:
    shards: int  # shards per directory, in time order, held-out ones included
    val_every: int  # shard t is held out when t % val_every == val_every // 2
    rows: int  # per shard
    batch: int
    pool: int  # positions in the pool of (b), (c) and (d)
    evals: int  # validation points after the start
    hidden: int  # the student's hidden width
    lr: float


SCALES = {
    "full": Scale(shards=18, val_every=9, rows=8192, batch=256, pool=65_536, evals=24, hidden=128, lr=2e-3),
    "quick": Scale(shards=6, val_every=6, rows=2048, batch=64, pool=8_192, evals=6, hidden=64, lr=2e-3),
}
SEEDS = {"full": 3, "quick": 1}


@dataclass(frozen=True)
class Variant:
    name: str
    label: str


VARIANTS = [
    Variant("sequential", "(a) shards one after another"),
    Variant("list-pool", "(b) old Python-list pool"),
    Variant("mmpool", "(c) mmpool, default mix"),
    Variant("mmpool-stratified", "(d) mmpool, mix='stratified'"),
    Variant("global-shuffle", "(e) global shuffle in RAM"),
    Variant("mmpool-whole", "(f) mmpool, pool = all training data"),
]
BY_NAME = {v.name: v for v in VARIANTS}
NO_STRATIFIED = "mix='stratified' not available in this mmpool"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


class World:
    """Everything the labels of one seed's data depend on: opening families, the teacher net, the generations'
    strength and draw rate, and every shard's family and drift."""

    def __init__(self, seed: int, shards: int) -> None:
        rng = np.random.default_rng([seed, 0x1EA7])
        features = CHANNELS * SQUARES
        squares = rng.random((FAMILIES, features)) < 0.25
        self.occupancy = np.where(squares, 0.75, 0.08)  # per family: probability that a square is occupied
        self.w1 = rng.normal(size=(features, TEACHER_HIDDEN))
        self.w_move = rng.normal(size=(TEACHER_HIDDEN, MOVES))
        self.w_value = rng.normal(size=TEACHER_HIDDEN)
        self.family_bias = rng.normal(0, FAMILY_BIAS, size=(FAMILIES, MOVES))
        # Scale the teacher's outputs to unit spread over the positions (of all families) it will label.
        probe = self.planes(rng, rng.integers(0, FAMILIES, size=4096))
        hidden = self.hidden(probe)
        self.move_scale = 1.5 / (hidden @ self.w_move).std()
        self.value_scale = 1.0 / (hidden @ self.w_value).std()
        self.family = rng.integers(0, FAMILIES, size=(GENERATIONS, shards))
        self.move_drift = _ar1(rng, (GENERATIONS, shards, MOVES), SHARD_DRIFT)
        self.result_drift = _ar1(rng, (GENERATIONS, shards), RESULT_DRIFT)

    def planes(self, rng: np.random.Generator, family: np.ndarray) -> np.ndarray:
        """Occupancy planes ``uint8 (n, CHANNELS, 8, 8)`` of positions of the given families."""
        occupied = rng.random((len(family), CHANNELS * SQUARES)) < self.occupancy[family]
        return occupied.astype(np.uint8).reshape(-1, CHANNELS, 8, 8)

    def hidden(self, planes: np.ndarray) -> np.ndarray:
        x = planes.reshape(len(planes), -1).astype(np.float64) - 0.2
        return np.tanh(x @ self.w1 / np.sqrt(x.shape[1] * 0.2))

    def shard(self, seed: int, gen: int, t: int, rows: int, id_base: int) -> dict[str, np.ndarray]:
        """Shard ``t`` of generation ``gen``: planes, move, wdl, id (the record layout of ``mmpool.testing.synthetic``)."""
        rng = np.random.default_rng([seed, gen, t])
        family = self.family[gen, t]
        planes = self.planes(rng, np.full(rows, family))
        hidden = self.hidden(planes)
        logits = STRENGTH[gen] * self.move_scale * (hidden @ self.w_move)
        logits += self.family_bias[family] + self.move_drift[gen, t]
        move = (logits + rng.gumbel(size=logits.shape)).argmax(axis=1)  # a sample of softmax(logits)
        win = STRENGTH[gen] * self.value_scale * (hidden @ self.w_value) + self.result_drift[gen, t]
        wdl = np.stack([win, np.full(rows, DRAW_LOGIT[gen]), -win], axis=1)
        wdl = np.exp(wdl - wdl.max(axis=1, keepdims=True))
        return {
            "planes": planes,
            "move": move.astype(np.int16),
            "wdl": (wdl / wdl.sum(axis=1, keepdims=True)).astype(np.float32),
            "id": np.arange(rows, dtype=np.int64) + np.int64(id_base),
        }


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """AR(1) series along axis 1 with stationary standard deviation ``std``."""
    noise = rng.normal(0, std, size=shape)
    out = noise.copy()
    for t in range(1, shape[1]):
        out[:, t] = DRIFT_CORRELATION * out[:, t - 1] + np.sqrt(1 - DRIFT_CORRELATION**2) * noise[:, t]
    return out


@dataclass(frozen=True)
class Data:
    train: list[Path]  # legacy .npz shard directories, one per generation (what (a), (b), (e) read)
    val: list[Path]  # the held-out shards, one directory per generation
    converted: list[Path]  # ``mmpool convert`` of ``train`` (what (c), (d) read)

    @staticmethod
    def at(root: Path) -> Data:
        names = [f"gen{g}" for g in range(GENERATIONS)]
        return Data(*([root / part / n for n in names] for part in ("train", "val", "converted")))


def held_out(t: int, sc: Scale) -> bool:
    return t % sc.val_every == sc.val_every // 2


def make_data(root: Path, sc: Scale, seed: int) -> tuple[Data, float]:
    """Write the seed's shards (training ones numbered 0, 1, ... in time order) and convert the training ones;
    returns the directories and the seconds the conversion took."""
    if root.exists():
        shutil.rmtree(root)  # only ever a directory this benchmark named (OUT/data/learning-...)
    data = Data.at(root)
    world = World(seed, sc.shards)
    convert_s = 0.0
    for g in range(GENERATIONS):
        data.train[g].mkdir(parents=True)
        data.val[g].mkdir(parents=True)
        number = 0
        for t in range(sc.shards):
            if held_out(t, sc):
                write_legacy_shard(data.val[g] / f"shard_{t:05d}.npz", world.shard(seed, g, t, sc.rows, 0))
                continue
            id_base = (g << ID_DIR_BITS) | (number << ID_SHARD_BITS)
            write_legacy_shard(data.train[g] / f"shard_{number:05d}.npz", world.shard(seed, g, t, sc.rows, id_base))
            number += 1
        c0 = time.perf_counter()
        convert(data.train[g], data.converted[g], progress=False)
        convert_s += time.perf_counter() - c0
    return data, convert_s


def training_examples(data: Data, sc: Scale) -> int:
    return sum(len(peers.shard_files(d)) for d in data.train) * sc.rows


# --------------------------------------------------------------------------- one run (in the child process)


def loader_of(variant: str, data: Data, sc: Scale, seed: int):
    """The torch DataLoader of a variant: batches of ``sc.batch`` examples, one epoch of the training shards."""
    import torch
    from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler

    if variant in ("sequential", "list-pool"):
        pool = peers.ListPool(data.train, 1 if variant == "sequential" else sc.pool, seed=seed)

        class Positions(IterableDataset):
            def __iter__(self):
                return iter(pool)

        return DataLoader(Positions(), batch_size=sc.batch, collate_fn=peers.collate_rows)
    if variant.startswith("mmpool"):
        from mmpool.stream.dataset import StreamingMixedShardDataset

        extra = {"mix": "stratified"} if variant == "mmpool-stratified" else {}
        pool = training_examples(data, sc) if variant == "mmpool-whole" else sc.pool
        ds = StreamingMixedShardDataset(
            data.converted, pool_size=pool, batch_size=sc.batch, random_seed=seed, num_epochs=1, **extra
        )
        return DataLoader(ds, batch_size=None)
    if variant == "global-shuffle":
        arrays = {k: torch.from_numpy(v) for k, v in peers.load_arrays(data.train, sc.rows).items()}

        class InRam(Dataset):
            def __len__(self) -> int:
                return len(arrays["id"])

            def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
                at = torch.as_tensor(rows)
                return {k: v[at] for k, v in arrays.items()}

        ds = InRam()
        order = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
        return DataLoader(ds, sampler=BatchSampler(order, sc.batch, drop_last=False), batch_size=None)
    raise ValueError(f"unknown variant {variant!r}")


def network(hidden: int):
    import torch
    from torch import nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(CHANNELS * SQUARES, hidden), nn.ReLU(), nn.Linear(hidden, MOVES + 3)
    ).to(torch.float32)


def losses(model, batch: dict) -> tuple[Any, Any]:
    """Move cross-entropy and win/draw/loss cross-entropy (soft targets), as ``mmpool demo`` trains."""
    import torch.nn.functional as F

    out = model(batch["planes"].float())
    policy = F.cross_entropy(out[:, :MOVES], batch["move"].long())
    value = -(batch["wdl"] * F.log_softmax(out[:, MOVES:], dim=1)).sum(dim=1).mean()
    return policy, value


def evaluate(model, val: dict) -> dict[str, float]:
    import torch

    model.eval()
    n = len(val["move"])
    policy = value = 0.0
    with torch.no_grad():
        for s in range(0, n, 8192):
            p, v = losses(model, {k: t[s : s + 8192] for k, t in val.items()})
            k = min(n, s + 8192) - s
            policy, value = policy + p.item() * k, value + v.item() * k
    model.train()
    return {"val_loss": (policy + value) / n, "val_policy": policy / n, "val_value": value / n}


def run(variant: str, data: Data, sc: Scale, seed: int) -> dict:
    """Train one epoch through the variant's loader; the validation curve, times, memory and mix."""
    import torch

    torch.set_num_threads(1)
    val = {k: torch.from_numpy(v) for k, v in peers.load_arrays(data.val, sc.rows).items() if k != "id"}
    total = training_examples(data, sc)
    steps_total = -(-total // sc.batch)
    every = max(1, steps_total // sc.evals)
    torch.manual_seed(seed)
    model = network(sc.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=sc.lr)
    memory = peers.PeakMemory()
    base_anon = memory.sample()[0]
    memory.start()
    t0 = time.perf_counter()
    try:
        loader = loader_of(variant, data, sc, seed)
    except TypeError as exc:  # an mmpool without mix= (issue 13 not merged)
        memory.stop()
        if variant == "mmpool-stratified" and "mix" in str(exc):
            return {"variant": variant, "seed": seed, "status": "unavailable", "note": f"{NO_STRATIFIED}: {exc}"}
        raise
    curve = [{"examples": 0, **evaluate(model, val), "train_loss": None}]
    eval_s, examples, steps, interval = 0.0, 0, 0, []
    ids = []
    for batch in loader:
        policy, value = losses(model, batch)
        loss = policy + value
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        examples += len(batch["move"])
        interval.append(loss.item())
        ids.append(batch["id"].numpy())
        if steps % every == 0 or examples >= total:
            e0 = time.perf_counter()
            curve.append({"examples": examples, **evaluate(model, val), "train_loss": float(np.mean(interval))})
            interval = []
            eval_s += time.perf_counter() - e0
    wall = time.perf_counter() - t0 - eval_s
    memory.stop()
    if examples != total:
        raise RuntimeError(f"{variant}: {examples:,} examples in the epoch, expected {total:,}")
    mix = peers.MixStats(tuple([1 / GENERATIONS] * GENERATIONS))
    for b in ids:
        mix.add(b)
    return {
        "variant": variant,
        "seed": seed,
        "status": "ok",
        "examples": examples,
        "steps": steps,
        "wall_s": wall,
        "eval_s": eval_s,
        "base_anon_mb": base_anon / MB,
        "peak_anon_mb": memory.peak_anon / MB,
        "peak_rss_mb": memory.peak_rss / MB,
        "shards_per_batch": mix.shards / mix.batches,
        "worst_share_error": mix.worst if mix.windows else None,
        "curve": curve,
    }


def child(args: argparse.Namespace) -> None:
    doc = run(args.child, Data.at(Path(args.root)), SCALES[args.scale_name], args.seed)
    Path(args.result).write_text(json.dumps(doc))


# --------------------------------------------------------------------------- orchestration (parent)


def run_child(variant: str, root: Path, scale: str, seed: int, out: Path) -> dict:
    result = out / f".learning-{variant}-{seed}-{os.getpid()}.json"  # hidden: not a result file
    result.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--root", str(root)]
    cmd += ["--scale-name", scale, "--seed", str(seed), "--result", str(result)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not result.is_file():
        raise RuntimeError(f"{variant}, seed {seed} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    doc = json.loads(result.read_text())
    result.unlink()
    return doc


def spread(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs, dtype=np.float64)
    return {"mean": float(a.mean()), "min": float(a.min()), "max": float(a.max())}


def first_at_or_below(curve: list[dict], threshold: float) -> int | None:
    return next((p["examples"] for p in curve if p["val_loss"] <= threshold), None)


def summarise(runs: list[dict], seeds: list[int]) -> dict:
    """Per-variant rows (means and spreads over seeds), the threshold, and the comparisons."""
    ok = {v.name: [r for r in runs if r["variant"] == v.name and r["status"] == "ok"] for v in VARIANTS}
    ideal = ok["global-shuffle"]
    start = float(np.mean([r["curve"][0]["val_loss"] for r in ideal]))
    ideal_final = float(np.mean([r["curve"][-1]["val_loss"] for r in ideal]))
    threshold = ideal_final + 0.1 * (start - ideal_final)
    rows = []
    for v in VARIANTS:
        rs = ok[v.name]
        if not rs:
            note = next((r["note"] for r in runs if r["variant"] == v.name), "not run")
            rows.append({"variant": v.name, "label": v.label, "status": "skipped", "note": note})
            continue
        reach = [first_at_or_below(r["curve"], threshold) for r in rs]
        reached = [x for x in reach if x is not None]
        rows.append(
            {
                "variant": v.name,
                "label": v.label,
                "status": "ok",
                "seeds": [r["seed"] for r in rs],
                "final_val_loss": spread([r["curve"][-1]["val_loss"] for r in rs]),
                "final_val_policy": spread([r["curve"][-1]["val_policy"] for r in rs]),
                "final_val_value": spread([r["curve"][-1]["val_value"] for r in rs]),
                "examples_to_threshold": reach,
                "examples_to_threshold_mean": float(np.mean(reached)) if len(reached) == len(rs) else None,
                "reached": f"{len(reached)}/{len(rs)}",
                "wall_s": spread([r["wall_s"] for r in rs]),
                "peak_anon_mb": spread([r["peak_anon_mb"] for r in rs]),
                "base_anon_mb": spread([r["base_anon_mb"] for r in rs]),
                "peak_rss_mb": spread([r["peak_rss_mb"] for r in rs]),
                "shards_per_batch": spread([r["shards_per_batch"] for r in rs]),
                "examples": rs[0]["examples"],
            }
        )
    pairs = [("mmpool", "global-shuffle"), ("sequential", "mmpool"), ("list-pool", "mmpool")]
    pairs += [("mmpool-stratified", "mmpool"), ("mmpool-stratified", "global-shuffle")]
    pairs += [("mmpool-whole", "global-shuffle"), ("mmpool-whole", "mmpool")]
    comparisons = [compare(ok[a], ok[b], a, b) for a, b in pairs if ok[a] and ok[b]]
    return {"threshold": threshold, "start_val_loss": start, "rows": rows, "comparisons": comparisons}


def compare(runs_a: list[dict], runs_b: list[dict], a: str, b: str) -> dict:
    """Final validation loss of ``a`` minus ``b``, seed by seed, and whether it exceeds the spread over seeds."""
    fa = {r["seed"]: r["curve"][-1]["val_loss"] for r in runs_a}
    fb = {r["seed"]: r["curve"][-1]["val_loss"] for r in runs_b}
    seeds = sorted(set(fa) & set(fb))
    diffs = [fa[s] - fb[s] for s in seeds]
    va, vb = [fa[s] for s in seeds], [fb[s] for s in seeds]
    apart = min(va) > max(vb) or max(va) < min(vb)  # the min-max ranges over seeds do not overlap
    same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    worse = "higher" if np.mean(diffs) > 0 else "lower"
    if len(seeds) < 2:
        verdict = f"{a} is {abs(np.mean(diffs)):.4f} {worse} than {b}: one seed, no spread to judge it by"
    elif apart:
        verdict = f"{a} is {abs(np.mean(diffs)):.4f} {worse} than {b}: beyond the spread over {len(seeds)} seeds"
    elif same_sign:
        verdict = (
            f"{a} is {abs(np.mean(diffs)):.4f} {worse} than {b} in every seed, but the ranges over seeds overlap: "
            "within the seed spread"
        )
    else:
        verdict = f"{a} vs {b}: {np.mean(diffs):+.4f} on average, the sign changes between seeds: within noise"
    return {"a": a, "b": b, "seeds": seeds, "diffs": diffs, "apart": apart, "same_sign": same_sign, "verdict": verdict}


def flat(row: dict) -> dict:
    """A variant's row with one number a column, for tools/bench.py: means, but the maximum of peak memory (as the
    printed table), and the final loss with its min and max."""
    out = {k: v for k, v in row.items() if not isinstance(v, (dict, list))}
    for k, v in row.items():
        if isinstance(v, dict):
            out[k] = v["max"] if k.startswith("peak") else v["mean"]
    if "final_val_loss" in row:
        out["final_val_loss_min"], out["final_val_loss_max"] = (
            row["final_val_loss"]["min"],
            row["final_val_loss"]["max"],
        )
    return out


def table(summary: dict, sc: Scale, seeds: list[int]) -> str:
    rows = summary["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    base = ok[0]["base_anon_mb"]["mean"] if ok else 0.0
    head = (
        f"{ok[0]['examples'] if ok else 0:,} training examples (one epoch), batches of {sc.batch}, pool {sc.pool:,}; "
        f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}): mean ± half the min-max range; threshold "
        f"{summary['threshold']:.4f} (90% of the way from the initial {summary['start_val_loss']:.4f} to the global "
        f"shuffle's final loss); peak anonymous MB of the training process (rss - shared), of which "
        f"~{base:.0f} MB before the loader is built (Python, torch, model, validation set)\n\n"
        "| variant | final val loss | examples to threshold | wall s | peak anon MB (max) | distinct shards per batch |\n"
        "|---|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | skipped: {r['note'].split(':')[0]} | | | | |")
            continue
        f = r["final_val_loss"]
        reach = r["examples_to_threshold_mean"]
        reach_s = f"{reach:,.0f}" if reach is not None else f"not reached ({r['reached']} seeds reached it)"
        lines.append(
            f"| {r['label']} | {f['mean']:.4f} ± {(f['max'] - f['min']) / 2:.4f} | {reach_s} | "
            f"{r['wall_s']['mean']:.1f} | {r['peak_anon_mb']['max']:.0f} | {r['shards_per_batch']['mean']:.1f} |"
        )
    return head + "\n".join(lines) + "\n"


def picture(path: Path, runs: list[dict], summary: dict, sc: Scale, seeds: list[int]) -> None:
    """Validation and training loss against examples seen: mean over seeds, min-max band, one line per variant."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(13, 6.2))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.18, top=0.86, wspace=0.18)
    axes = fig.subplots(1, 2)
    for k, v in enumerate(VARIANTS):
        rs = [r for r in runs if r["variant"] == v.name and r["status"] == "ok"]
        if not rs:
            continue
        x = np.array([p["examples"] for p in rs[0]["curve"]])
        for ax, key in zip(axes, ("val_loss", "train_loss")):
            ys = np.array([[np.nan if p[key] is None else p[key] for p in r["curve"]] for r in rs])
            ax.plot(x, ys.mean(axis=0), color=f"C{k}", label=v.label)
            if len(rs) > 1:
                ax.fill_between(x, ys.min(axis=0), ys.max(axis=0), color=f"C{k}", alpha=0.2, linewidth=0)
    axes[0].axhline(summary["threshold"], color="gray", linestyle=":", linewidth=1, label="threshold")
    axes[0].set_title("validation loss (held-out shards of every generation)")
    axes[1].set_title("training loss (mean of the batches since the previous point)")
    for ax, key in zip(axes, ("val_loss", "train_loss")):
        # From the lowest point to the highest of the second half of training: the start is off the top.
        curves = [[p[key] for p in r["curve"] if p[key] is not None] for r in runs if r["status"] == "ok"]
        low = min(min(c) for c in curves)
        high = max(max(c[len(c) // 2 :]) for c in curves)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.15 * (high - low))
        ax.set_xlabel("examples seen")
        ax.set_ylabel("move + win/draw/loss cross-entropy")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:.0f}k"))
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize="small")
    fig.suptitle(
        f"Same network, same examples, {len(VARIANTS)} orders: {GENERATIONS} generations x {sc.shards} shards of {sc.rows:,} "
        f"(homogeneous shards, drifting labels), batches of {sc.batch}, pool {sc.pool:,}\n"
        f"mean over {len(seeds)} seed(s), band: min-max",
        fontsize=11,
    )
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small data, a few hundred steps, one seed (smoke test)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3, 1 with --quick)")
    p.add_argument("--out", default="bench_out", help="where results go (default bench_out)")
    p.add_argument("--data", default=None, help="where the generated data goes (default OUT/data)")
    p.add_argument("--child", choices=sorted(BY_NAME), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--scale-name", choices=sorted(SCALES), help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    scale = "quick" if args.quick else "full"
    sc = SCALES[scale]
    seeds = list(range(args.seeds or SEEDS[scale]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_root = Path(args.data) if args.data else out / "data"
    t0 = time.perf_counter()
    runs: list[dict] = []
    stratified = True
    root = data_root / f"learning-{scale}"
    _, convert_s = make_data(root, sc, DATA_SEED)
    log(f"data made in {time.perf_counter() - t0:.1f} s, of which mmpool convert {convert_s:.1f} s ({root})")
    for seed in seeds:
        log(f"seed {seed}:")
        for v in VARIANTS:
            if v.name == "mmpool-stratified" and not stratified:
                runs.append({"variant": v.name, "seed": seed, "status": "unavailable", "note": NO_STRATIFIED})
                continue
            doc = run_child(v.name, root, scale, seed, out)
            runs.append(doc)
            if doc["status"] != "ok":
                stratified = False
                print(NO_STRATIFIED + ": variant (d) skipped", flush=True)
                continue
            log(
                f"  {v.name:<18} final val loss {doc['curve'][-1]['val_loss']:.4f}, {doc['wall_s']:.1f} s, "
                f"peak {doc['peak_anon_mb']:.0f} MB, {doc['shards_per_batch']:.1f} shards/batch"
            )
    shutil.rmtree(root)  # remade in seconds by the next run
    summary = summarise(runs, seeds)
    png = out / "learning.png"
    picture(png, runs, summary, sc, seeds)
    doc = {
        "benchmark": "learning",
        "scale": scale,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python", "tools/bench_learning.py", *(argv if argv is not None else sys.argv[1:])]),
        "seconds": time.perf_counter() - t0,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "scale_params": asdict(sc),
        "convert_s": convert_s,
        "data": {
            "generations": GENERATIONS,
            "families": FAMILIES,
            "strength": STRENGTH,
            "draw_logit": DRAW_LOGIT,
            "family_bias": FAMILY_BIAS,
            "shard_drift": SHARD_DRIFT,
            "result_drift": RESULT_DRIFT,
            "drift_correlation": DRIFT_CORRELATION,
        },
        "data_seed": DATA_SEED,
        "seeds": seeds,
        **{k: v for k, v in summary.items() if k != "rows"},
        "rows": [flat(r) for r in summary["rows"]],
        "variants": summary["rows"],
        "runs": runs,
    }
    (out / "learning.json").write_text(json.dumps(doc, indent=1))
    print(table(summary, sc, seeds))
    print(f"(c), (d) and (f) read the data converted once by `mmpool convert` ({convert_s:.1f} s, not in their wall s)")
    for c in summary["comparisons"]:
        print(f"- {c['verdict']} (per seed: {', '.join(f'{d:+.4f}' for d in c['diffs'])})")
    log(f"wrote {out / 'learning.json'} and {png}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
