"""Stream statistics, written by each DataLoader worker into one small shared-memory table the main process reads.

Counters cover the current (or last) epoch: they reset when an epoch starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_WORKERS = 64
_EXAMPLES, _ITEMS, _REFILLS, _ACTIVATED, _EXHAUSTED, _DROPPED, _PEAK, _EPOCH, _POOL = range(9)
_DIRS = 9


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
            f"peak memory {self.peak_memory_bytes / 2**30:.2f} GiB; pool {self.pool_entries} entries"
        )


class Slot:
    """One worker's row of the table."""

    def __init__(self, row: torch.Tensor) -> None:
        self.row = row
        self._counts = row.numpy()  # the same shared memory: numpy updates cost far less per batch than torch ops

    def start_epoch(self, epoch: int, dropped: int) -> None:
        self.row.zero_()
        self.row[_EPOCH] = epoch
        self.row[_DROPPED] = dropped

    def count(self, per_dir: np.ndarray) -> None:
        row = self._counts
        row[_EXAMPLES] += int(per_dir.sum())
        row[_ITEMS] += 1
        row[_DIRS:] += per_dir

    def update_pool(self, pool) -> None:  # an IndexPool; not imported to keep this module free of the pool
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


class StatsBoard:
    """The shared table: row 0 for iteration in the main process, row 1 + i for DataLoader worker i."""

    def __init__(self, num_dirs: int) -> None:
        self.table = torch.zeros(MAX_WORKERS + 1, _DIRS + num_dirs, dtype=torch.int64).share_memory_()

    def slot(self, worker: int | None) -> Slot:
        return Slot(self.table[0 if worker is None else 1 + worker % MAX_WORKERS])

    def read(self, weights: np.ndarray) -> Stats:
        t = self.table.numpy().copy()
        live = t[:, _ITEMS] + t[:, _REFILLS] > 0
        rows = t[live] if live.any() else t[:1]
        per_dir = rows[:, _DIRS:].sum(axis=0)
        examples = int(per_dir.sum())
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
        )
