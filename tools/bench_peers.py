"""Peers benchmark: mmpool side by side with the loaders it replaces or is compared to, on the same data, in one run.

    python tools/bench_peers.py [--scale small|large] [--out bench_out] [--data DIR] [--only NAME ...]
                                [--skip NAME ...] [--timeout SECONDS] [--fresh]

Data: synthetic legacy shards (``make_synthetic``, ``.npz``) in 2 directories mixed 3:1 (30 and 10 shards of
equal size); every peer's own format is made from those same shards. Peers:

- ``mmpool``: ``convert`` once, then ``StreamingMixedShardDataset`` (pool of indices, batches of 1024).
- ``mmpool-stratified``: the same with ``mix="stratified"`` (every batch holds the 3:1 shares exactly).
- ``global-shuffle``: the ideal mix and the floor of the share error: every record in RAM, a uniform permutation
  of all of them each epoch, batches by fancy indexing.
- ``python-list``: the old approach; reads the ``.npz`` shards one after another, directories interleaved shard by
  shard round-robin, one dict per position appended to a Python list; over ``pool`` it pops random entries
  (swap with last) down to 3/4 of ``pool``, then reads the next shard. A torch DataLoader batches the dicts,
  ``np.array`` per field (torch's ``default_collate`` is 3-4x slower here and would dominate).
- ``webdataset``: one tar per shard (each sample one pickled dict, ``.pyd``); per directory
  ``WebDataset(...).shuffle(pool * share, initial=pool * share)``, mixed by ``RandomMix`` with the probabilities.
- ``hf-datasets``: one parquet per shard (fixed-size nested lists); streaming ``load_dataset("parquet")`` per
  directory, ``interleave_datasets`` with the probabilities, ``shuffle(buffer_size=pool)``, a torch DataLoader
  batching like ``python-list`` (the fastest of the batching paths tried, see ``load_hf_datasets``).
- ``mosaic-streaming``: ``MDSWriter`` per directory (shard size ~ one source shard), then
  ``StreamingDataset(streams=[Stream(local, proportion)], shuffle=True, shuffle_block_size=pool)``, local only,
  batched by a torch DataLoader (default collate).
- ``litdata``: ``optimize`` per directory (a chunk per source shard), ``StreamingDataset(shuffle=True)`` each,
  ``CombinedStreamingDataset`` with the weights, ``StreamingDataLoader``.

Measured per peer, each in its own subprocess (prep in one, the run in a fresh one, so prep memory never counts),
one process, no workers, batches of 1024: samples/s after a warm-up of a few batches (the time to the first batch,
which includes filling a pool or buffer, is in the note), over a time budget; a loader whose epoch ends first is
iterated again, paying its next epoch's start-up like a training loop would (the time spent computing the mix
statistics below is excluded). Peak anonymous memory
(psutil ``rss - shared``, process and children, sampled every 20 ms by a thread) and peak RSS over the whole run,
including the interpreter and torch (``base_anon_mb`` in the JSON is that floor, taken before the loader is built);
mean distinct shards per batch (a shard is ``id >> 20``: directory and shard number); the worst per-directory share
error, ``max |share - target|`` over consecutive windows of 10,000 examples (the first 400 windows: a maximum
over more windows is larger by chance alone). ``prep_s`` is the one-time conversion
into the peer's format (cached under ``--data``; ``--fresh`` redoes it). A peer that is not installed, crashes or
times out gets a row saying so.

Time on the project's 2-core machine: ``--scale small`` ~5 min; ``--scale large --skip webdataset`` ~20 min
(mosaic-streaming and litdata each spend ~5 min writing their formats, HF ~4 min filling its buffer). webdataset
at large was not run: its prep writes ~2.4 KB of tar per position (~10 GB) at ~2.5k positions/s, and its buffers
then fill at ~2k/s, so it alone would take the better part of an hour.

Writes ``OUT/peers.json`` (a list of rows) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import importlib.abc
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

TOOLS = Path(__file__).resolve().parent

BATCH = 1024
SEED = 0
WINDOW = 10_000
# Share windows counted: the first 4M examples. A maximum over more windows is larger by chance alone, so peers
# that stream faster would otherwise look worse.
MAX_WINDOWS = 400
WEIGHTS = (0.75, 0.25)  # 30 and 10 shards of equal size: the 3:1 mix by records
SCALES = {
    # shards per directory, rows per shard, pool entries, warm-up batches, measuring budget (s), timeout per step (s)
    "small": {"shards": (30, 10), "rows": 5_000, "pool": 100_000, "warmup": 10, "budget": 15.0, "timeout": 900},
    # HF's shuffle buffer holds each example as Python objects (~6.5 KB here): 2M would take ~13 GB of 24.
    "large": {
        "shards": (30, 10),
        "rows": 100_000,
        "pool": 2_000_000,
        "warmup": 10,
        "budget": 40.0,
        "timeout": 3600,
        "caps": {"hf-datasets": 500_000},
    },
}
COLUMNS = (
    "name",
    "samples_per_s",
    "peak_anon_mb",
    "peak_rss_mb",
    "shards_per_batch",
    "worst_share_error",
    "prep_s",
    "note",
)
MB = 1 << 20


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


def source_dirs(data: Path, scale: dict) -> list[Path]:
    """The legacy ``.npz`` shard directories every peer starts from (built once, cached)."""
    import benchdata

    return benchdata.legacy_dataset(data, scale["shards"], scale["rows"], fmt="npz", seed=SEED)


def shard_files(src: Path) -> list[Path]:
    return sorted(src.glob("shard_*.npz"))


def pool_of(peer: str, scale: dict) -> int:
    """The pool (or shuffle buffer) a peer gets: the scale's, unless capped for that peer (see SCALES)."""
    return min(scale["pool"], scale.get("caps", {}).get(peer, scale["pool"]))


