"""Dihedral on KataGo-shaped rows: bit-packed planes, plain planes and per-square vectors move together; the
configurations that used to garble data silently are refused; unpack_planes equals numpy's unpacking."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mmpool import Dihedral, packed_bytes, unpack_planes
from mmpool.errors import ConfigError
from mmpool.testing.synthetic import katago_rows

PACKED = "binaryInputNCHWPacked"
KATAGO = {
    "packed_planes": {PACKED: (19, 19)},
    "planes": ["valueTargetsNCHW"],
    "square_vectors": ["policyTargetsNCMove", "qValueTargetsNCMove"],
}


def schema(rows: dict[str, np.ndarray]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    return {k: (v.dtype, v.shape[1:]) for k, v in rows.items()}


def element(board: np.ndarray, s: int) -> np.ndarray:
    """Symmetry id ``s`` on the last two axes, written independently with np.rot90: bit 2 transpose first,
    bit 0 left-right, bit 1 up-down; so 1 = fliplr, 2 = flipud, 3 = rot180, 4 = transpose, 5 = rot90 clockwise
    (transpose then fliplr), 6 = rot90 counter-clockwise, 7 = anti-transpose."""
    ax = (-2, -1)
    t = np.swapaxes(board, -1, -2)
    return [
        board,
        np.flip(board, -1),
        np.flip(board, -2),
        np.rot90(board, 2, axes=ax),
        t,
        np.rot90(board, -1, axes=ax),
        np.rot90(board, 1, axes=ax),
        np.rot90(t, 2, axes=ax),
    ][s]


def unpacked(packed: np.ndarray) -> np.ndarray:
    return np.unpackbits(packed, axis=-1, count=361).reshape(packed.shape[:-1] + (19, 19))


def vector_element(v: np.ndarray, s: int) -> np.ndarray:
    """The squares of (..., 362) moved by ``s``, pass (index 361) kept."""
    out = v.copy()
    out[..., :361] = element(v[..., :361].reshape(v.shape[:-1] + (19, 19)), s).reshape(v.shape[:-1] + (361,))
    return out


@pytest.fixture(scope="module")
def rows() -> dict[str, np.ndarray]:
    return katago_rows(64, seed=3)


def test_every_field_of_every_example_equals_an_independent_transform(rows: dict[str, np.ndarray]) -> None:
    aug = Dihedral(**KATAGO, symmetries=8)
    aug.validate(schema(rows))
    ids = np.arange(64) % 8
    np.random.default_rng(0).shuffle(ids)
    frozen = {k: v.copy() for k, v in rows.items()}
    for v in frozen.values():
        v.setflags(write=False)  # the gathered batch may be a read-only view
    out = aug.apply(frozen, ids)
    rows = frozen
    assert out[PACKED].dtype == np.uint8 and out[PACKED].shape == rows[PACKED].shape
    assert not np.unpackbits(out[PACKED], axis=-1)[..., 361:].any()  # padding bits stay zero
    for i, s in enumerate(ids.tolist()):
        want_bits = element(unpacked(rows[PACKED][i]), s)
        np.testing.assert_array_equal(out[PACKED][i], np.packbits(want_bits.reshape(22, 361), axis=-1))
        np.testing.assert_array_equal(out["valueTargetsNCHW"][i], element(rows["valueTargetsNCHW"][i], s))
        for name in KATAGO["square_vectors"]:
            np.testing.assert_array_equal(out[name][i], vector_element(rows[name][i], s), strict=True)
    for name in ("globalInputNC", "globalTargetsNC", "scoreDistrN", "metadataInputNC"):
        assert out[name] is rows[name]


def test_the_eight_transforms_are_distinct_and_form_the_group(rows: dict[str, np.ndarray]) -> None:
    aug = Dihedral(**KATAGO, symmetries=8)
    one = {k: np.repeat(v[:1], 8, axis=0) for k, v in rows.items()}
    out = aug.apply(one, np.arange(8))
    for name in (PACKED, "valueTargetsNCHW", "policyTargetsNCMove", "qValueTargetsNCMove"):
        assert len({out[name][s].tobytes() for s in range(8)}) == 8, name
    for a, b in itertools.product(range(8), repeat=2):
        twice = aug.apply(aug.apply(one, np.full(8, a)), np.full(8, b))
        direct = aug.apply(one, np.full(8, aug.compose(a, b)))
        for name in KATAGO["square_vectors"] + KATAGO["planes"] + [PACKED]:
            np.testing.assert_array_equal(twice[name], direct[name], err_msg=f"{name} {a} then {b}")
    for a in range(8):
        back = aug.apply(aug.apply(one, np.full(8, a)), np.full(8, aug.inverse[a]))
        for name in KATAGO["square_vectors"] + KATAGO["planes"] + [PACKED]:
            np.testing.assert_array_equal(back[name], one[name])
    # Ids 4..7 exist only on the square board: 1 then 4 (mirror, transpose) is 6 (rotate counter-clockwise).
    assert aug.compose(1, 4) == 6 and aug.compose(4, 1) == 5


def test_garbage_in_the_padding_bits_is_dropped(rows: dict[str, np.ndarray]) -> None:
    dirty = rows[PACKED].copy()
    dirty[..., -1] |= 0x7F  # the 7 padding bits of every plane set
    out = Dihedral(packed_planes={PACKED: (19, 19)}, planes=(), untouched=["valueTargetsNCHW"], symmetries=8)
    got = out.apply({PACKED: dirty}, np.arange(64) % 8)[PACKED]
    clean = Dihedral(packed_planes={PACKED: (19, 19)}, planes=()).apply({PACKED: rows[PACKED]}, np.arange(64) % 8)
    np.testing.assert_array_equal(got, clean[PACKED])
    assert not (got[..., -1] & 0x7F).any()


def test_packed_planes_of_a_small_odd_board() -> None:
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 2, size=(16, 3, 5, 5), dtype=np.uint8)
    packed = np.packbits(bits.reshape(16, 3, 25), axis=-1)  # 25 bits -> 4 bytes
    assert packed.shape[-1] == packed_bytes((5, 5)) == 4
    aug = Dihedral(packed_planes={"p": (5, 5)}, planes=())
    ids = np.arange(16) % 8
    out = aug.apply({"p": packed}, ids)["p"]
    for i, s in enumerate(ids.tolist()):
        np.testing.assert_array_equal(unpacked_small(out[i]), element(bits[i], s))


def unpacked_small(p: np.ndarray) -> np.ndarray:
    return np.unpackbits(p, axis=-1, count=25).reshape(p.shape[:-1] + (5, 5))


def test_fewer_symmetries_on_packed_planes(rows: dict[str, np.ndarray]) -> None:
    aug = Dihedral(**KATAGO, symmetries=4)
    out = aug.apply(rows, np.arange(64) % 4)
    for i in range(64):
        np.testing.assert_array_equal(unpacked(out[PACKED][i]), element(unpacked(rows[PACKED][i]), i % 4))


def test_refuses_configurations_that_garble_or_desynchronise(rows: dict[str, np.ndarray]) -> None:
    fields = schema(rows)
    # The old silent bug: packed bytes given as planes (a "22x46 board").
    with pytest.raises(ConfigError, match=r"'binaryInputNCHWPacked' is uint8 \(22, 46\).*packed_planes=.*\(19, 19\)"):
        Dihedral(planes=[PACKED], symmetries=4).validate(fields)
    with pytest.raises(ConfigError, match=r"'binaryInputNCHWPacked' has shape \(22, 46\).*19x19.*packed_planes"):
        Dihedral(planes=[PACKED], board=(19, 19)).validate(fields)
    # Targets transformed, inputs not: refused, naming the input field.
    with pytest.raises(ConfigError, match=r"'binaryInputNCHWPacked' uint8 \(22, 46\) look like board data.*untouched="):
        Dihedral(planes=["valueTargetsNCHW"], square_vectors=["policyTargetsNCMove", "qValueTargetsNCMove"]).validate(
            fields
        )
    # Inputs transformed, a target forgotten.
    with pytest.raises(ConfigError, match=r"'qValueTargetsNCMove' int16 \(3, 362\)"):
        Dihedral(
            packed_planes={PACKED: (19, 19)}, planes=["valueTargetsNCHW"], square_vectors=["policyTargetsNCMove"]
        ).validate(fields)
    # ... unless the user says so.
    Dihedral(
        packed_planes={PACKED: (19, 19)},
        planes=["valueTargetsNCHW"],
        square_vectors=["policyTargetsNCMove"],
        untouched=["qValueTargetsNCMove"],
    ).validate(fields)
    # Packed field of another board, or not uint8.
    with pytest.raises(ConfigError, match=r"'binaryInputNCHWPacked' is uint8 \(22, 46\).*ceil\(81/8\) = 11"):
        Dihedral(packed_planes={PACKED: (9, 9)}, planes=()).validate(fields)
    with pytest.raises(ConfigError, match=r"'valueTargetsNCHW' is int8 \(5, 19, 19\)"):
        Dihedral(packed_planes={"valueTargetsNCHW": (19, 19)}, planes=(), untouched=[PACKED]).validate(fields)
    # Planes of another board than the packed ones; vectors shorter than the board.
    with pytest.raises(ConfigError, match=r"'v' has shape \(5, 9, 9\) but the board is 19x19"):
        Dihedral(packed_planes={PACKED: (19, 19)}, planes=["v"]).validate(
            {**fields, "v": (np.dtype(np.int8), (5, 9, 9))}
        )
    with pytest.raises(ConfigError, match=r"'globalTargetsNC' has shape \(80,\).*>= 361"):
        Dihedral(**{**KATAGO, "square_vectors": ["globalTargetsNC"]}).validate(fields)
    with pytest.raises(ConfigError, match=r"board \(9, 9\) from packed_planes.*disagrees with board \(19, 19\)"):
        Dihedral(packed_planes={PACKED: (9, 9)}, board=(19, 19))
    # Names the schema lacks, all at once; a field named twice.
    with pytest.raises(ConfigError, match=r"\['ownership', 'policy'\] are not in the data"):
        Dihedral(packed_planes={PACKED: (19, 19)}, planes=["ownership"], square_vectors=["policy"]).validate(fields)
    with pytest.raises(ConfigError, match=r"\['valueTargetsNCHW'\] are named more than once"):
        Dihedral(planes=["valueTargetsNCHW"], untouched=["valueTargetsNCHW"])


def test_the_katago_configuration_validates(rows: dict[str, np.ndarray]) -> None:
    aug = Dihedral(**KATAGO)
    aug.validate(schema(rows))
    assert aug.board == (19, 19) and aug.factor == 8
    no_q = katago_rows(4, seed=1, with_q=False, global_targets=64)
    Dihedral(**{**KATAGO, "square_vectors": ["policyTargetsNCMove"]}).validate(schema(no_q))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.uint8, torch.bool])
def test_unpack_planes_equals_numpy(rows: dict[str, np.ndarray], dtype: torch.dtype) -> None:
    packed = rows[PACKED]
    got = unpack_planes(torch.from_numpy(packed), (19, 19), dtype=dtype)
    assert got.dtype == dtype and got.shape == (64, 22, 19, 19) and got.is_contiguous()
    want = np.unpackbits(packed, axis=-1, count=361).reshape(64, 22, 19, 19).astype(np.float32)
    np.testing.assert_array_equal(got.to(torch.float32).numpy(), want)


def test_unpack_planes_of_the_augmented_bytes_is_the_transformed_board(rows: dict[str, np.ndarray]) -> None:
    out = Dihedral(**KATAGO).apply(rows, np.full(64, 5))
    got = unpack_planes(torch.from_numpy(out[PACKED])).numpy()
    np.testing.assert_array_equal(got, element(unpacked(rows[PACKED]), 5).astype(np.float32))


def test_unpack_planes_errors() -> None:
    with pytest.raises(ConfigError, match=r"uint8 \(\.\.\., 46\).*got torch.int16"):
        unpack_planes(torch.zeros(2, 22, 46, dtype=torch.int16))
    with pytest.raises(ConfigError, match=r"\(\.\.\., 11\) packed planes of a 9x9 board.*\(2, 22, 46\)"):
        unpack_planes(torch.zeros(2, 22, 46, dtype=torch.uint8), board=(9, 9))
