"""Tests for mmpool.augment.planes on its own: unpack_planes against np.unpackbits on boards of every padding
(none, one bit, seven bits), every byte value, any leading dimensions, strided input, garbage in the padding bits,
several output dtypes, and its errors.

KataGo's 19x19 planes, their dihedral transforms and the first errors are tested in test_augment_packed.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmpool.augment.planes import unpack_planes
from mmpool.errors import ConfigError


def reference(packed: np.ndarray, h: int, w: int) -> np.ndarray:
    """The planes as 0/1 uint8, unpacked by numpy: big-endian bits, row-major squares, padding bits dropped."""
    bits = np.unpackbits(packed, axis=-1, count=h * w, bitorder="big")
    return bits.reshape(packed.shape[:-1] + (h, w))


def random_packed(shape, h, w, seed=0) -> np.ndarray:
    """Random bytes, the padding bits included (garbage there must not show)."""
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, -(-h * w // 8)), dtype=np.uint8)


def test_every_byte_value_unpacks_to_its_bits_most_significant_first() -> None:
    # A 2x4 board is one byte: byte v unpacks to its 8 bits, the most significant bit on square (0, 0).
    packed = torch.arange(256, dtype=torch.int32).to(torch.uint8).reshape(256, 1, 1)
    for dtype in (torch.float32, torch.float64, torch.int64, torch.int32, torch.uint8):
        got = unpack_planes(packed, board=(2, 4), dtype=dtype)
        assert got.dtype == dtype and got.shape == (256, 1, 2, 4)
        want = np.array([[int(b) for b in f"{v:08b}"] for v in range(256)]).reshape(256, 1, 2, 4)
        np.testing.assert_array_equal(got.to(torch.int64).numpy(), want)
    one = unpack_planes(torch.tensor([[0b10000001]], dtype=torch.uint8), board=(2, 4))
    assert one.tolist() == [[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]


@pytest.mark.parametrize(
    "board",
    [(8, 8), (3, 5), (7, 9), (9, 9), (1, 1), (1, 17), (13, 13), (4, 4)],
    ids=lambda b: f"{b[0]}x{b[1]}",
)
def test_equals_numpy_on_boards_of_every_padding(board) -> None:
    """8x8 and 4x4 fill their bytes; 3x5 leaves 1 padding bit, 7x9 one, 9x9 seven, 1x1 seven, 1x17 seven, 13x13
    seven: every result equals np.unpackbits of the same bytes (random, padding bits included)."""
    h, w = board
    packed = random_packed((6, 5), h, w, seed=h * 100 + w)
    got = unpack_planes(torch.from_numpy(packed), board=board)
    assert got.dtype == torch.float32 and got.shape == (6, 5, h, w) and got.is_contiguous()
    np.testing.assert_array_equal(got.numpy(), reference(packed, h, w).astype(np.float32))


def test_the_padding_bits_never_show() -> None:
    # 3x5 = 15 squares in 2 bytes: bit 15 is padding. All squares clear, the padding bit set: all zero; and the
    # other way round: all squares set, padding clear, unpack to all ones.
    pad_only = torch.tensor([[[0x00, 0x01]]], dtype=torch.uint8)
    assert unpack_planes(pad_only, board=(3, 5)).sum().item() == 0
    squares_only = torch.tensor([[[0xFF, 0xFE]]], dtype=torch.uint8)
    assert unpack_planes(squares_only, board=(3, 5)).tolist() == [[[[1.0] * 5] * 3]]
    # 19x19 with every padding bit set in every plane: equal to the planes with clean padding.
    clean = random_packed((4, 22), 19, 19, seed=1)
    clean[..., -1] &= 0x80
    dirty = clean.copy()
    dirty[..., -1] |= 0x7F
    np.testing.assert_array_equal(
        unpack_planes(torch.from_numpy(dirty)).numpy(), unpack_planes(torch.from_numpy(clean)).numpy()
    )


@pytest.mark.parametrize("lead", [(), (3,), (2, 3, 4), (0, 5), (1, 1, 1, 2)])
def test_any_leading_dimensions(lead) -> None:
    packed = random_packed(lead, 5, 5, seed=len(lead))
    got = unpack_planes(torch.from_numpy(packed), board=(5, 5), dtype=torch.int64)
    assert got.shape == (*lead, 5, 5) and got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), reference(packed, 5, 5).astype(np.int64))


def test_strided_and_sliced_input() -> None:
    packed = random_packed((8, 10), 9, 9, seed=3)
    t = torch.from_numpy(packed)
    for view in (t[::2], t[:, 1::3], t.transpose(0, 1), t[3:5, 7]):
        assert unpack_planes(view, board=(9, 9)).shape == (*view.shape[:-1], 9, 9)
        np.testing.assert_array_equal(unpack_planes(view, board=(9, 9)).numpy(), reference(view.numpy(), 9, 9))
    assert t.numpy().tobytes() == packed.tobytes()  # the input is not written


def test_bool_and_half_outputs_equal_numpy() -> None:
    packed = random_packed((3, 4), 6, 7, seed=4)
    want = reference(packed, 6, 7)
    got_bool = unpack_planes(torch.from_numpy(packed), board=(6, 7), dtype=torch.bool)
    assert got_bool.dtype == torch.bool
    np.testing.assert_array_equal(got_bool.numpy(), want.astype(bool))
    got_half = unpack_planes(torch.from_numpy(packed), board=(6, 7), dtype=torch.float16)
    np.testing.assert_array_equal(got_half.numpy(), want.astype(np.float16))
    # Alternating dtypes on one device: each call gets its own dtype's values.
    again = unpack_planes(torch.from_numpy(packed), board=(6, 7), dtype=torch.int32)
    assert again.dtype == torch.int32
    np.testing.assert_array_equal(again.numpy(), want.astype(np.int32))


@pytest.mark.parametrize(
    ("packed", "board", "match"),
    [
        (torch.zeros(2, 3, 8, dtype=torch.int8), (8, 8), r"expected uint8 \(\.\.\., 8\) packed planes of a 8x8 board, "
         r"got torch\.int8 \(2, 3, 8\); pass board=\(H, W\) of the data"),
        (torch.zeros(2, 3, 8, dtype=torch.float32), (8, 8), r"expected uint8 \(\.\.\., 8\) packed planes of a 8x8 "
         r"board, got torch\.float32 \(2, 3, 8\)"),
        (torch.tensor(7, dtype=torch.uint8), (2, 4), r"expected uint8 \(\.\.\., 1\) packed planes of a 2x4 board, "
         r"got torch\.uint8 \(\)"),
        (torch.zeros(4, 7, dtype=torch.uint8), (7, 9), r"expected uint8 \(\.\.\., 8\) packed planes of a 7x9 board, "
         r"got torch\.uint8 \(4, 7\)"),
        (torch.zeros(4, 9, dtype=torch.uint8), (8, 8), r"expected uint8 \(\.\.\., 8\) packed planes of a 8x8 board, "
         r"got torch\.uint8 \(4, 9\)"),
        (torch.zeros(4, 46, dtype=torch.uint8), (13, 13), r"expected uint8 \(\.\.\., 22\) packed planes of a 13x13"),
    ],
)  # fmt: skip
def test_wrong_bytes_or_board_are_config_errors_naming_the_board(packed, board, match) -> None:
    with pytest.raises(ConfigError, match=r"^unpack_planes: " + match):
        unpack_planes(packed, board=board)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_unpacks_on_the_tensors_own_device() -> None:
    packed = random_packed((16, 22), 19, 19, seed=5)
    got = unpack_planes(torch.from_numpy(packed).cuda(), dtype=torch.bfloat16)
    assert got.device == torch.device("cuda", torch.cuda.current_device()) and got.dtype == torch.bfloat16
    np.testing.assert_array_equal(got.float().cpu().numpy(), reference(packed, 19, 19).astype(np.float32))
