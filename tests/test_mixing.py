"""How well the stream mixes directories: the default mix against a global shuffle of the same records, the exact
per-batch mix (``mix="stratified"``), the mixing statistics and the game key.

Index-level tests replay the pools the dataset builds (``RunSpec.pool``) on catalogs of plain arrays, at the sizes
of the mixing issue (2 directories of 24 and 8 shards of 50k rows, weights 3:1, pool 500k, batches of 1024);
dataset-level tests stream real converted packs, with DataLoader workers, and compare with the source records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Data, build, id_dir
from torch.utils.data import DataLoader

from mmpool.convert.converter import convert
from mmpool.errors import ConfigError
from mmpool.sampling.entries import shard_of
from mmpool.sampling.plan import RunSpec, epoch_plan
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.stream.stats import WINDOW
from mmpool.testing.synthetic import katago_rows


def index_stream(
    shards: tuple[int, ...], rows: int, weights: tuple[float, ...], pool: int, batch: int, mix: str, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """Every batch of one participant's epoch, as packed entries, and the directory of every shard."""
    shard_dir = np.repeat(np.arange(len(shards)), shards)
    shard_rows = np.full(len(shard_dir), rows, dtype=np.int64)
    config = {
        "weights": list(weights),
        "data_dirs": [str(d) for d in range(len(shards))],
        "random_seed": seed,
        "world_size": 1,
        "pool_size": pool,
        "refill_threshold": pool * 3 // 4,
        "factor": 1,
        "batch_size": batch,
        "chunk_size": batch,
        "drop_last": False,
        "max_examples_unaugmented": None,
        "mix": mix,
    }
    run = RunSpec.from_config(config, 0, shard_dir, shard_rows)
    p = run.pool(epoch_plan(shard_dir, shard_rows, run), 0, 0, len(shard_dir))
    p.fill()
    out = []
    while len(b := p.take(batch, p.fill)):
        out.append(b)
    return out, shard_dir


def worst_window_error(dirs: np.ndarray, weights: np.ndarray) -> float:
    """max over consecutive windows of WINDOW examples and over directories of |share - weight|."""
    n = len(dirs) // WINDOW
    counts = np.stack([np.bincount(w, minlength=len(weights)) for w in dirs[: n * WINDOW].reshape(n, WINDOW)])
    return float(np.abs(counts / WINDOW - weights).max())


def shards_per_batch(shards: np.ndarray, batch: int) -> float:
    n = len(shards) // batch
    return float(np.mean([len(np.unique(b)) for b in shards[: n * batch].reshape(n, batch)]))


ISSUE = dict(shards=(24, 8), rows=50_000, weights=(3.0, 1.0), batch=1024)


@pytest.mark.parametrize("pool", [500_000, 1_000_000])
def test_the_default_mix_is_within_1_5x_of_a_global_shuffle(pool: int) -> None:
    batches, shard_dir = index_stream(**ISSUE, pool=pool, mix="pool")
    shards = shard_of(np.concatenate(batches)).astype(np.int64)
    assert len(np.unique(np.concatenate(batches))) == 32 * 50_000  # every record once
    weights = np.array([0.75, 0.25])
    mixed = worst_window_error(shard_dir[shards], weights)
    # The same records in a uniformly random order, three times: the statistical floor of this window.
    floor = np.mean(
        [worst_window_error(shard_dir[np.random.default_rng(k).permutation(shards)], weights) for k in range(3)]
    )
    assert mixed <= 1.5 * floor, (mixed, floor)
    # Before shards entered the pool in slices, whole shards swung the mix: 0.054 at pool 500k.
    assert mixed < 0.025
    assert shards_per_batch(shards, 1024) > 0.7 * 32


def test_stratified_batches_hold_every_directory_exactly_at_its_weight() -> None:
    """Weights that differ from the shard counts (0.5/0.3/0.2 over 6/3/3 shards of unequal sizes): while every
    directory has rows, the counts over any run of batches are within one entry of the weights' share, and
    the worst 10k-window error is below 0.002. Every record comes once; rows of a shard enter in order."""
    shard_dir = np.repeat(np.arange(3), [6, 3, 3])
    rows = np.array([3000, 2000, 4000, 1000, 2500, 3500, 5000, 4000, 6000, 3000, 3000, 4000], dtype=np.int64)
    weights = np.array([0.5, 0.3, 0.2])
    config = dict(
        weights=weights.tolist(), data_dirs=["a", "b", "c"], random_seed=5, world_size=1, pool_size=8000,
        refill_threshold=6000, factor=1, batch_size=100, chunk_size=100, drop_last=False,
        max_examples_unaugmented=None, mix="stratified",
    )  # fmt: skip
    run = RunSpec.from_config(config, 0, shard_dir, rows)
    pool = run.pool(epoch_plan(shard_dir, rows, run), 0, 0, len(rows))
    pool.fill()
    batches = []
    while len(b := pool.take(100, pool.fill)):
        batches.append(b)
    everything = np.concatenate(batches)
    assert len(everything) == rows.sum() and len(np.unique(everything)) == rows.sum()
    per_batch = np.stack([np.bincount(shard_dir[shard_of(b)], minlength=3) for b in batches])
    # The directory with the fewest rows for its weight runs out first; until then the shares are exact.
    live = per_batch.min(axis=1) > 0
    first_gap = int(np.argmin(live)) if not live.all() else len(live)
    assert first_gap > len(batches) // 2
    cum = np.cumsum(per_batch[:first_gap], axis=0)
    target = np.cumsum(per_batch[:first_gap].sum(axis=1))[:, None] * weights
    assert np.abs(cum - target).max() < 1.0
    assert (np.abs(per_batch[:first_gap] - 100 * weights) < 1.0).all()  # 50/30/20 in every batch
    dirs = shard_dir[shard_of(everything[: first_gap * 100])]
    assert worst_window_error(dirs, weights) < 0.002
    # Sequential inside each directory: each sub-pool activates its directory's shards in ascending order, and
    # each shard's rows in order, in one run.
    for d, sub in enumerate(pool.subs):
        segs = sub.segments
        assert (shard_dir[segs.shard] == d).all() and (np.diff(segs.shard) > 0).all()
        assert (segs.lo == 0).all() and (segs.hi == rows[segs.shard]).all()


