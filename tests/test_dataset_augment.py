"""Augmentation through the dataset: every (position, symmetry) exactly once per epoch, transformed consistently.

The symmetry of a yielded example is identified without trusting mmpool: its planes are compared with the 8
rotations and reflections of the source position computed here with numpy (the synthetic planes are random, so
each transform of a position is different; ties are still handled by a matching).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import Data, collect, stack
from torch.utils.data import DataLoader

from mmpool.augment.dihedral import Dihedral
from mmpool.stream.dataset import StreamingMixedShardDataset
from mmpool.testing.synthetic import PASS_MOVE


def group(x: np.ndarray) -> np.ndarray:
    """The 8 elements of the dihedral group applied to the last two axes of ``x``: shape (8,) + x.shape.

    Element j < 4 rotates by j quarter turns; element j >= 4 transposes first, then rotates by j - 4.
    """
    t = np.swapaxes(x, -1, -2)
    return np.stack(
        [np.rot90(x, j, axes=(-2, -1)) for j in range(4)] + [np.rot90(t, j, axes=(-2, -1)) for j in range(4)]
    )


def element_of_id(aug: Dihedral) -> dict[int, int]:
    """Which group element each of the augmentation's symmetry ids is (found on a random board)."""
    board = np.random.default_rng(0).integers(0, 255, size=(1, 1, 8, 8)).astype(np.uint8)
    ref = group(board[0])
    planes_only = Dihedral(symmetries=aug.factor)
    out = {}
    for s in range(aug.factor):
        y = planes_only.apply({"planes": board}, np.array([s]))["planes"][0]
        matches = [j for j in range(8) if np.array_equal(ref[j], y)]
        assert len(matches) == 1, (s, matches)
        out[s] = matches[0]
    assert len(set(out.values())) == aug.factor  # distinct ids are distinct transforms
    return out


def candidates(got: dict[str, np.ndarray], data: Data) -> np.ndarray:
    """(N, 8) bool: which group elements turn the source planes of example i into its yielded planes."""
    src = data.source.records(got["id"])["planes"]
    return np.stack([np.all(t == got["planes"], axis=(1, 2, 3)) for t in group(src)], axis=1)


def match(cands: np.ndarray) -> np.ndarray | None:
    """Give each row a distinct element among its candidates (augmenting paths); None if impossible."""
    owner: dict[int, int] = {}

    def place(i: int, seen: set[int]) -> bool:
        for j in np.flatnonzero(cands[i]).tolist():
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or place(owner[j], seen):
                owner[j] = i
                return True
        return False

    if not all(place(i, set()) for i in range(len(cands))):
        return None
    out = np.empty(len(cands), dtype=np.int64)
    for j, i in owner.items():
        out[i] = j
    return out


def identify(got: dict[str, np.ndarray], data: Data, factor: int, allowed: set[int]) -> np.ndarray:
    """The group element of every yielded example; asserts each position shows every allowed element once."""
    ids = got["id"]
    uniq, counts = np.unique(ids, return_counts=True)
    assert (counts == factor).all(), "every position must come once per symmetry"
    cands = candidates(got, data)
    cands[:, sorted(set(range(8)) - allowed)] = False
    element = np.full(len(ids), -1)
    order = np.argsort(ids, kind="stable")
    for start in range(0, len(ids), factor):
        rows = order[start : start + factor]
        assert len(set(ids[rows].tolist())) == 1
        m = match(cands[rows])
        assert m is not None, f"position {ids[rows[0]]}: no assignment of distinct symmetries"
        element[rows] = m
    return element


# SQUARE[j, q]: where square q goes under group element j, found by moving a one-hot board.
SQUARE = np.stack(
    [group(np.eye(64, dtype=np.uint8)[q].reshape(8, 8)).reshape(8, 64).argmax(axis=1) for q in range(64)], axis=1
)


def move_after(element: np.ndarray, move: np.ndarray) -> np.ndarray:
    """Where each move square goes under each example's group element; pass (and anything off the board) stays."""
    inside = (move >= 0) & (move < 64)
    return np.where(inside, SQUARE[element, np.where(inside, move, 0)], move).astype(move.dtype)


def make(data: Data, **kw) -> StreamingMixedShardDataset:
    kw.setdefault("random_seed", 0)
    kw.setdefault("pool_size", 2000)
    kw.setdefault("shard_ranges", ["0-1", "0"])  # 1500 positions
    return StreamingMixedShardDataset(data.dirs, **kw)


@pytest.mark.parametrize("workers", [0, 2])
def test_dihedral_shows_every_position_under_every_symmetry_once(two_dirs: Data, workers: int) -> None:
    aug = Dihedral(square_indices=["move"])
    ds = make(two_dirs, augmentation=aug, batch_size=128)
    assert ds.factor == 8
    got = collect(DataLoader(ds, batch_size=None, num_workers=workers) if workers else ds)
    assert len(got["id"]) == 1500 * 8
    element = identify(got, two_dirs, 8, set(range(8)))
    # Moves follow the planes: the same square map, pass unchanged.
    src = two_dirs.source.records(got["id"])
    np.testing.assert_array_equal(got["move"], move_after(element, src["move"]), strict=True)
    assert np.array_equal(got["move"][src["move"] == PASS_MOVE], src["move"][src["move"] == PASS_MOVE])
    # Fields the augmentation does not touch pass through unchanged.
    np.testing.assert_array_equal(got["wdl"], src["wdl"], strict=True)
    # And everything equals Dihedral applied to the source record with the identified symmetry.
    sym_of_element = {j: s for s, j in element_of_id(aug).items()}
    want = aug.apply(src, np.array([sym_of_element[j] for j in element.tolist()]))
    for k in got:
        np.testing.assert_array_equal(got[k], want[k], strict=True)


