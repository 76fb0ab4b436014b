"""Elastic resume: what remains of an epoch, from the states of every participant of a saved run, and how a run
of another shape (ranks, workers, weights) continues it. Index arithmetic only: no record is ever read.

What remains is found by replaying each old participant's index work exactly as its stream did (its epoch plan,
then IndexPool fills and draws with its own generator) up to the item its state was taken at: the entries still
in its pool (explicit packed entries, so a position whose symmetries were partly drawn keeps the others) and the
rows it never activated. The continuation then splits that remainder between the new participants:

- the leftover entries are dealt out in contiguous shares of a fixed order (each old pool's leftovers shuffled,
  one pool after another): they are each new pool's first content (*preloaded*). A new participant's share spans
  about old/new participants consecutive old pools (one more at the edges; part of one when the run grows), so
  each process replays the entries of only those pools; every other old pool's counts (how far it read, how much
  it held) are replayed without entries or generator, which costs next to nothing;
- the rows never activated are scheduled like an epoch, with the new run's weights: a shard is one unit of the
  activation order (each directory's shards keep their order), its remaining rows are cut into one block per new
  participant (each block lies in one window of the shard, and all workers walk the same shards);
- every new participant gets the same number of entries; what that costs (fewer than ``factor`` x participants
  entries in all) is dropped and counted, and stays in the remainder should the continuation itself be resumed.

A run that continues an epoch records its *origin* (see :func:`collect`): the position, and per earlier run its
configuration, worker count and the items each participant had yielded. That is enough to recompute everything
above, so a continued run can be resumed again, elastically or not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from mmpool.errors import ConfigError
from mmpool.sampling.base import Counts
from mmpool.sampling.plan import Leftovers, Plan, Remainder, RunSpec, continued_plan, epoch_plan
from mmpool.sampling.schedule import Segments

ELASTIC_KEYS = ("world_size", "rank", "weights")  # what a continuation may change; anything else is a ConfigError
_SPLIT = 0x656C6173  # b"elas": keeps the generator that deals out leftovers apart from the participants' ones


def remainder_of(
    plan: Plan, run: RunSpec, epoch: int, items: Sequence[int | None], shard_rows: np.ndarray
) -> Remainder:
    """What is left of ``plan`` once each participant ``q`` of ``run`` has yielded ``items[q]`` items (None: all
    of its part). Replays each participant's counts now, its entries only when they are asked for; never reads
    a record."""
    if len(items) != run.participants:
        raise ConfigError(f"{len(items)} positions for the {run.participants} participants of the saved run")
    unused = len(plan.pooled) - int(plan.bounds[-1])
    parts = [(unused, partial(plan.pooled.range, int(plan.bounds[-1]), len(plan.pooled)))]
    activated = []
    for q, n in enumerate(items):
        segs = plan.segments[q]
        if n is None:  # finished: everything of its part was drawn
            activated.append(segs)
            parts.append((0, partial(np.empty, 0, np.uint64)))
            continue
        counts = run.counts(plan, q)
        undelivered = len(_replay(counts, run, n, q)) if n else 0
        parts.append(
            (counts.entries_pending + undelivered, partial(_leftovers, plan, run, epoch, q, n, len(shard_rows)))
        )
        activated.append(counts.activated_rows())
    rows = subtract(plan.rows, _concat(activated), shard_rows)
    return Remainder(Leftovers(parts), rows)


def _leftovers(plan: Plan, run: RunSpec, epoch: int, q: int, items: int, num_shards: int) -> np.ndarray:
    """The entries participant ``q`` had not yielded after ``items`` items, shuffled (so that any part of them is
    a uniform sample): its pool replayed with its generator."""
    pool = run.pool(plan, q, epoch, num_shards)
    undelivered = _replay(pool, run, items, q) if items else np.empty(0, dtype=np.uint64)
    out = np.concatenate([pool.entries_left(), undelivered])
    seq = [run.seed, epoch, q, run.participants, plan.depth, _SPLIT]
    np.random.default_rng(np.random.SeedSequence(seq)).shuffle(out)
    return out


def _replay(pool: Counts, run: RunSpec, items: int, participant: int) -> np.ndarray:
    """Draw as the stream drew for its first ``items`` items; returns entries drawn but not yielded yet (the
    rest of the last chunk of single examples)."""
    pool.fill()
    done = 0
    while done < items:
        packed = pool.take(run.step, pool.fill)
        if len(packed) == 0 or (run.drop_last and run.batched and len(packed) < run.step):
            raise ConfigError(
                f"participant {participant} (rank {participant // run.workers}, worker {participant % run.workers})"
                f": its state says {items} items were yielded, but its part of the epoch holds only {done}; "
                "the states do not belong to this data (shards converted since?) or were edited"
            )
        done += 1 if run.batched else len(packed)
    return packed[len(packed) - (done - items) :] if done > items else packed[:0]


def subtract(a: Segments, b: Segments, shard_rows: np.ndarray) -> Segments:
    """Rows of ``a`` not in ``b`` (each a set of disjoint row ranges), merged and sorted by shard and row."""
    base = np.concatenate([[0], np.cumsum(shard_rows)])

    def ends(s: Segments) -> tuple[np.ndarray, np.ndarray]:
        at = base[s.shard]
        return np.sort(at + s.lo), np.sort(at + s.hi)

    a0, a1 = ends(a)
    b0, b1 = ends(b)
    starts = base[np.unique(a.shard)]
    cuts = np.unique(np.concatenate([a0, a1, b0, b1, starts]))
    stops = cuts[1:]
    cuts = cuts[:-1]

    def inside(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.searchsorted(lo, cuts, side="right") > np.searchsorted(hi, cuts, side="right")

    keep = inside(a0, a1) & ~inside(b0, b1)
    cuts, stops = cuts[keep], stops[keep]
    # Merge neighbours, but never across the start of a shard.
    first = np.ones(len(cuts), dtype=bool)
    first[1:] = (cuts[1:] != stops[:-1]) | np.isin(cuts[1:], starts)
    begin = np.flatnonzero(first)
    lo, hi = cuts[begin], stops[np.append(begin[1:], len(cuts))[: len(begin)] - 1]
    shard = np.searchsorted(base, lo, side="right") - 1
    return Segments(shard, lo - base[shard], hi - base[shard])


def _concat(parts: list[Segments]) -> Segments:
    return Segments(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("shard", "lo", "hi")))


# ----- the origin: what a continued run records so that its own remainder can be recomputed -----


def collect(states: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where the run of ``states`` (one per rank and DataLoader worker, as each saved it) was, as a position to
    continue at: ``{"epoch", "start", "origin"}``, the origin None when nothing of that epoch was drawn yet.

    The states must come from one run at one step: the same configuration but for the rank, every participant
    once, all in one epoch (or just past its end).
    """
    if not states:
        raise ConfigError("load_state_dict got an empty list of states: give the state of every rank of the run")
    first = states[0]
    config = _without_rank(first["config"])
    for s in states[1:]:
        diff = _diff(config, _without_rank(s["config"]))
        if diff:
            raise ConfigError(f"the states come from different runs: {diff} (rank {s['config']['rank']})")
        for key in ("num_workers", "shards_upto", "start"):
            if s[key] != first[key]:
                raise ConfigError(f"the states come from different runs: {key} {first[key]!r} and {s[key]!r}")
    workers = max(1, first["num_workers"])
    n_part = config["world_size"] * workers
    by_participant: dict[int, dict[str, Any]] = {}
    for s in states:
        q = s["config"]["rank"] * workers + s["worker"]
        if q in by_participant:
            raise ConfigError(f"two states of rank {s['config']['rank']}, worker {s['worker']}: give each one once")
        by_participant[q] = s
    missing = [f"rank {q // workers} worker {q % workers}" for q in range(n_part) if q not in by_participant]
    if missing:
        raise ConfigError(
            f"the run had {config['world_size']} ranks x {workers} workers; the states of {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''} are missing: gather every rank's state (mmpool.gather_states)"
        )
    ordered = [by_participant[q] for q in range(n_part)]
    epoch = min(s["epoch"] for s in ordered)
    items: list[int | None] = []
    for q, s in enumerate(ordered):
        if s["epoch"] == epoch:
            items.append(s["items"])
        elif s["epoch"] == epoch + 1 and s["items"] == 0:
            items.append(None)  # its part of the epoch is over
        else:
            raise ConfigError(
                f"the states were not saved at one step: rank {q // workers} worker {q % workers} is at epoch "
                f"{s['epoch']} item {s['items']}, another at epoch {epoch}; save every rank's state at the same step"
            )
    current = [s for s in ordered if s["epoch"] == epoch]
    origin = current[0].get("origin")
    if any(s.get("origin") != origin for s in current):
        raise ConfigError("the states continue different origins: they are not the states of one run at one step")
    if origin is not None:
        check_origin(origin)
        if origin["epoch"] != epoch:
            raise ConfigError(f"a state at epoch {epoch} continues epoch {origin['epoch']}: it was edited")
    if all(n == 0 for n in items):  # this run drew nothing of the epoch: continue what it continued
        return {"epoch": epoch, "start": first["start"], "origin": origin}
    runs = (origin["runs"] if origin is not None else []) + [{"config": config, "workers": workers, "items": items}]
    body = {"epoch": epoch, "shards_upto": first["shards_upto"], "runs": runs}
    return {"epoch": epoch, "start": first["start"], "origin": {**body, "fingerprint": _digest(body)}}