def test_stratified_at_the_issue_scale_is_below_0_002() -> None:
    batches, shard_dir = index_stream(**ISSUE, pool=500_000, mix="stratified")
    shards = shard_of(np.concatenate(batches)).astype(np.int64)
    assert len(np.unique(np.concatenate(batches))) == 32 * 50_000
    assert worst_window_error(shard_dir[shards], np.array([0.75, 0.25])) < 0.002
    assert shards_per_batch(shards, 1024) > 0.7 * 32


# ----- through the dataset: real packs, workers, resume, statistics -----


def make(data: Data, **kw: Any) -> StreamingMixedShardDataset:
    base: dict[str, Any] = dict(pool_size=1200, batch_size=40, random_seed=4, mix="stratified")
    return StreamingMixedShardDataset(data.dirs, **{**base, **kw})


@pytest.fixture(scope="module")
def three_dirs(tmp_path_factory: pytest.TempPathFactory) -> Data:
    return build(tmp_path_factory.mktemp("mix3"), [6, 3, 2], [300, 300, 300])


@pytest.mark.parametrize("workers", [0, 2])
def test_stratified_streams_every_record_once_with_exact_batches(three_dirs: Data, workers: int) -> None:
    ds = make(three_dirs, weights=[6, 3, 2])
    loader = ds if workers == 0 else DataLoader(ds, batch_size=None, num_workers=workers)
    batches = [{k: v.numpy() for k, v in b.items()} for b in loader]
    ids = np.concatenate([b["id"] for b in batches])
    assert np.array_equal(np.sort(ids), three_dirs.source.ids)
    for b in batches:
        three_dirs.source.assert_matches(b)
    full = [b for b in batches if len(b["id"]) == 40]
    counts = np.stack([np.bincount(id_dir(b["id"]), minlength=3) for b in full])
    # 40 x (6/11, 3/11, 2/11) = 21.8, 10.9, 7.3: every full batch holds 21-22, 10-11 and 7-8 of them.
    assert (np.abs(counts - 40 * np.array([6, 3, 2]) / 11) < 1).all()
    stats = ds.stats()
    assert stats.examples == len(ids) and stats.shards_per_batch > 1


def test_stratified_resumes_exactly(three_dirs: Data) -> None:
    ds = make(three_dirs)
    it = iter(ds)
    first = [next(it)["id"].numpy() for _ in range(7)]
    state = ds.state_dict()
    rest = np.concatenate([b["id"].numpy() for b in it])
    again = make(three_dirs)
    again.load_state_dict(state)
    resumed = np.concatenate([b["id"].numpy() for b in again])
    assert np.array_equal(resumed, rest)
    assert np.array_equal(np.sort(np.concatenate([*first, rest])), three_dirs.source.ids)


def test_stratified_elastic_resume_covers_the_epoch_once(three_dirs: Data) -> None:
    """Two ranks stop mid-epoch; one rank continues: every record once over both runs, none twice."""
    states, seen = [], []
    for rank in (0, 1):
        ds = make(three_dirs, rank=rank, world_size=2)
        it = iter(ds)
        seen += [next(it)["id"].numpy() for _ in range(5)]
        states.append(ds.state_dict())
        it.close()
    solo = make(three_dirs, rank=0, world_size=1)
    solo.load_state_dict(states)
    seen += [b["id"].numpy() for b in solo]
    ids = np.concatenate(seen)
    dropped = solo.stats().dropped
    assert len(np.unique(ids)) == len(ids) and np.isin(ids, three_dirs.source.ids).all()
    assert len(ids) + dropped == len(three_dirs.source)


def test_a_state_of_the_other_mix_is_refused(three_dirs: Data) -> None:
    ds = make(three_dirs)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    it.close()
    with pytest.raises(ConfigError, match="mix: saved 'stratified', now 'pool'"):
        make(three_dirs, mix="pool").load_state_dict(state)