def test_dihedral_in_single_example_mode(two_dirs: Data) -> None:
    ds = make(two_dirs, augmentation=Dihedral(square_indices=["move"]), shard_ranges=["0", "0"], chunk_size=500)
    got = stack(ds)
    assert len(got["id"]) == 1000 * 8
    element = identify(got, two_dirs, 8, set(range(8)))
    src = two_dirs.source.records(got["id"])
    np.testing.assert_array_equal(got["move"], move_after(element, src["move"]), strict=True)


@pytest.mark.parametrize("symmetries", [2, 4])
def test_fewer_symmetries_use_the_nested_subgroup(two_dirs: Data, symmetries: int) -> None:
    aug = Dihedral(square_indices=["move"], symmetries=symmetries)
    ds = make(two_dirs, augmentation=aug, batch_size=100)
    got = collect(ds)
    assert len(got["id"]) == 1500 * symmetries
    allowed = set(element_of_id(aug).values())
    board = np.arange(64).reshape(8, 8)
    mirror = [j for j in range(8) if np.array_equal(group(board)[j], board[:, ::-1])][0]
    if symmetries == 2:
        assert allowed == {0, mirror}  # identity and the left-right mirror
    else:
        assert len(allowed) == 4 and {0, mirror} <= allowed
    element = identify(got, two_dirs, symmetries, allowed)
    src = two_dirs.source.records(got["id"])
    np.testing.assert_array_equal(got["move"], move_after(element, src["move"]), strict=True)


def test_one_symmetry_is_the_identity(two_dirs: Data) -> None:
    ds = make(two_dirs, augmentation=Dihedral(square_indices=["move"], symmetries=1), batch_size=100)
    assert ds.factor == 1
    got = collect(ds)
    assert len(got["id"]) == len(np.unique(got["id"])) == 1500
    two_dirs.source.assert_matches(got)


def test_enable_augmentation_false_shows_each_position_once_unchanged(two_dirs: Data) -> None:
    ds = make(two_dirs, augmentation=Dihedral(square_indices=["move"]), enable_augmentation=False, batch_size=100)
    assert ds.factor == 1
    got = collect(ds)
    assert len(got["id"]) == len(np.unique(got["id"])) == 1500
    two_dirs.source.assert_matches(got)


class AddSymmetryId:
    """A custom augmentation: three 'symmetries' that add the id to the move and report it in a new field."""

    factor = 3

    def apply(self, batch: dict[str, np.ndarray], symmetry_ids: np.ndarray) -> dict[str, np.ndarray]:
        out = dict(batch)
        out["move"] = (batch["move"] + 1000 * symmetry_ids).astype(np.int16)
        out["sym"] = symmetry_ids.astype(np.int64)
        return out


@pytest.mark.parametrize("workers", [0, 2])
def test_a_custom_augmentation_sees_each_position_once_per_id(two_dirs: Data, workers: int) -> None:
    ds = make(two_dirs, augmentation=AddSymmetryId(), batch_size=64)
    assert ds.factor == 3
    got = collect(DataLoader(ds, batch_size=None, num_workers=workers) if workers else ds)
    pairs = got["id"] * 3 + got["sym"]
    assert len(pairs) == len(np.unique(pairs)) == 1500 * 3
    assert set(got["sym"].tolist()) == {0, 1, 2}
    src = two_dirs.source.records(got["id"])
    np.testing.assert_array_equal(got["move"], (src["move"] + 1000 * got["sym"]).astype(np.int16), strict=True)
    for k in ("planes", "wdl"):
        np.testing.assert_array_equal(got[k], src[k], strict=True)


@pytest.mark.parametrize("cap,expect", [(700, 700), (10**6, 1500)])
def test_max_examples_unaugmented_counts_positions_not_examples(two_dirs: Data, cap: int, expect: int) -> None:
    ds = make(two_dirs, augmentation=Dihedral(square_indices=["move"]), max_examples_unaugmented=cap, batch_size=100)
    got = collect(ds)
    assert len(got["id"]) == expect * 8
    identify(got, two_dirs, 8, set(range(8)))


def test_a_pool_smaller_than_the_factor_still_shows_everything(two_dirs: Data) -> None:
    ds = make(
        two_dirs,
        augmentation=Dihedral(square_indices=["move"]),
        pool_size=4,
        refill_threshold=1,
        max_examples_unaugmented=60,
        batch_size=16,
    )
    got = collect(ds)
    assert len(got["id"]) == 60 * 8
    identify(got, two_dirs, 8, set(range(8)))


def test_each_epoch_shows_every_symmetry_once_in_a_new_order(two_dirs: Data) -> None:
    ds = make(two_dirs, augmentation=AddSymmetryId(), batch_size=100, num_epochs=2)
    got = collect(ds)
    n = 1500 * 3
    one, two = (got["id"][:n] * 3 + got["sym"][:n]), (got["id"][n:] * 3 + got["sym"][n:])
    assert len(np.unique(one)) == len(np.unique(two)) == n
    assert np.array_equal(np.sort(one), np.sort(two)) and not np.array_equal(one, two)
