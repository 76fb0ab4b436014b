"""Tests for mmpool.store.ranges and mmpool.store.catalog: range strings, selection, weights, splits and errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mmpool.convert.converter import convert
from mmpool.errors import ConfigError, ShardError
from mmpool.format.manifest import read_manifest
from mmpool.store.catalog import Catalog, train_val_split
from mmpool.store.ranges import parse_range, select, to_range
from mmpool.testing.synthetic import make_synthetic

# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("all", [(0, None)]),
        (" ALL ", [(0, None)]),
        ("7", [(7, 7)]),
        ("0-99", [(0, 99)]),
        ("100-", [(100, None)]),
        ("-49", [(0, 49)]),
        ("0-9,20-29", [(0, 9), (20, 29)]),
        ("3, 5 - 6 ,10-", [(3, 3), (5, 6), (10, None)]),
    ],
)
def test_parse_range(text: str, parsed: list[tuple[int, int | None]]) -> None:
    assert parse_range(text, "d") == parsed


@pytest.mark.parametrize("text", ["", "x", "1-2-3", "5-3", "1,,2", "-", "1.5", "a-b", "7 8"])
def test_parse_range_malformed(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_range(text, "/data/gen7")
    assert str(err.value).startswith("/data/gen7: ")
    assert repr(text) in str(err.value)


def test_parse_range_not_a_string() -> None:
    with pytest.raises(ConfigError, match=r"^/d: shard range must be a string such as 'all' or '0-99', got 5$"):
        parse_range(5, "/d")  # type: ignore[arg-type]


def test_select_and_to_range() -> None:
    numbers = np.array([0, 1, 2, 5, 6, 7, 9, 100, 101])
    assert numbers[select(numbers, "all")].tolist() == numbers.tolist()
    assert numbers[select(numbers, "1-6")].tolist() == [1, 2, 5, 6]
    assert numbers[select(numbers, "7-")].tolist() == [7, 9, 100, 101]
    assert numbers[select(numbers, "-5")].tolist() == [0, 1, 2, 5]
    assert numbers[select(numbers, "0,9,100-100")].tolist() == [0, 9, 100]
    assert numbers[select(numbers, "3-4")].tolist() == []
    assert to_range(numbers) == "0-2,5-7,9,100-101"
    assert to_range([]) == ""
    assert to_range([4]) == "4"
    assert to_range(np.array([3, 1, 2])) == "1-3"


# --------------------------------------------------------------------------- catalogs


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two converted directories: 10 shards of 100 rows and 4 shards of 400 rows."""
    root = tmp_path_factory.mktemp("catalog")
    srcs = make_synthetic(root / "src", [10, 4], [100, 400])
    out = []
    for s in srcs:
        convert(s, root / "conv" / s.name, pack_size=250 * 280, progress=False)
        out.append(root / "conv" / s.name)
    return out


def test_catalog_all(dirs: list[Path]) -> None:
    cat = Catalog(dirs)
    assert cat.num_dirs == 2 and cat.num_shards == 14
    assert cat.shard_dir.tolist() == [0] * 10 + [1] * 4
    assert cat.shard_number.tolist() == list(range(10)) + list(range(4))
    assert cat.shard_rows.tolist() == [100] * 10 + [400] * 4
    # dir0: two 100-row shards per pack (5 packs); dir1: one 400-row shard per pack, packs 5..8
    assert cat.shard_pack.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8]
    assert cat.shard_first_row.tolist() == [0, 100] * 5 + [0] * 4
    assert [(p.dir_index, p.path.name, p.kind) for p in cat.packs] == [
        (0, f"pack-0000{k}.npy", "npy") for k in range(5)
    ] + [(1, f"pack-0000{k}.npy", "npy") for k in range(4)]
    assert cat.shards_per_dir().tolist() == [10, 4]
    assert cat.records_per_dir().tolist() == [1000, 1600]
    assert cat.weights.tolist() == [10 / 14, 4 / 14]
    assert cat.describe_shard(11) == f"{dirs[1]} shard 1"
    assert Catalog(dirs[0]).num_shards == 10  # one directory as a plain path


@pytest.mark.parametrize(
    ("ranges", "numbers"),
    [
        (["0-3", "2-"], [[0, 1, 2, 3], [2, 3]]),
        (["5-", "-1"], [[5, 6, 7, 8, 9], [0, 1]]),
        (["1,3,7-8", "all"], [[1, 3, 7, 8], [0, 1, 2, 3]]),
        ("3", [[3], [3]]),
        (["0-100", "3"], [list(range(10)), [3]]),
    ],
)
def test_catalog_ranges(dirs: list[Path], ranges: list[str] | str, numbers: list[list[int]]) -> None:
    cat = Catalog(dirs, ranges)
    assert [cat.shard_number[cat.shard_dir == d].tolist() for d in range(2)] == numbers
    assert cat.shards_per_dir().tolist() == [len(n) for n in numbers]


