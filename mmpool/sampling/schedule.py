"""The order shards are activated in, and how each shard's rows are split between ranks and workers.

Both are pure functions of the catalog and a few integers, so every rank and worker computes the same plan
without talking to the others, and a resumed run recomputes it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from mmpool.errors import ConfigError

Weights = Literal["shards", "records"] | Sequence[float]  # how directories are weighted (see dir_weights)


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


def split_epoch(
    shard_dir: np.ndarray,
    shard_rows: np.ndarray,
    weights: np.ndarray,
    participants: int,
    max_positions: int | None = None,
    slice_rows: int | None = None,
) -> tuple[list[Segments], int]:
    """Split the epoch between ``participants`` (rank-major: participant = rank * workers + worker).

    The activation order is cut after ``max_positions`` positions (the last shard partly). Every shard's rows are
    cut into ``participants`` contiguous blocks, so each rank reads one contiguous block of every shard and all
    workers walk the same shards at the same time. Which participants get the one-row remainders rotates from
    shard to shard, so totals differ by at most one; each participant is then cut to the smallest total (the
    *quota*) so every rank yields the same number of examples. With ``slice_rows``, each participant's rows then
    enter its pool in slices of that many rows, interleaved between directories (``interleave``).
    Returns the segments and the quota.
    """
    pieces = epoch_rows(shard_dir, shard_rows, weights, max_positions)
    sizes = block_sizes(pieces.hi, participants)
    quota = int(sizes.sum(axis=0).min())
    segments = assign_blocks(pieces, np.arange(len(pieces.shard)), sizes, np.full(participants, quota))
    if slice_rows is not None:
        segments = [interleave(s, shard_dir, weights, slice_rows) for s in segments]
    return segments, quota


SLICES_PER_POOL = 256  # a slice is 1/256 of the pool: each directory's share of the pool stays within ~0.4%
MIN_SLICE_ROWS = 16  # below that, the per-slice work of a refill costs more than its rows
MAX_SLICES = 1 << 20  # per participant and epoch (~40 MB of segments): a tiny pool over a huge epoch gets longer slices


def slice_rows(capacity: int, factor: int) -> int:
    """Rows a shard enters a pool of ``capacity`` entries by (``interleave``): a small part of the pool."""
    return max(MIN_SLICE_ROWS, capacity // (factor * SLICES_PER_POOL))


def interleave(segments: Segments, shard_dir: np.ndarray, weights: np.ndarray, slice_rows: int) -> Segments:
    """The same rows cut into slices of at most ``slice_rows`` rows and merged between directories at their
    weights' pace, each directory's slices in their order (so rows stay sequential inside each directory).

    Whole shards entering one at a time swing the pool's mix by a shard's share of the pool at each directory's
    turn; slices much smaller than the pool keep every directory within a slice of its share at every refill.
    The merge is the activation order's rule applied to slices: the slice whose middle row is due first goes
    next, ``(rows of its directory before it + its rows / 2) / weight`` (ties to the lower directory); as that
    key grows along each directory, sorting all slices by it is the greedy merge. Neighbouring slices of one
    shard that end up next to each other are joined again (one directory: nothing changes).
    """
    n = segments.hi - segments.lo
    slice_rows = max(slice_rows, -(-int(n.sum()) // MAX_SLICES))
    pieces = -(-n // slice_rows)
    seg = np.repeat(np.arange(len(n)), pieces)
    first = np.cumsum(pieces) - pieces
    lo = segments.lo[seg] + (np.arange(len(seg)) - first[seg]) * slice_rows
    hi = np.minimum(lo + slice_rows, segments.hi[seg])
    shard = segments.shard[seg]
    d = shard_dir[shard]
    rows = hi - lo
    before = np.empty_like(rows)  # rows of the slice's directory before it
    for k in np.unique(d):
        mine = d == k
        before[mine] = np.cumsum(rows[mine]) - rows[mine]
    due = (before + rows / 2) / np.asarray(weights, dtype=np.float64)[d]
    order = np.lexsort((d, due))
    return join(shard[order], lo[order], hi[order])


def join(shard: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Segments:
    """Segments of these ranges, neighbours that continue one another (same shard, next rows) joined."""
    if len(shard) == 0:
        return Segments(shard, lo, hi)
    starts = np.ones(len(shard), dtype=bool)
    starts[1:] = (shard[1:] != shard[:-1]) | (lo[1:] != hi[:-1])
    start = np.flatnonzero(starts)
    stop = np.append(start[1:], len(shard)) - 1
    return Segments(shard[start], lo[start], hi[stop])


def epoch_rows(
    shard_dir: np.ndarray, shard_rows: np.ndarray, weights: np.ndarray, max_positions: int | None = None
) -> Segments:
    """The rows an epoch uses, one range ``[0, n)`` per shard in activation order, cut after ``max_positions``."""
    order = activation_order(shard_dir, shard_rows, weights)
    n = shard_rows[order].astype(np.int64)
    if max_positions is not None:
        keep = np.cumsum(n) - n < max_positions
        order, n = order[keep], n[keep]
        n[-1] -= max(0, int(n.sum()) - max_positions)
    return Segments(order, np.zeros_like(n), n)


def block_sizes(unit_rows: np.ndarray, participants: int) -> np.ndarray:
    """``(units, participants)`` block sizes: each unit's rows cut into ``participants`` contiguous blocks.

    Which participants get the one-row remainders rotates from unit to unit, so totals differ by at most one.
    """
    n = np.asarray(unit_rows, dtype=np.int64)
    base, rem = n // participants, n % participants
    start = (np.cumsum(rem) - rem) % participants  # who gets the first extra row of each unit
    p = np.arange(participants)
    return base[:, None] + ((p[None, :] - start[:, None]) % participants < rem[:, None])


def assign_blocks(pieces: Segments, piece_unit: np.ndarray, sizes: np.ndarray, keep: np.ndarray) -> list[Segments]:
    """Each participant's row ranges, in activation order.

    ``pieces`` are row ranges in activation order, grouped into units (``piece_unit``, non-decreasing; a unit is
    one shard, whose rows may lie in several pieces). A unit's rows, taken piece after piece, are cut into
    consecutive blocks of ``sizes[unit, participant]`` rows, participant 0 first, so each participant's rows of a
    shard lie in one window of it and all windows are disjoint. Participant ``q`` keeps the first ``keep[q]`` rows
    of its blocks in activation order (the rest is cut from its end).
    """
    participants = sizes.shape[1]
    piece_len = pieces.hi - pieces.lo
    piece_at = np.cumsum(piece_len) - piece_len  # where each piece starts in the concatenation of all pieces
    unit_len = np.bincount(piece_unit, weights=piece_len, minlength=len(sizes)).astype(np.int64)
    unit_at = np.cumsum(unit_len) - unit_len
    over = np.cumsum(sizes, axis=0) - keep[None, :]  # rows past each participant's quota, by the end of each unit
    kept = np.clip(sizes - np.maximum(over, 0), 0, sizes)
    block_at = (unit_at[:, None] + np.cumsum(sizes, axis=1) - sizes).ravel()
    nonempty = sizes.ravel() > 0
    block_at, block_end = block_at[nonempty], block_at[nonempty] + kept.ravel()[nonempty]
    block_owner = np.tile(np.arange(participants), len(sizes))[nonempty]
    # Cut the concatenation at every piece and block boundary: each cut interval lies in one piece and one block.
    cuts = np.unique(np.concatenate([piece_at[piece_len > 0], block_at, block_end]))
    stops = np.append(cuts[1:], unit_len.sum())[: len(cuts)]
    b = np.searchsorted(block_at, cuts, side="right") - 1
    used = cuts < block_end[b]
    cuts, stops, b = cuts[used], stops[used], b[used]
    piece = np.searchsorted(piece_at, cuts, side="right") - 1
    lo = pieces.lo[piece] + cuts - piece_at[piece]
    hi = lo + stops - cuts
    owner = block_owner[b]
    by_owner = np.argsort(owner, kind="stable")  # stays in activation order inside each participant
    bounds = np.searchsorted(owner[by_owner], np.arange(participants + 1))
    return [
        Segments(pieces.shard[piece][i], lo[i], hi[i])
        for i in (by_owner[bounds[q] : bounds[q + 1]] for q in range(participants))
    ]


def dir_weights(weights: Weights, shard_dir: np.ndarray, shard_rows: np.ndarray, num_dirs: int) -> np.ndarray:
    """Normalised directory weights: ``"shards"`` (selected shards per directory), ``"records"``, or one number
    per directory."""
    if isinstance(weights, str):
        if weights == "shards":
            w = np.bincount(shard_dir, minlength=num_dirs).astype(np.float64)
        elif weights == "records":
            w = np.bincount(shard_dir, weights=shard_rows, minlength=num_dirs).astype(np.int64).astype(np.float64)
        else:
            raise ConfigError(f"weights={weights!r}: use 'shards', 'records' or one number per directory")
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (num_dirs,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
            raise ConfigError(f"weights={list(weights)!r}: give one positive finite number per directory ({num_dirs})")
    return w / w.sum()
