"""Bit-packed board planes to tensors, on the tensor's own device (torch only, no numpy).

A trainer can ship KataGo's packed inputs (uint8 ``(N, C, ceil(H*W/8))``, 8x smaller than the unpacked bytes)
to the GPU and unpack them there.
"""

from __future__ import annotations

import torch

from mmpool.errors import ConfigError

__all__ = ["unpack_planes"]

_BITS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _bit_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(256, 8) table: row v holds the 8 bits of byte v, most significant first, as ``dtype``."""
    key = (device, dtype)
    if key not in _BITS:
        shifts = torch.arange(7, -1, -1, device=device)
        values = torch.arange(256, device=device)
        _BITS[key] = ((values[:, None] >> shifts) & 1).to(dtype)
    return _BITS[key]


def unpack_planes(
    packed: torch.Tensor, board: tuple[int, int] = (19, 19), dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Unpack big-endian bit-packed planes ``(N, C, ceil(H*W/8))`` uint8 into ``(N, C, H, W)`` of ``dtype``.

    The layout of KataGo's ``binaryInputNCHWPacked`` (and of ``Dihedral(packed_planes=...)``'s output): each
    plane's H*W bits in row-major order, most significant bit first, padding bits at the end ignored. Equal to
    ``np.unpackbits(packed, axis=-1, count=H*W).reshape(N, C, H, W).astype(dtype)``; runs on ``packed.device``.
    """
    h, w = int(board[0]), int(board[1])
    nbytes = -(-h * w // 8)
    if packed.dtype != torch.uint8 or packed.dim() < 1 or packed.shape[-1] != nbytes:
        raise ConfigError(
            f"unpack_planes: expected uint8 (..., {nbytes}) packed planes of a {h}x{w} board, got "
            f"{packed.dtype} {tuple(packed.shape)}; pass board=(H, W) of the data"
        )
    # One lookup per byte writes its 8 bits as dtype at once (no uint8 intermediate to convert).
    bits = torch.nn.functional.embedding(packed.long(), _bit_table(packed.device, dtype))  # (..., nbytes, 8)
    bits = bits.reshape(*packed.shape[:-1], nbytes * 8)
    if nbytes * 8 != h * w:
        bits = bits[..., : h * w].contiguous()  # drop the padding bits; a model wants a dense (N, C, H, W)
    return bits.reshape(*packed.shape[:-1], h, w)