def test_catalog_range_errors(dirs: list[Path]) -> None:
    with pytest.raises(ConfigError) as err:
        Catalog(dirs, ["0-3", "1-x"])
    assert str(err.value).startswith(f"{dirs[1]}: malformed shard range '1-x' (part '1-x'); ")
    with pytest.raises(ConfigError) as err:
        Catalog(dirs, ["20-30", "all"])
    assert str(err.value) == f"{dirs[0]}: shard range '20-30' selects no shard (the directory holds shards 0-9)"
    with pytest.raises(ConfigError, match="shard_ranges has 1 entries for 2 data_dirs"):
        Catalog(dirs, ["all"])
    with pytest.raises(ConfigError, match="data_dirs is empty"):
        Catalog([])


def test_weights(dirs: list[Path]) -> None:
    assert Catalog(dirs, weights="shards").weights.tolist() == [10 / 14, 4 / 14]
    assert Catalog(dirs, weights="records").weights.tolist() == [1000 / 2600, 1600 / 2600]
    assert Catalog(dirs, ["0-4", "all"], weights="records").weights.tolist() == [500 / 2100, 1600 / 2100]
    assert Catalog(dirs, weights=[3, 1]).weights.tolist() == [0.75, 0.25]
    with pytest.raises(ConfigError, match=r"weights='rows': use 'shards', 'records'"):
        Catalog(dirs, weights="rows")  # type: ignore[arg-type]
    for bad in ([1.0], [1.0, 0.0], [1.0, -2.0], [1.0, float("nan")]):
        with pytest.raises(ConfigError, match=r"give one positive finite number per directory \(2\)"):
            Catalog(dirs, weights=bad)


def test_train_val_split(dirs: list[Path]) -> None:
    split = train_val_split(dirs, val_fraction=0.2)
    assert split.train_ranges == ["0-7", "0-2"]
    assert split.val_ranges == ["8-9", "3"]
    assert split.train_weights == [8 / 11, 3 / 11]
    assert split.val_weights == [2 / 3, 1 / 3]
    by_records = train_val_split(dirs, ["2-9", "all"], val_fraction=0.05, weights="records")
    assert by_records.train_ranges == ["2-8", "0-2"] and by_records.val_ranges == ["9", "3"]
    assert by_records.train_weights == [700 / 1900, 1200 / 1900]
    assert by_records.val_weights == [100 / 500, 400 / 500]
    with pytest.raises(ConfigError, match=r"only 1 shard selected; a train/validation split needs two or more"):
        train_val_split(dirs, ["all", "2"])
    with pytest.raises(ConfigError, match=r"val_fraction=1.0: must be between 0 and 1"):
        train_val_split(dirs, val_fraction=1.0)


def test_schema_mismatch_between_dirs(dirs: list[Path], tmp_path: Path) -> None:
    (src,) = make_synthetic(tmp_path / "src", [1], 10, channels=3)
    other = tmp_path / "other"
    convert(src, other, progress=False)
    with pytest.raises(ConfigError) as err:
        Catalog([dirs[0], other])
    assert str(err.value).startswith(
        f"{other} and {dirs[0]} have different record schemas and cannot be mixed ('planes': uint8 (4, 8, 8) vs "
        f"uint8 (3, 8, 8)). Convert one of them again to the other's schema: mmpool convert SRC NEWDIR --like "
        f"{dirs[0]} with --pad FIELD (shorter last axis), --fill FIELD=VALUE (missing field) or --drop FIELD "
        "(extra field) as needed.\n"
    )
    assert "planes           uint8    (3, 8, 8)" in str(err.value)


@pytest.mark.parametrize("made", [True, False])
def test_a_missing_or_unconverted_directory_is_a_config_error(tmp_path: Path, made: bool) -> None:
    """One error type wherever a directory is given: the catalog, and so the dataset, plan and the CLI."""
    d = tmp_path / "empty"
    if made:
        d.mkdir()
    with pytest.raises(ConfigError) as err:
        Catalog([d])
    what = "has no mmpool.json" if made else "does not exist"
    assert str(err.value) == (
        f"{d} {what}: it is not a converted directory; convert its shards first: mmpool convert SRC {d}"
    )


def test_truncated_pack(tmp_path: Path) -> None:
    (src,) = make_synthetic(tmp_path / "src", [2], 50)
    dst = tmp_path / "dst"
    convert(src, dst, progress=False)
    size = read_manifest(dst).packs[0].bytes
    os.truncate(dst / "pack-00000.npy", size - 280)
    with pytest.raises(ShardError) as err:
        Catalog([dst])
    assert str(err.value) == (
        f"{dst / 'pack-00000.npy'}: pack file truncated: expected {size} bytes, found {size - 280}; "
        "restore it or convert the shards again"
    )