def test_a_version_1_state_gets_a_clear_error(three_dirs: Data) -> None:
    state = make(three_dirs).state_dict()
    with pytest.raises(ConfigError, match=r"mmpool 0\.2 \(state version 1\)"):
        make(three_dirs).load_state_dict({**state, "version": 1})


def test_bad_mix_and_game_field_are_config_errors(three_dirs: Data) -> None:
    with pytest.raises(ConfigError, match="mix='blend': use one of 'pool', 'stratified'"):
        make(three_dirs, mix="blend")
    with pytest.raises(ConfigError, match="no field 'game'; the data has planes, move, wdl, id"):
        make(three_dirs, game_field="game")
    with pytest.raises(ConfigError, match=r"field 'wdl' has 3 values a row"):
        make(three_dirs, game_field="wdl[1:5]")


@pytest.fixture(scope="module")
def larger(tmp_path_factory: pytest.TempPathFactory) -> Data:
    return build(tmp_path_factory.mktemp("mix3l"), [6, 3, 2], [2000, 2000, 2000])


@pytest.mark.parametrize("mix", ["pool", "stratified"])
def test_stats_report_the_worst_window_and_shards_per_batch_as_measured_on_the_stream(larger: Data, mix: str) -> None:
    three_dirs = larger
    ds = make(three_dirs, mix=mix, batch_size=500, pool_size=3000)
    batches = [b["id"].numpy() for b in ds]
    stats = ds.stats()
    # Recompute both from what was yielded: windows close at the first whole batch reaching WINDOW examples.
    weights = three_dirs.records_per_dir / three_dirs.total
    worst, window, windows = 0.0, np.zeros(3), 0
    for b in batches:
        window += np.bincount(id_dir(b), minlength=3)
        if window.sum() >= WINDOW:
            worst, window, windows = max(worst, np.abs(window / window.sum() - weights).max()), np.zeros(3), windows + 1
    assert stats.windows == windows > 0
    assert stats.worst_window_error == pytest.approx(worst, abs=1e-6)
    distinct = np.mean([len(np.unique(b >> 20)) for b in batches])
    assert stats.shards_per_batch == pytest.approx(distinct)
    assert stats.games_per_batch is None and "shards per batch" in str(stats)


# ----- the game key -----


@pytest.fixture(scope="module")
def selfplay(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """KataGo-layout shards that hold whole games in order (games of 20-60 positions share a hash), with a row
    id in ``globalInputNC[:, 0]``."""
    root = tmp_path_factory.mktemp("selfplay")
    src = root / "raw"
    src.mkdir()
    parts = []
    for b in range(3):
        rows = katago_rows(400, seed=10 + b, game_length=40)
        rows["globalInputNC"][:, 0] = np.arange(b * 400, (b + 1) * 400)
        np.savez(src / f"data{b}_0.npz", **rows)
        parts.append(rows)
    convert(src, root / "conv", progress=False)
    return root / "conv", {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@pytest.mark.parametrize("mix", ["pool", "stratified"])
def test_games_per_batch_and_the_largest_game_in_a_batch(
    selfplay: tuple[Path, dict[str, np.ndarray]], mix: str
) -> None:
    conv, source = selfplay
    ds = StreamingMixedShardDataset(
        [conv], pool_size=600, batch_size=64, random_seed=2, mix=mix, game_field="globalTargetsNC[41:47]"
    )
    per_batch = []
    for b in ds:
        rows = b["globalInputNC"][:, 0].numpy().astype(np.int64)
        games = source["globalTargetsNC"][rows, 41:47]  # the source's hash of each yielded position
        _, counts = np.unique(games, axis=0, return_counts=True)
        per_batch.append((len(counts), counts.max()))
    stats = ds.stats()
    assert stats.games_per_batch == pytest.approx(np.mean([g for g, _ in per_batch]))
    assert stats.max_game_positions == max(m for _, m in per_batch)
    # A pool of 600 positions spans ~15 games: batches of 64 hold several positions of one game.
    assert 1 < stats.max_game_positions < 64 and stats.games_per_batch > 5
    assert "games per batch" in str(stats)


def test_an_unshuffled_stream_holds_few_games_a_batch(selfplay: tuple[Path, dict[str, np.ndarray]]) -> None:
    """The baseline the statistics exist for: read in order (a pool as small as a batch), a batch holds one to
    three games; through the pool, many."""
    conv, _ = selfplay
    ordered = StreamingMixedShardDataset(
        [conv], pool_size=64, refill_threshold=1, batch_size=64, random_seed=2, game_field="globalTargetsNC[41:47]"
    )
    for _ in ordered:
        pass
    mixed = StreamingMixedShardDataset(
        [conv], pool_size=1200, batch_size=64, random_seed=2, game_field="globalTargetsNC[41:47]"
    )
    for _ in mixed:
        pass
    assert ordered.stats().games_per_batch < 4 < mixed.stats().games_per_batch
