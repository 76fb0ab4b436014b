"""Which shards a job reads: converted directories, their selected shard ranges, sizes and directory weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmpool.errors import ConfigError
from mmpool.format.manifest import Manifest, PackEntry, Schema, check_pack_file, read_manifest
from mmpool.sampling.entries import check_limits
from mmpool.sampling.schedule import Weights, dir_weights
from mmpool.store.ranges import select, to_range


@dataclass(frozen=True)
class PackRef:
    """One pack file of the catalog: the directory it belongs to and its manifest entry."""

    dir_index: int
    path: Path
    entry: PackEntry
    kind: str


class Catalog:
    """The selected shards of one or more converted directories, as flat numpy tables.

    Shards are numbered ``0..num_shards-1`` in directory order, ascending shard number inside each directory
    (the *global shard id* used in packed pool indices). Per global shard the tables give its directory,
    shard number, row count, global pack id and first row inside that pack.
    """

    def __init__(
        self,
        dirs: Sequence[str | Path],
        ranges: Sequence[str] | str | None = None,
        weights: Weights = "shards",
        upto: Sequence[int] | None = None,
    ) -> None:
        """``upto`` (one shard number per directory) drops shards numbered above it: a resumed epoch uses it to
        read the shards its checkpoint saw, not ones converted since."""
        if isinstance(dirs, (str, Path)):
            dirs = [dirs]
        if not dirs:
            raise ConfigError("data_dirs is empty: give at least one converted directory")
        self.dirs = [Path(d) for d in dirs]
        if ranges is None:
            ranges = ["all"] * len(self.dirs)
        elif isinstance(ranges, str):
            ranges = [ranges] * len(self.dirs)
        if len(ranges) != len(self.dirs):
            raise ConfigError(
                f"shard_ranges has {len(ranges)} entries for {len(self.dirs)} data_dirs; give one range per directory"
            )
        self.ranges = list(ranges)
        self.manifests: list[Manifest] = [read_manifest(d) for d in self.dirs]
        self.schema: Schema = self._common_schema()

        dir_of, number, rows, pack, first = [], [], [], [], []
        self.packs: list[PackRef] = []
        for i, (d, m, spec) in enumerate(zip(self.dirs, self.manifests, self.ranges)):
            numbers = np.array([s.number for s in m.shards], dtype=np.int64)
            mask = select(numbers, spec, str(d))
            if upto is not None:
                mask &= numbers <= upto[i]
            chosen = [m.shards[j] for j in np.flatnonzero(mask)]
            if not chosen:
                have = to_range(numbers) or "none"
                raise ConfigError(f"{d}: shard range {spec!r} selects no shard (the directory holds shards {have})")
            base = len(self.packs)
            self.packs += [PackRef(i, check_pack_file(d, p), p, m.pack_format) for p in m.packs]
            for s in chosen:
                dir_of.append(i)
                number.append(s.number)
                rows.append(s.rows)
                pack.append(base + s.pack)
                first.append(s.first_row)
        self.shard_dir = np.array(dir_of, dtype=np.int32)
        self.shard_number = np.array(number, dtype=np.int64)
        self.shard_rows = np.array(rows, dtype=np.int64)
        self.shard_pack = np.array(pack, dtype=np.int32)
        self.shard_first_row = np.array(first, dtype=np.int64)
        self.weights = dir_weights(weights, self.shard_dir, self.shard_rows, self.num_dirs)
        check_limits(self.num_shards, int(self.shard_rows.max()), ", ".join(map(str, self.dirs)))

    @property
    def num_dirs(self) -> int:
        return len(self.dirs)

    @property
    def num_shards(self) -> int:
        return len(self.shard_rows)

    def shards_per_dir(self) -> np.ndarray:
        return np.bincount(self.shard_dir, minlength=self.num_dirs)

    def records_per_dir(self) -> np.ndarray:
        return np.bincount(self.shard_dir, weights=self.shard_rows, minlength=self.num_dirs).astype(np.int64)

    def describe_shard(self, g: int) -> str:
        """``dir/shard N`` for messages."""
        return f"{self.dirs[self.shard_dir[g]]} shard {self.shard_number[g]}"

    def _common_schema(self) -> Schema:
        first = self.manifests[0].schema
        for d, m in zip(self.dirs[1:], self.manifests[1:]):
            if m.schema != first:
                raise ConfigError(
                    f"{d} and {self.dirs[0]} have different record schemas and cannot be mixed "
                    f"({_differences(first, m.schema)}). Convert one of them again to the other's schema: "
                    f"mmpool convert SRC NEWDIR --like {self.dirs[0]} with --pad FIELD (shorter last axis), "
                    f"--fill FIELD=VALUE (missing field) or --drop FIELD (extra field) as needed.\n"
                    f"{self.dirs[0]}:\n{first.describe()}\n{d}:\n{m.schema.describe()}"
                )
        return first


def _differences(a: Schema, b: Schema) -> str:
    """The fields two schemas disagree on, for messages."""
    sa, sb = a.field_specs(), b.field_specs()
    out = []
    for name in [*sa, *(n for n in sb if n not in sa)]:
        if sa.get(name) != sb.get(name):
            left = f"{sa[name][0].name} {sa[name][1]}" if name in sa else "missing"
            right = f"{sb[name][0].name} {sb[name][1]}" if name in sb else "missing"
            out.append(f"{name!r}: {left} vs {right}")
    return "; ".join(out) or "same fields at other offsets"


@dataclass(frozen=True)
class Split:
    """Range strings and weights for the training and validation parts of the same directories."""

    train_ranges: list[str]
    train_weights: list[float]
    val_ranges: list[str]
    val_weights: list[float]


def train_val_split(
    dirs: Sequence[str | Path],
    ranges: Sequence[str] | str | None = None,
    val_fraction: float = 0.05,
    weights: Weights = "shards",
) -> Split:
    """Split every directory's selected shards: the last ``val_fraction`` of them (at least one) go to validation.

    Weights are computed for each split as ``Catalog`` would (by shards or records), so both splits mix the
    directories the same way. A directory needs at least two selected shards.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction}: must be between 0 and 1 (exclusive)")
    cat = Catalog(dirs, ranges, weights if isinstance(weights, str) else "shards")
    train, val = [], []
    for i, d in enumerate(cat.dirs):
        numbers = cat.shard_number[cat.shard_dir == i]
        if len(numbers) < 2:
            raise ConfigError(f"{d}: only {len(numbers)} shard selected; a train/validation split needs two or more")
        n_val = min(len(numbers) - 1, max(1, round(len(numbers) * val_fraction)))
        train.append(to_range(numbers[:-n_val]))
        val.append(to_range(numbers[-n_val:]))
    return Split(
        train,
        Catalog(dirs, train, weights).weights.tolist(),
        val,
        Catalog(dirs, val, weights).weights.tolist(),
    )
