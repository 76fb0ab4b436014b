"""The epoch each participant starts next, in shared memory.

Slot 0 is the main process, slot ``1 + i`` DataLoader worker ``i``. The table lives in shared memory, so forked,
spawned and persistent workers all agree with each other and with ``set_epoch`` in the main process.
"""

from __future__ import annotations

import torch

from mmpool.stream.stats import MAX_WORKERS


class EpochTable:
    """Next epoch per participant: [main process, worker 0, worker 1, ...]."""

    def __init__(self) -> None:
        self._next = torch.zeros(MAX_WORKERS + 1, dtype=torch.int64).share_memory_()

    @staticmethod
    def slot(worker: int | None) -> int:
        """The slot of the main process (None) or of DataLoader worker ``worker``."""
        return 0 if worker is None else 1 + worker % MAX_WORKERS

    def get(self, slot: int) -> int:
        return int(self._next[slot])

    def set(self, slot: int, epoch: int) -> None:
        self._next[slot] = epoch

    def set_all(self, epoch: int) -> None:
        """Every participant starts ``epoch`` next (``set_epoch``)."""
        self._next.fill_(epoch)
