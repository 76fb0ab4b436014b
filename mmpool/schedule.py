"""The order shards are activated in, and how each shard's rows are split between ranks and workers.

Both are pure functions of the catalog and a few integers, so every rank and worker computes the same plan
without talking to the others, and a resumed run recomputes it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def activation_order(shard_dir: np.ndarray, shard_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Global shard ids in activation order.

    Each directory's records are spread evenly over the epoch at its weight's pace; the next shard is the one whose
    middle record is due first (``argmin_i (activated_i + rows_of_next_i / 2) / w_i``, ties to the lower
    directory). For shards of one size this is Megatron-LM's greedy deficit blending (the directory lagging its
    share most goes next); with shards of different sizes it also stops one large shard from starving the small
    directories while the largest one catches up. Inside a directory shards go in catalog order (ascending
    number); a directory that runs out drops out.
    """
    num_dirs = len(weights)
    queues = [np.flatnonzero(shard_dir == d).tolist() for d in range(num_dirs)]
    heads = [0] * num_dirs
    done = [0] * num_dirs
    w = [float(x) for x in weights]
    rows = shard_rows.tolist()
    order: list[int] = []
    live = [d for d in range(num_dirs) if queues[d]]
    while live:
        d = min(live, key=lambda i: ((done[i] + rows[queues[i][heads[i]]] / 2) / w[i], i))
        g = queues[d][heads[d]]
        order.append(g)
        heads[d] += 1
        done[d] += rows[g]
        if heads[d] == len(queues[d]):
            live.remove(d)
    return np.array(order, dtype=np.int64)


@dataclass(frozen=True)
class Segments:
    """Row ranges ``[lo, hi)`` of global shards, in activation order: what one participant reads in an epoch."""

    shard: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def positions(self) -> int:
        return int((self.hi - self.lo).sum())


def plan_epoch(
    shard_dir: np.ndarray,
    shard_rows: np.ndarray,
    weights: np.ndarray,
    participants: int,
    max_positions: int | None = None,
) -> tuple[list[Segments], int]:
    """Split the epoch between ``participants`` (rank-major: participant = rank * workers + worker).

    The activation order is cut after ``max_positions`` positions (the last shard partly). Every shard's rows are
    cut into ``participants`` contiguous blocks, so each rank reads one contiguous block of every shard and all
    workers walk the same shards at the same time. Which participants get the one-row remainders rotates from
    shard to shard, so totals differ by at most one; each participant is then cut to the smallest total (the
    *quota*) so every rank yields the same number of examples. Returns the segments and the quota.
    """
    order = activation_order(shard_dir, shard_rows, weights)
    n = shard_rows[order].astype(np.int64)
    if max_positions is not None:
        keep = np.cumsum(n) - n < max_positions
        order, n = order[keep], n[keep]
        n[-1] -= max(0, int(n.sum()) - max_positions)
    base, rem = n // participants, n % participants
    start = (np.cumsum(rem) - rem) % participants  # who gets the first extra row of each shard
    p = np.arange(participants)
    sizes = base[:, None] + ((p[None, :] - start[:, None]) % participants < rem[:, None])
    lows = np.cumsum(sizes, axis=1) - sizes
    quota = int(sizes.sum(axis=0).min())
    plans = []
    for q in range(participants):
        lo, hi = lows[:, q], lows[:, q] + sizes[:, q]
        # Cut to the quota from the end of this participant's activation order.
        over = np.cumsum(hi - lo) - quota
        hi = np.where(over > 0, np.maximum(lo, hi - over), hi)
        keep = hi > lo
        plans.append(Segments(order[keep], lo[keep], hi[keep]))
    return plans, quota
