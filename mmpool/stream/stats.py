"""Stream statistics, written by each DataLoader worker into one small shared-memory table the main process reads.

Counters cover the current (or last) epoch: they reset when an epoch starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmpool.sampling.base import Pool

MAX_WORKERS = 64
WINDOW = 10_000  # examples a share window spans (whole batches: the first batch that reaches it closes it)
_PPM = 1_000_000  # window errors are kept as integer parts per million in the int64 table
(_EXAMPLES, _ITEMS, _REFILLS, _ACTIVATED, _EXHAUSTED, _DROPPED, _PEAK, _EPOCH, _POOL) = range(9)
(_WINDOWS, _WORST, _SHARDS, _GAMES, _GAME_MAX) = range(9, 14)
_DIRS = 14


@dataclass(frozen=True)
class BatchCounts:
    """What the statistics count of one batch (or chunk of single examples)."""

    per_dir: np.ndarray  # examples per directory
    shards: int  # distinct shards
    games: int = 0  # distinct games (0 without a game key)
    game_max: int = 0  # positions of the game with the most


@dataclass(frozen=True)
class Stats:
    """What the stream has done this epoch, summed over this rank's workers."""

    epoch: int
    examples: int
    per_dir: list[int]
    targets: list[float]  # weight x examples: what exact proportions would give
    shards_activated: int
    shards_exhausted: int
    refills: int
    dropped: int  # examples (position x symmetry) left out this epoch so every rank yields the same number
    peak_memory_bytes: int  # highest anonymous memory (process + workers) a check saw
    pool_entries: int
    windows: int  # share windows of WINDOW examples closed (each worker's stream has its own)
    worst_window_error: float  # max over those windows and directories of |share - weight|
    shards_per_batch: float  # mean distinct shards per batch (per chunk of single examples)
    games_per_batch: float | None  # mean distinct games per batch, with a game key (``game_field``)
    max_game_positions: int | None  # most positions of one game in one batch, with a game key

    @property
    def shares(self) -> list[float]:
        return [c / self.examples if self.examples else 0.0 for c in self.per_dir]

    def __str__(self) -> str:
        dirs = ", ".join(
            f"dir{i} {c} ({s:.1%} vs target {t / max(1, self.examples):.1%})"
            for i, (c, s, t) in enumerate(zip(self.per_dir, self.shares, self.targets))
        )
        return (
            f"epoch {self.epoch}: {self.examples} examples [{dirs}]; shards activated {self.shards_activated}, "
            f"exhausted {self.shards_exhausted}; refills {self.refills}; dropped {self.dropped}; "
            f"peak memory {self.peak_memory_bytes / 2**30:.2f} GiB; pool {self.pool_entries} entries; "
            f"{self.mixing()}"
        )

    def mixing(self) -> str:
        games = ""
        if self.games_per_batch is not None:
            games = f", games per batch {self.games_per_batch:.1f} (at most {self.max_game_positions} of one)"
        return (
            f"worst share error {self.worst_window_error:.4f} over {self.windows} windows of {WINDOW} examples, "
            f"shards per batch {self.shards_per_batch:.1f}{games}"
        )


class Slot:
    """One worker's row of the table."""

    def __init__(self, row: torch.Tensor) -> None:
        self.row = row
        self._counts = row.numpy()  # the same shared memory: numpy updates cost far less per batch than torch ops
        self._weights = np.ones(0)
        self._window = np.zeros(0, dtype=np.int64)  # examples per directory of the window being filled

    def start_epoch(self, epoch: int, dropped: int, weights: np.ndarray) -> None:
        self.row.zero_()
        self.row[_EPOCH] = epoch
        self.row[_DROPPED] = dropped
        self._weights = np.asarray(weights, dtype=np.float64)
        self._window = np.zeros(len(weights), dtype=np.int64)

    def count(self, batch: BatchCounts) -> None:
        row = self._counts
        n = int(batch.per_dir.sum())
        row[_EXAMPLES] += n
        row[_ITEMS] += 1
        row[_DIRS:] += batch.per_dir
        row[_SHARDS] += batch.shards
        row[_GAMES] += batch.games
        row[_GAME_MAX] = max(int(row[_GAME_MAX]), batch.game_max)
        self._window += batch.per_dir
        total = int(self._window.sum())
        if total >= WINDOW:
            error = float(np.abs(self._window / total - self._weights).max())
            row[_WORST] = max(int(row[_WORST]), round(error * _PPM))
            row[_WINDOWS] += 1
            self._window[:] = 0

    def update_pool(self, pool: Pool) -> None:
        done = pool.shards_fully_activated()
        self.row[_REFILLS] = pool.refills
        self.row[_ACTIVATED] = pool.activated_shards
        self.row[_EXHAUSTED] = int(np.count_nonzero(pool.outstanding[done] == 0))
        self.row[_POOL] = pool.size

    def set_peak(self, peak: int) -> None:
        self.row[_PEAK] = max(int(self.row[_PEAK]), peak)

    def shares(self, weights: np.ndarray) -> str:
        counts = self.row[_DIRS:].numpy()
        total = max(1, int(counts.sum()))
        return " ".join(f"{c / total:.3f}/{w:.3f}" for c, w in zip(counts, weights))

    def mixing(self) -> str:
        """This stream's worst window error and shards per batch so far, for the verbose log."""
        row = self._counts
        return (
            f"worst window error {row[_WORST] / _PPM:.4f} ({row[_WINDOWS]} windows), "
            f"shards per batch {row[_SHARDS] / max(1, row[_ITEMS]):.1f}"
        )


class StatsBoard:
    """The shared table: row 0 for iteration in the main process, row 1 + i for DataLoader worker i."""

    def __init__(self, num_dirs: int, game_key: bool = False) -> None:
        self.table = torch.zeros(MAX_WORKERS + 1, _DIRS + num_dirs, dtype=torch.int64).share_memory_()
        self.game_key = game_key

    def slot(self, worker: int | None) -> Slot:
        return Slot(self.table[0 if worker is None else 1 + worker % MAX_WORKERS])

    def read(self, weights: np.ndarray) -> Stats:
        t = self.table.numpy().copy()
        live = t[:, _ITEMS] + t[:, _REFILLS] > 0
        rows = t[live] if live.any() else t[:1]
        per_dir = rows[:, _DIRS:].sum(axis=0)
        examples = int(per_dir.sum())
        items = max(1, int(rows[:, _ITEMS].sum()))
        return Stats(
            epoch=int(rows[:, _EPOCH].max()),
            examples=examples,
            per_dir=per_dir.tolist(),
            targets=(np.asarray(weights) * examples).tolist(),
            # Every worker reads its own block of every shard, in the same order: a shard is activated once the
            # first worker starts its block, exhausted once the last worker finishes its block.
            shards_activated=int(rows[:, _ACTIVATED].max()),
            shards_exhausted=int(rows[:, _EXHAUSTED].min()),
            refills=int(rows[:, _REFILLS].sum()),
            dropped=int(rows[:, _DROPPED].sum()),
            peak_memory_bytes=int(t[:, _PEAK].max()),
            pool_entries=int(rows[:, _POOL].sum()),
            windows=int(rows[:, _WINDOWS].sum()),
            worst_window_error=float(rows[:, _WORST].max()) / _PPM,
            shards_per_batch=float(rows[:, _SHARDS].sum()) / items,
            games_per_batch=float(rows[:, _GAMES].sum()) / items if self.game_key else None,
            max_game_positions=int(rows[:, _GAME_MAX].max()) if self.game_key else None,
        )
