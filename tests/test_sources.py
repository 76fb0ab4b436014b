"""Tests of mmpool.convert.sources: which files are inputs, their order, and the shard number each one gets."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mmpool.convert.legacy import SHARD_SUFFIXES
from mmpool.convert.sources import last_integer, list_files, natural_key, number_files, order_names
from mmpool.errors import ConfigError

SUFFIXES = set(SHARD_SUFFIXES)


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("shard_00042.npz", 42),
        ("gen3_part_17.h5", 17),
        ("7.pt", 7),
        ("run12_000.npy", 0),
        ("x1y22z.hdf5", 22),
        ("data3_1.npz", 1),
        ("03BE8F44D1BC0BFA.npz", 0),
        ("sub/dir_9/latest.npz", None),
    ],
)
def test_last_integer(name: str, number: int | None) -> None:
    assert last_integer(name) == number


def test_natural_key() -> None:
    names = ["data10_0.npz", "data2_1.npz", "data2_0.npz", "a/b.npz", "data1_0.npz"]
    assert sorted(names, key=natural_key) == ["a/b.npz", "data1_0.npz", "data2_0.npz", "data2_1.npz", "data10_0.npz"]


def test_list_files_sorted_and_filtered(tmp_path: Path) -> None:
    for name in ["b_10.npz", "a_2.h5", "c_1.pt", "d_3.npy", "e_4.pth", "f_5.hdf5"]:
        (tmp_path / name).write_bytes(b"x")
    # Ignored: other suffixes, hidden files (even with a shard suffix), directories without --recursive.
    (tmp_path / "notes_1.txt").write_text("hi")
    (tmp_path / ".hidden_2.npz").write_bytes(b"x")
    (tmp_path / "sub_6.npz").mkdir()
    (tmp_path / "sub_6.npz" / "inner_7.npz").write_bytes(b"x")
    assert list_files(tmp_path, SUFFIXES) == ["a_2.h5", "b_10.npz", "c_1.pt", "d_3.npy", "e_4.pth", "f_5.hdf5"]
    assert "sub_6.npz/inner_7.npz" in list_files(tmp_path, SUFFIXES, recursive=True)


def test_list_files_nested_needs_recursive(tmp_path: Path) -> None:
    tdata = tmp_path / "selfplay" / "b18-s1" / "tdata"
    tdata.mkdir(parents=True)
    (tdata / "03BE8F44D1BC0BFA.npz").write_bytes(b"x")
    (tmp_path / "selfplay" / ".hidden").mkdir()
    (tmp_path / "selfplay" / ".hidden" / "1.npz").write_bytes(b"x")
    with pytest.raises(ConfigError) as exc:
        list_files(tmp_path, SUFFIXES)
    assert str(exc.value) == (
        f"no shard files in {str(tmp_path)!r} itself, but its subdirectories hold 1 "
        "(e.g. 'selfplay/b18-s1/tdata/03BE8F44D1BC0BFA.npz'): add --recursive (recursive=True) to convert them"
    )
    assert list_files(tmp_path, SUFFIXES, recursive=True) == ["selfplay/b18-s1/tdata/03BE8F44D1BC0BFA.npz"]
    # A converted directory inside the source is never read as input.
    (tmp_path / "converted").mkdir()
    (tmp_path / "converted" / "pack-00000.npy").write_bytes(b"x")
    files = list_files(tmp_path, SUFFIXES, recursive=True, exclude=tmp_path / "converted")
    assert files == ["selfplay/b18-s1/tdata/03BE8F44D1BC0BFA.npz"]


def test_list_files_empty_missing_not_dir(tmp_path: Path) -> None:
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(ConfigError) as exc:
        list_files(tmp_path, SUFFIXES)
    assert str(tmp_path) in str(exc.value)
    for suffix in SHARD_SUFFIXES:
        assert suffix in str(exc.value)
    with pytest.raises(ConfigError, match="does not exist"):
        list_files(tmp_path / "nope", SUFFIXES)
    with pytest.raises(ConfigError, match="not a directory"):
        list_files(tmp_path / "other.txt", SUFFIXES)


def test_order_names(tmp_path: Path) -> None:
    names = ["b_2.npz", "a_10.npz", "c_1.npz", "a_9.npz"]
    for k, name in enumerate(["c_1.npz", "a_10.npz", "b_2.npz", "a_9.npz"]):
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, ns=(10**18 + k, 10**18 + k))
    assert order_names(names, "natural", tmp_path) == ["a_9.npz", "a_10.npz", "b_2.npz", "c_1.npz"]
    assert order_names(names, "name", tmp_path) == ["a_10.npz", "a_9.npz", "b_2.npz", "c_1.npz"]
    assert order_names(names, "number", tmp_path) == ["c_1.npz", "b_2.npz", "a_9.npz", "a_10.npz"]
    assert order_names(names, "mtime", tmp_path) == ["c_1.npz", "a_10.npz", "b_2.npz", "a_9.npz"]
    with pytest.raises(ConfigError, match="order 'size': use one of natural, name, mtime, number"):
        order_names(names, "size", tmp_path)


def test_number_files_by_name(tmp_path: Path) -> None:
    numbers, rule = number_files(["shard_3.npz", "shard_10.npz"], {}, None, "natural", tmp_path)
    assert (numbers, rule) == ({"shard_3.npz": 3, "shard_10.npz": 10}, "last-integer")
    numbers, rule = number_files(
        ["shard_3.npz", "shard_4.npz"], {"shard_3.npz": 3}, "last-integer", "natural", tmp_path
    )
    assert (numbers, rule) == ({"shard_4.npz": 4}, "last-integer")


def test_number_files_katago_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = ["data10_0.npz", "data2_0.npz", "data2_1.npz", "data0_0.npz"]
    with caplog.at_level(logging.INFO, logger="mmpool"):
        numbers, rule = number_files(names, {}, None, "natural", tmp_path)
    assert rule == "order:natural"
    assert numbers == {"data0_0.npz": 0, "data2_0.npz": 1, "data2_1.npz": 2, "data10_0.npz": 3}
    assert any("'data10_0.npz' and 'data2_0.npz' both end in 0" in r.getMessage() for r in caplog.records)
    # A rerun: known files keep their numbers, new ones follow in the chosen order.
    more, rule = number_files([*names, "data1_0.npz", "data11_0.npz"], numbers, rule, "natural", tmp_path)
    assert (more, rule) == ({"data1_0.npz": 4, "data11_0.npz": 5}, "order:natural")


def test_number_files_switches_to_order_when_names_collide(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # One hex name alone numbers itself; the second collides with it: new files are numbered after it.
    known = {"03BE8F44D1BC0BFA.npz": 0}
    with caplog.at_level(logging.WARNING, logger="mmpool"):
        numbers, rule = number_files(
            ["03BE8F44D1BC0BFA.npz", "F1A2B3C4D5E6F7A0.npz", "0000000000000001.npz"],
            known,
            "last-integer",
            "natural",
            tmp_path,
        )
    assert rule == "order:natural"
    # Natural order: a name's leading text sorts before a leading digit run.
    assert numbers == {"F1A2B3C4D5E6F7A0.npz": 1, "0000000000000001.npz": 2}
    assert any("a number already converted" in r.getMessage() for r in caplog.records)