def peer_dir(data: Path, srcs: list[Path], peer: Peer) -> Path:
    """Where a peer's converted copy of the sources lives: named after the source set, so scales never mix."""
    return data / f"peers-{srcs[0].parent.name}" / peer.name


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def rows_of(arrays: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """One dict per position, of numpy rows (views into the shard's arrays)."""
    names = list(arrays)
    for i in range(len(arrays["id"])):
        yield {k: arrays[k][i] for k in names}


# --------------------------------------------------------------------------- peers: prep and loader
# A loader returns (iterable of batches, batch -> int64 ids as numpy, callable giving a note after the run).


def prep_mmpool(srcs: list[Path], out: Path, scale: dict) -> None:
    from mmpool.convert.converter import convert

    for src in srcs:
        convert(src, out / src.name, fmt="npy", progress=False)


def load_mmpool(srcs: list[Path], out: Path, scale: dict, mix: str = "pool"):
    from mmpool.stream.dataset import StreamingMixedShardDataset

    ds = StreamingMixedShardDataset(
        [out / s.name for s in srcs],
        pool_size=pool_of("mmpool", scale),
        max_memory_gb=16.0,
        enable_augmentation=False,
        random_seed=SEED,
        batch_size=BATCH,
        num_epochs=1,
        mix=mix,
    )
    return ds, lambda b: b["id"].numpy(), lambda: ""


def load_arrays(dirs: list[Path], rows: int) -> dict[str, np.ndarray]:
    """Every shard (of ``rows`` rows) of the directories, one after another in RAM, copied shard by shard into
    arrays allocated once (so the peak is the data, not the data twice)."""
    files = [f for d in dirs for f in shard_files(d)]
    out: dict[str, np.ndarray] = {}
    for i, f in enumerate(files):
        part = read_npz(f)
        for k, a in part.items():
            if k not in out:
                out[k] = np.empty((rows * len(files), *a.shape[1:]), dtype=a.dtype)
            out[k][i * rows : (i + 1) * rows] = a
    return out


def load_global_shuffle(srcs: list[Path], out: Path, scale: dict):
    """The ideal mix: every record of every shard in RAM, a new uniformly random order each epoch (no pool, no
    streaming)."""
    import torch

    data = load_arrays(srcs, scale["rows"])
    rng = np.random.default_rng(SEED)
    n = len(data["id"])

    def batches() -> Iterator[dict[str, Any]]:
        order = rng.permutation(n)  # a new order every epoch, as a shuffling loader gives
        for at in range(0, n, BATCH):
            rows = order[at : at + BATCH]
            yield {k: torch.from_numpy(v[rows]) for k, v in data.items()}

    class Epochs:
        def __iter__(self) -> Iterator[dict[str, Any]]:
            return batches()

    mb = sum(v.nbytes for v in data.values()) / MB
    return Epochs(), lambda b: b["id"].numpy(), lambda: f"all {n:,} records in RAM ({mb:,.0f} MB)"


class ListPool:
    """The old approach: a Python list of per-position dicts, refilled shard by shard (round-robin over dirs)."""

    def __init__(self, srcs: list[Path], pool: int, seed: int = SEED) -> None:
        per_dir = [shard_files(s) for s in srcs]
        self.order = [f for k in range(max(map(len, per_dir))) for files in per_dir for f in files[k : k + 1]]
        self.pool_size = pool
        self.threshold = pool * 3 // 4
        self.peak = 0
        self.seed = seed

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rng = random.Random(self.seed)
        pool: list[dict[str, Any]] = []

        def pop() -> dict[str, Any]:
            i = rng.randrange(len(pool))
            pool[i], pool[-1] = pool[-1], pool[i]
            return pool.pop()

        for path in self.order:
            pool.extend(rows_of(read_npz(path)))
            self.peak = max(self.peak, len(pool))
            if len(pool) > self.pool_size:
                while len(pool) > self.threshold:
                    yield pop()
        while pool:
            yield pop()


def collate_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One array per field, ``np.array`` over the rows (3-4x faster here than torch's ``default_collate``)."""
    import torch

    return {k: torch.from_numpy(np.array([r[k] for r in rows])) for k in rows[0]}


def load_python_list(srcs: list[Path], out: Path, scale: dict):
    import torch
    from torch.utils.data import IterableDataset

    pool = ListPool(srcs, pool_of("python-list", scale))

    class Dataset(IterableDataset):
        def __iter__(self):
            return iter(pool)

    loader = torch.utils.data.DataLoader(Dataset(), batch_size=BATCH, num_workers=0, collate_fn=collate_rows)
    return loader, lambda b: b["id"].numpy(), lambda: f"pool peaked at {pool.peak:,} dicts"


def prep_webdataset(srcs: list[Path], out: Path, scale: dict) -> None:
    import webdataset as wds

    for src in srcs:
        (out / src.name).mkdir()
        for path in shard_files(src):
            with wds.TarWriter(str(out / src.name / f"{path.stem}.tar")) as sink:
                for i, row in enumerate(rows_of(read_npz(path))):
                    sink.write({"__key__": f"{i:07d}", "pyd": row})


def load_webdataset(srcs: list[Path], out: Path, scale: dict):
    import webdataset as wds

    random.seed(SEED)  # RandomMix draws from the global generator
    reads = [0]

    def count(sample):
        reads[0] += 1
        return sample

    parts = []
    for src, share in zip(srcs, WEIGHTS):
        urls = [str(p) for p in sorted((out / src.name).glob("*.tar"))]
        size = int(pool_of("webdataset", scale) * share)
        parts.append(
            wds.WebDataset(urls, shardshuffle=len(urls), seed=SEED, empty_check=False)
            .map(count)
            .shuffle(size, initial=size, seed=SEED)
            .decode()
            .map(lambda s: s["pyd"])
        )
    mix = wds.RandomMix(parts, probs=list(WEIGHTS))
    loader = wds.WebLoader(mix, batch_size=None, num_workers=0).batched(BATCH)
    return loader, lambda b: np.asarray(b["id"]), lambda: f"{reads[0]:,} samples read"


def prep_hf_datasets(srcs: list[Path], out: Path, scale: dict) -> None:
    import datasets
    import pyarrow as pa

    datasets.disable_progress_bars()
    for src in srcs:
        (out / src.name).mkdir()
        for path in shard_files(src):
            a = read_npz(path)
            # Fixed-size nested lists, not Array3D: Array3D rebuilds its extension type per example (~1k examples/s).
            planes_type = datasets.Value("uint8")
            for size in reversed(a["planes"].shape[1:]):
                planes_type = datasets.List(planes_type, length=size)
            features = datasets.Features(
                {
                    "planes": planes_type,
                    "move": datasets.Value("int16"),
                    "wdl": datasets.List(datasets.Value("float32"), length=3),
                    "id": datasets.Value("int64"),
                }
            )
            # Arrow columns straight from the arrays (Dataset.from_dict goes through Python lists: 20x slower).
            planes = pa.array(a["planes"].reshape(-1))
            for size in reversed(a["planes"].shape[1:]):
                planes = pa.FixedSizeListArray.from_arrays(planes, size)
            wdl = pa.FixedSizeListArray.from_arrays(pa.array(a["wdl"].reshape(-1)), a["wdl"].shape[1])
            table = pa.table({"planes": planes, "move": a["move"], "wdl": wdl, "id": a["id"]})
            datasets.Dataset(table.cast(features.arrow_schema)).to_parquet(str(out / src.name / f"{path.stem}.parquet"))


def load_hf_datasets(srcs: list[Path], out: Path, scale: dict):
    import datasets
    import torch

    datasets.disable_progress_bars()
    parts = [
        datasets.load_dataset(
            "parquet",
            data_files=sorted(str(p) for p in (out / s.name).glob("*.parquet")),
            split="train",
            streaming=True,
        )
        for s in srcs
    ]
    mix = datasets.interleave_datasets(
        parts, probabilities=list(WEIGHTS), seed=SEED, stopping_strategy="first_exhausted"
    )
    mix = mix.shuffle(seed=SEED, buffer_size=pool_of("hf-datasets", scale))
    # Batched by a DataLoader with np.array per field: ~6k examples/s here, against ~3k/s for
    # .with_format("numpy").iter(batch_size) and under 1k/s for .with_format("torch") with default_collate.
    loader = torch.utils.data.DataLoader(mix, batch_size=BATCH, num_workers=0, collate_fn=collate_rows)
    return loader, lambda b: b["id"].numpy(), lambda: ""


class _StubModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Empty stand-ins for packages mosaicml-streaming imports at ``import streaming`` but this benchmark never
    uses: ``transformers`` (its text datasets and its own DataLoader's type checks) and ``torchvision`` (its
    vision datasets). Used only when the real one cannot be imported."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = _stub_class
        return module

    def exec_module(self, module) -> None:
        pass


def _stub_class(attr: str) -> type:
    """Any class imported from a stubbed module; dunder look-ups (``__file__``, ...) stay missing."""
    if attr.startswith("__"):
        raise AttributeError(attr)
    return type(attr, (dict,), {})


def import_streaming() -> str:
    """Import mosaicml-streaming; returns a note naming the packages that had to be stubbed, and why."""
    broken = []
    for name in ("transformers", "torchvision"):
        try:
            importlib.import_module(name)
        except Exception as exc:  # missing, or installed but unusable (a torchvision built for another torch)
            log(f"  {name} cannot be imported ({type(exc).__name__}: {exc}); stubbed")
            broken.append(name)
            for key in [k for k in sys.modules if k.split(".")[0] == name]:
                del sys.modules[key]
    if broken:
        sys.meta_path.insert(0, _StubModules(broken))
    import streaming  # noqa: F401

    return f"{' and '.join(broken)} not importable here, stubbed (unused by this benchmark)" if broken else ""


def prep_mosaic_streaming(srcs: list[Path], out: Path, scale: dict) -> None:
    import_streaming()
    from streaming import MDSWriter

    columns = {"planes": "ndarray:uint8:4,8,8", "move": "int16", "wdl": "ndarray:float32:3", "id": "int64"}
    for src in srcs:
        # ~ one source shard per MDS shard: 278 record bytes plus MDS's per-sample offsets.
        with MDSWriter(
            out=str(out / src.name),
            columns=columns,
            size_limit=scale["rows"] * 290,
            compression=None,
            progress_bar=False,
        ) as writer:
            for path in shard_files(src):
                for row in rows_of(read_npz(path)):
                    writer.write(row)


def load_mosaic_streaming(srcs: list[Path], out: Path, scale: dict):
    note = import_streaming()
    import torch
    from streaming import Stream, StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    streams = [Stream(local=str(out / s.name), proportion=w) for s, w in zip(srcs, WEIGHTS)]
    ds = StreamingDataset(
        streams=streams,
        shuffle=True,
        shuffle_seed=SEED,
        shuffle_block_size=pool_of("mosaic-streaming", scale),
        batch_size=BATCH,
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, num_workers=0)
    return loader, lambda b: b["id"].numpy(), lambda: note


def litdata_rows(path: str) -> Iterator[dict[str, Any]]:
    """litdata ``optimize`` fn: the positions of one source shard (module level, so workers can import it)."""
    for row in rows_of(read_npz(Path(path))):
        yield {"planes": row["planes"], "move": int(row["move"]), "wdl": row["wdl"], "id": int(row["id"])}


def prep_litdata(srcs: list[Path], out: Path, scale: dict) -> None:
    import litdata

    for src in srcs:
        litdata.optimize(
            fn=litdata_rows,
            inputs=[str(p) for p in shard_files(src)],
            output_dir=str(out / src.name),
            chunk_size=scale["rows"],
            num_workers=2,
            reorder_files=False,
            mode="overwrite",
            verbose=False,
        )


def load_litdata(srcs: list[Path], out: Path, scale: dict):
    import litdata

    parts = [litdata.StreamingDataset(str(out / s.name), shuffle=True, seed=SEED) for s in srcs]
    mix = litdata.CombinedStreamingDataset(parts, seed=SEED, weights=list(WEIGHTS), iterate_over_all=False)
    loader = litdata.StreamingDataLoader(mix, batch_size=BATCH, num_workers=0)
    return loader, lambda b: b["id"].numpy(), lambda: ""


@dataclass(frozen=True)
class Peer:
    name: str
    module: str  # import name, to tell "not installed" apart from a failure
    package: str  # PyPI name
    prep: Callable[[list[Path], Path, dict], None] | None
    load: Callable[[list[Path], Path, dict], tuple[Iterable, Callable[[Any], np.ndarray], Callable[[], str]]]


PEERS = [
    Peer("mmpool", "mmpool", "mmpool", prep_mmpool, load_mmpool),
    Peer("mmpool-stratified", "mmpool", "mmpool", prep_mmpool, partial(load_mmpool, mix="stratified")),
    Peer("global-shuffle", "numpy", "numpy", None, load_global_shuffle),
    Peer("python-list", "torch", "torch", None, load_python_list),
    Peer("webdataset", "webdataset", "webdataset", prep_webdataset, load_webdataset),
    Peer("hf-datasets", "datasets", "datasets", prep_hf_datasets, load_hf_datasets),
    Peer("mosaic-streaming", "streaming", "mosaicml-streaming", prep_mosaic_streaming, load_mosaic_streaming),
    Peer("litdata", "litdata", "litdata", prep_litdata, load_litdata),
]
BY_NAME = {p.name: p for p in PEERS}


# --------------------------------------------------------------------------- measuring (in the child process)


class PeakMemory(threading.Thread):
    """Samples anonymous memory (``rss - shared``) and RSS of this process and its children."""

    def __init__(self, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak_anon = self.peak_rss = 0
        self.halt = threading.Event()

    def sample(self) -> tuple[int, int]:
        anon = rss = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                info = p.memory_info()
            except Exception:  # a child that just exited
                continue
            anon += info.rss - info.shared
            rss += info.rss
        self.peak_anon, self.peak_rss = max(self.peak_anon, anon), max(self.peak_rss, rss)
        return anon, rss

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join()
        self.sample()


class MixStats:
    """Distinct shards per batch and per-directory shares over consecutive windows, kept as running aggregates."""

    def __init__(self, targets: tuple[float, ...]) -> None:
        self.targets = np.asarray(targets)
        self.batches = self.shards = self.samples = 0
        self.per_dir = np.zeros(len(targets), dtype=np.int64)
        self.pending = np.empty(0, dtype=np.int64)
        self.windows = 0
        self.worst = 0.0

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64).ravel()
        self.batches += 1
        self.samples += len(ids)
        self.shards += len(np.unique(ids >> 20))
        dirs = ids >> 40
        self.per_dir += np.bincount(dirs, minlength=len(self.targets))[: len(self.targets)]
        if self.windows < MAX_WINDOWS:
            self.pending = np.concatenate([self.pending, dirs])
        while len(self.pending) >= WINDOW and self.windows < MAX_WINDOWS:
            window, self.pending = self.pending[:WINDOW], self.pending[WINDOW:]
            share = np.bincount(window, minlength=len(self.targets))[: len(self.targets)] / WINDOW
            self.worst = max(self.worst, float(np.abs(share - self.targets).max()))
            self.windows += 1


def epochs(loader: Iterable, counter: list[int]) -> Iterator:
    """The loader's batches, epoch after epoch (a new ``iter()`` each); ``counter[0]`` counts epochs started."""
    while True:
        counter[0] += 1
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


def measure(loader: Iterable, ids_of: Callable[[Any], np.ndarray], warmup: int, budget: float) -> dict:
    """Batches per second after ``warmup`` batches, over ``budget`` seconds (epochs restart as needed)."""
    t_start = time.perf_counter()
    started = [0]
    it = epochs(loader, started)
    first_batch_s = None
    for k in range(warmup):
        if next(it, None) is None:
            raise RuntimeError(f"the loader yielded nothing after {k} batches")
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - t_start
    warmup_s = time.perf_counter() - t_start
    stats = MixStats(WEIGHTS)
    stats_s = 0.0
    t0 = time.perf_counter()
    for batch in it:
        s = time.perf_counter()
        stats.add(ids_of(batch))
        stats_s += time.perf_counter() - s
        if s - t0 >= budget:
            break
    elapsed = time.perf_counter() - t0 - stats_s
    return {
        "samples": stats.samples,
        "measured_s": elapsed,
        "samples_per_s": stats.samples / elapsed if elapsed else None,
        "shards_per_batch": stats.shards / stats.batches if stats.batches else None,
        "worst_share_error": stats.worst if stats.windows else None,
        "windows": stats.windows,
        "share": (stats.per_dir / max(1, stats.samples)).round(4).tolist(),
        "first_batch_s": first_batch_s,
        "warmup_s": warmup_s,
        "epochs": started[0],
    }


def prepare(peer: Peer, srcs: list[Path], out: Path, scale: dict) -> dict:
    """Convert the sources into the peer's format once; later runs reuse it (and report the time it took)."""
    if peer.prep is None:
        return {"prep_s": 0.0, "cached": False}
    marker = out / ".prepared.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{peer.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run preparing the same data waits, then reuses it
        if marker.is_file():
            return {**json.loads(marker.read_text()), "cached": True}
        if out.exists():
            shutil.rmtree(out)  # left by a killed prep; only ever this peer's own directory
        out.mkdir()
        t0 = time.perf_counter()
        peer.prep(srcs, out, scale)
        prep_s = time.perf_counter() - t0
        marker.write_text(json.dumps({"prep_s": prep_s}))
    return {"prep_s": prep_s, "cached": False}


def child(step: str, peer: Peer, scale_name: str, data: Path, result: Path) -> None:
    """One step of one peer, in its own process: ``prep`` (timed, cached) or ``run`` (measured)."""
    scale = SCALES[scale_name]
    srcs = source_dirs(data, scale)
    out = peer_dir(data, srcs, peer)
    if step == "prep":
        result.write_text(json.dumps(prepare(peer, srcs, out, scale)))
        return
    import torch  # noqa: F401  (every peer loads it; the floor below then includes it for all)

    memory = PeakMemory()
    base_anon = memory.sample()[0]
    memory.start()
    batches, ids_of, note_after = peer.load(srcs, out, scale)
    try:
        doc = measure(batches, ids_of, scale["warmup"], scale["budget"])
    finally:
        memory.stop()
    doc.update(
        base_anon_mb=base_anon / MB,
        peak_anon_mb=memory.peak_anon / MB,
        peak_rss_mb=memory.peak_rss / MB,
        note_after=note_after(),
    )
    result.write_text(json.dumps(doc))


# --------------------------------------------------------------------------- orchestration (parent)


def run_step(step: str, peer: Peer, args: argparse.Namespace, timeout: float) -> tuple[dict | None, str]:
    """Run one child step; returns (its result, '') or (None, why it failed)."""
    result = Path(args.out) / f".peers-{peer.name}-{step}-{os.getpid()}.json"  # hidden: not a result file
    result.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        step,
        "--peer",
        peer.name,
        "--scale",
        args.scale,
        "--data",
        str(args.data),
        "--result",
        str(result),
    ]
    env = {
        **os.environ,
        "LITDATA_DISABLE_VERSION_CHECK": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"{step} timed out after {timeout:.0f} s"
    if proc.returncode != 0 or not result.is_file():
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return None, f"{step} failed (exit {proc.returncode}): {lines[-1].strip() if lines else 'no output'}"[:400]
    doc = json.loads(result.read_text())
    result.unlink()
    log(f"  {peer.name} {step}: {time.perf_counter() - t0:.1f} s")
    return doc, ""


def bench_peer(peer: Peer, args: argparse.Namespace) -> dict:
    row = {k: None for k in COLUMNS}
    row.update(name=peer.name, status="ok", scale=args.scale, pool=pool_of(peer.name, SCALES[args.scale]))
    if importlib.util.find_spec(peer.module) is None:
        row.update(status="not installed", note=f"not installed: pip install {peer.package}")
        return row
    try:
        from importlib.metadata import version

        row["version"] = version(peer.package)
    except Exception:
        row["version"] = None
    prep, why = run_step("prep", peer, args, args.timeout)
    if prep is None:
        row.update(status="failed", note=why)
        return row
    row["prep_s"] = prep["prep_s"]
    run, why = run_step("run", peer, args, args.timeout)
    if run is None:
        row.update(status="failed", note=why)
        return row
    notes = []
    if row["pool"] < SCALES[args.scale]["pool"]:
        notes.append(f"pool/buffer capped at {row['pool']:,} (see SCALES)")
    if prep["cached"]:
        notes.append("prep reused from an earlier run")
    if peer.prep is None:
        notes.append("reads the .npz shards directly")
    if run["note_after"]:
        notes.append(run["note_after"])
    notes.append(
        f"{run['samples']:,} samples in {run['measured_s']:.1f} s"
        + (f", {run['epochs']} epochs started" if run["epochs"] > 1 else "")
    )
    notes.append(f"first batch after {run['first_batch_s']:.1f} s")
    if not run["windows"]:
        notes.append("fewer than 10k samples: no share window")
    for k in ("samples_per_s", "peak_anon_mb", "peak_rss_mb", "shards_per_batch", "worst_share_error"):
        row[k] = run[k]
    row["note"] = "; ".join(notes)
    row.update({k: run[k] for k in ("samples", "measured_s", "first_batch_s", "base_anon_mb", "share", "windows")})
    return row


def fmt(x: Any, digits: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return str(x)


def table(rows: list[dict], scale: str) -> str:
    s = SCALES[scale]
    records = sum(s["shards"]) * s["rows"]
    head = (
        f"Peers, --scale {scale}: {records:,} records in {s['shards'][0]}+{s['shards'][1]} shards of "
        f"{s['rows']:,}, mixed 3:1; pool/buffer {s['pool']:,}; batches of {BATCH}; one process, no workers.\n\n"
        "| peer | samples/s | peak anon MB | peak RSS MB | shards/batch | worst share err (10k) | prep s | note |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|\n"
    )
    body = "".join(
        f"| {r['name']} | {fmt(r['samples_per_s'])} | {fmt(r['peak_anon_mb'])} | {fmt(r['peak_rss_mb'])} | "
        f"{fmt(r['shards_per_batch'], 1)} | {fmt(r['worst_share_error'], 3)} | {fmt(r['prep_s'], 1)} | "
        f"{r['note'] or ''} |\n"
        for r in rows
    )
    return head + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    import benchdata

    benchdata.add_common_args(p, SCALES)
    p.add_argument("--only", nargs="+", choices=[p.name for p in PEERS], help="run only these peers")
    p.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=[p.name for p in PEERS],
        help="peers not to run (each still gets a row saying so)",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds per prep and per run of each peer")
    p.add_argument("--fresh", action="store_true", help="redo every peer's prep (conversion) instead of reusing it")
    p.add_argument("--child", choices=["prep", "run"], help=argparse.SUPPRESS)
    p.add_argument("--peer", choices=sorted(BY_NAME), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.data = benchdata.data_root(args)
    if args.child:
        child(args.child, BY_NAME[args.peer], args.scale, args.data, Path(args.result))
        return 0

    scale = SCALES[args.scale]
    args.timeout = args.timeout or scale["timeout"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    srcs = source_dirs(args.data, scale)
    log(f"source shards ready in {time.perf_counter() - t0:.1f} s")
    peers = [BY_NAME[n] for n in args.only] if args.only else PEERS
    if args.fresh:
        for peer in peers:
            shutil.rmtree(peer_dir(args.data, srcs, peer), ignore_errors=True)
    rows = []
    for peer in peers:
        if peer.name in args.skip:
            rows.append(
                {
                    **{k: None for k in COLUMNS},
                    "name": peer.name,
                    "status": "skipped",
                    "scale": args.scale,
                    "note": "not run: skipped on the command line (--skip)",
                }
            )
            continue
        log(f"{peer.name} ...")
        rows.append(bench_peer(peer, args))
        if rows[-1]["status"] != "ok":
            log(f"  {peer.name}: {rows[-1]['note']}")
    path = Path(args.out) / "peers.json"
    path.write_text(json.dumps(rows, indent=1))
    print(table(rows, args.scale))
    log(f"wrote {path}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