def check_origin(origin: Any) -> None:
    """A ConfigError unless ``origin`` is an origin as :func:`collect` makes it, unedited."""
    body = {k: v for k, v in origin.items() if k != "fingerprint"} if isinstance(origin, dict) else None
    if body is None or set(body) != {"epoch", "shards_upto", "runs"} or origin.get("fingerprint") != _digest(body):
        raise ConfigError(
            "the state's origin (the runs its epoch continues) was edited or corrupted; "
            "use a state saved by StreamingMixedShardDataset.state_dict"
        )


def origin_remainder(origin: dict[str, Any], shard_dir: np.ndarray, shard_rows: np.ndarray) -> Remainder:
    """What the runs of ``origin`` left of its epoch, each continuing the remainder of the one before."""
    epoch = origin["epoch"]
    remainder = None
    for depth, r in enumerate(origin["runs"]):
        run = RunSpec.from_config(r["config"], r["workers"], shard_dir, shard_rows)
        if remainder is None:
            plan = epoch_plan(shard_dir, shard_rows, run)
        else:
            plan = continued_plan(remainder, shard_dir, run, epoch, depth)
        remainder = remainder_of(plan, run, epoch, r["items"], shard_rows)
    assert remainder is not None, "collect() never makes an origin without runs"
    return remainder


def changes(saved: dict[str, Any], now: dict[str, Any], allowed: Sequence[str] = ELASTIC_KEYS) -> str:
    """What differs between two configurations, but for the keys ``allowed`` to (empty if nothing)."""
    return _diff(
        {k: v for k, v in saved.items() if k not in allowed}, {k: v for k, v in now.items() if k not in allowed}
    )


def _diff(saved: dict[str, Any], now: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    return "; ".join(f"{k}: saved {saved.get(k)!r}, now {now.get(k)!r}" for k in keys)


def _without_rank(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "rank"}


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
