"""Tests for mmpool.augment.dihedral: the dihedral group, consistent plane/move transforms, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mmpool.augment.dihedral import Augmentation, Dihedral
from mmpool.errors import ConfigError


def reference(board: np.ndarray, s: int) -> np.ndarray:
    """Slow per-example reference: transpose first, then left-right, then up-down flips."""
    if s & 4:
        board = np.transpose(board, (*range(board.ndim - 2), board.ndim - 1, board.ndim - 2))
    if s & 1:
        board = np.flip(board, axis=-1)
    if s & 2:
        board = np.flip(board, axis=-2)
    return board


def distinct_board(h: int, w: int) -> np.ndarray:
    return np.arange(h * w, dtype=np.int32).reshape(1, 1, h, w)


def apply_one(aug: Dihedral, x: np.ndarray, s: int) -> np.ndarray:
    return aug.apply({"planes": x}, np.full(len(x), s))["planes"]


def test_reference_is_the_dihedral_group_by_rotation() -> None:
    # Independent check of the reference itself against np.rot90 compositions.
    b = np.arange(25).reshape(5, 5)
    expected = {np.rot90(b, k).tobytes() for k in range(4)} | {np.rot90(b.T, k).tobytes() for k in range(4)}
    assert {reference(b, s).tobytes() for s in range(8)} == expected


def test_identity_and_distinct() -> None:
    aug = Dihedral(board=(5, 5))
    assert np.array_equal(aug.square_map[0], np.arange(25))
    x = distinct_board(5, 5)
    assert np.array_equal(apply_one(aug, x, 0), x)
    assert len({tuple(m) for m in aug.square_map}) == 8
    assert len({apply_one(aug, x, s).tobytes() for s in range(8)}) == 8
    for m in aug.square_map:  # each map is a permutation of the squares
        assert sorted(m) == list(range(25))


def test_closure_and_compose_agree_with_apply() -> None:
    aug = Dihedral(board=(4, 4))
    maps = aug.square_map
    x = distinct_board(4, 4)
    for a, b in itertools.product(range(8), repeat=2):
        c = aug.compose(a, b)
        assert 0 <= c < 8
        assert np.array_equal(maps[b][maps[a]], maps[c])  # a first, then b
        twice = apply_one(aug, apply_one(aug, x, a), b)
        assert np.array_equal(twice, apply_one(aug, x, c))
    # Non-abelian: rotation and mirror do not commute, so the table is not trivially symmetric.
    assert any(aug.compose(a, b) != aug.compose(b, a) for a, b in itertools.product(range(8), repeat=2))


def test_inverse() -> None:
    aug = Dihedral(board=(3, 3))
    x = distinct_board(3, 3)
    assert aug.inverse.shape == (8,)
    for a in range(8):
        inv = int(aug.inverse[a])
        assert aug.compose(a, inv) == 0 and aug.compose(inv, a) == 0
        assert np.array_equal(apply_one(aug, apply_one(aug, x, a), inv), x)
        assert np.array_equal(aug.square_map[inv][aug.square_map[a]], np.arange(9))


def test_square_map_consistent_with_planes() -> None:
    h = w = 5
    aug = Dihedral(board=(h, w))
    x = distinct_board(h, w)  # value q sits at square q
    for s in range(8):
        y = apply_one(aug, x, s)[0, 0].ravel()  # y[q'] = q moved to q'
        for q in range(h * w):
            assert y[aug.square_map[s, q]] == q


@pytest.mark.parametrize("s", range(8))
def test_marker_follows_move(s: int) -> None:
    rng = np.random.default_rng(s)
    h = w = 7
    n = 32
    aug = Dihedral(planes=("planes",), square_indices=("move",), square_vectors=("policy",))
    planes = rng.random((n, 3, h, w)).astype(np.float32)
    move = rng.integers(0, h * w, size=n)
    planes[:, 1] = 0
    planes[np.arange(n), 1, move // w, move % w] = 1.0  # marker on the move square
    policy = rng.random((n, h * w + 1)).astype(np.float32)
    policy[np.arange(n), move] = 5.0  # policy peak on the move square
    batch = {"planes": planes, "move": move, "policy": policy}
    aug.validate({k: (v.dtype, v.shape[1:]) for k, v in batch.items()})
    out = aug.apply(batch, np.full(n, s))
    new = out["move"]
    assert out["move"].dtype == move.dtype
    assert np.array_equal(out["planes"][np.arange(n), 1, new // w, new % w], np.ones(n, np.float32))
    assert np.array_equal(out["planes"][:, 1].reshape(n, -1).sum(axis=1), np.ones(n, np.float32))
    assert np.array_equal(out["policy"][:, -1], policy[:, -1])  # pass entry unchanged
    assert np.array_equal(out["policy"][np.arange(n), new], np.full(n, 5.0, np.float32))
    # Every per-square policy value moves exactly like the plane values at that square.
    for i in range(n):
        ref = reference(policy[i, : h * w].reshape(h, w), s).ravel()
        assert np.array_equal(out["policy"][i, : h * w], ref)
    if s:  # a non-identity must actually move something
        assert not np.array_equal(out["planes"], planes)


def test_pass_and_negative_unchanged() -> None:
    aug = Dihedral(square_indices=("move",), board=(3, 3))
    move = np.array([9, -1, 9, -1, 100, 0], dtype=np.int16)
    ids = np.array([1, 2, 5, 7, 6, 3])
    out = aug.apply({"planes": np.zeros((6, 3, 3)), "move": move}, ids)["move"]
    assert out.dtype == np.int16
    assert list(out[:5]) == [9, -1, 9, -1, 100]
    assert out[5] == 8  # square 0 under 180 degrees is the opposite corner


def test_symmetries_2_and_1() -> None:
    x = distinct_board(4, 6)
    aug2 = Dihedral(symmetries=2, board=(4, 6))
    assert aug2.factor == 2
    assert np.array_equal(apply_one(aug2, x, 0), x)
    assert np.array_equal(apply_one(aug2, x, 1), x[..., ::-1])
    aug1 = Dihedral(symmetries=1)
    assert aug1.factor == 1
    assert np.array_equal(apply_one(aug1, x, 0), x)
    with pytest.raises(ConfigError):
        apply_one(aug1, x, 1)


def test_symmetries_4_non_square() -> None:
    aug = Dihedral(symmetries=4)
    aug.validate({"planes": (np.dtype(np.float32), (2, 6, 7))})
    assert aug.board == (6, 7) and aug.square_map.shape == (4, 42)
    x = distinct_board(6, 7)
    outs = [apply_one(aug, x, s) for s in range(4)]
    assert len({o.tobytes() for o in outs}) == 4
    for s, o in enumerate(outs):
        assert np.array_equal(o, reference(x, s))
    assert all(aug.compose(a, b) < 4 for a in range(4) for b in range(4))


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="6x7.*maximum.*4"):
        Dihedral(symmetries=8, board=(6, 7))
    aug = Dihedral()
    with pytest.raises(ConfigError, match="6x7"):
        aug.validate({"planes": (np.dtype(np.float32), (3, 6, 7))})
    with pytest.raises(ConfigError):
        Dihedral(symmetries=3)
    with pytest.raises(ConfigError):
        Dihedral(planes=())
    with pytest.raises(ConfigError, match="'policy'.*planes"):
        Dihedral(square_vectors=("policy",)).validate({"planes": (np.dtype(np.float32), (9, 9))})
    with pytest.raises(ConfigError, match="'aux'"):
        Dihedral(planes=("planes", "aux")).validate(
            {"planes": (np.dtype(np.float32), (2, 9, 9)), "aux": (np.dtype(np.float32), (2, 8, 8))}
        )
    with pytest.raises(ConfigError, match="'move'"):
        Dihedral(square_indices=("move",)).validate(
            {"planes": (np.dtype(np.float32), (9, 9)), "move": (np.dtype(np.float32), ())}
        )
    with pytest.raises(ConfigError, match="'policy'"):
        Dihedral(square_vectors=("policy",)).validate(
            {"planes": (np.dtype(np.float32), (9, 9)), "policy": (np.dtype(np.float32), (80,))}
        )
    with pytest.raises(ConfigError):
        Dihedral(board=(3, 3)).apply({"planes": np.zeros((2, 3, 3))}, np.array([0, 8]))


def test_read_only_inputs_and_mixed_ids_match_reference() -> None:
    rng = np.random.default_rng(0)
    n, h, w = 40, 5, 5
    planes = rng.integers(0, 100, size=(n, 2, h, w)).astype(np.int8)
    move = rng.integers(-1, h * w + 1, size=n)
    policy = rng.random((n, h * w + 1))
    ids = rng.integers(0, 8, size=n)
    keep = rng.random(n)  # a field the augmentation does not name
    batch = {"planes": planes, "move": move, "policy": policy, "keep": keep}
    copies = {k: v.copy() for k, v in batch.items()}
    for v in batch.values():
        v.setflags(write=False)
    aug = Dihedral(square_indices=("move",), square_vectors=("policy",))
    out = aug.apply(batch, ids)
    for k, v in batch.items():
        assert np.array_equal(v, copies[k])
    assert out["keep"] is keep
    assert out["planes"].dtype == np.int8 and out["planes"].flags.c_contiguous
    assert out["policy"].dtype == policy.dtype
    for i in range(n):
        s = int(ids[i])
        assert np.array_equal(out["planes"][i], reference(planes[i], s))
        assert np.array_equal(out["policy"][i, :-1], reference(policy[i, :-1].reshape(h, w), s).ravel())
        assert out["policy"][i, -1] == policy[i, -1]
        if 0 <= move[i] < h * w:
            marker = np.zeros((h, w))
            marker[divmod(int(move[i]), w)] = 1
            assert reference(marker, s).ravel()[out["move"][i]] == 1
        else:
            assert out["move"][i] == move[i]
    assert len(np.unique(ids)) > 4  # the batch really mixed ids


def test_transpose_output_contiguous() -> None:
    aug = Dihedral(board=(3, 3))
    out = apply_one(aug, distinct_board(3, 3), 4)
    assert out.flags.c_contiguous
    assert np.array_equal(out[0, 0], np.arange(9).reshape(3, 3).T)


def test_protocol_isinstance() -> None:
    class Flip:
        factor = 2

        def apply(self, batch: dict[str, np.ndarray], symmetry_ids: np.ndarray) -> dict[str, np.ndarray]:
            return dict(batch)

    class NotAug:
        factor = 2

    assert isinstance(Flip(), Augmentation)
    assert isinstance(Dihedral(), Augmentation)
    assert not isinstance(NotAug(), Augmentation)
