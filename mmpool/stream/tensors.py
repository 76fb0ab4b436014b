"""Batches as torch tensors: the last step of the batch path, and how a DataLoader worker hands a batch over."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


def to_tensors(fields: dict[str, Any], one_buffer: bool) -> Batch:
    """The batch's fields as tensors: views of one buffer (``one_buffer``, in DataLoader workers, see
    ``as_tensors``), else each numpy field wrapped without a copy where it is contiguous."""
    if one_buffer:
        return as_tensors(fields)
    return {
        k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v)) for k, v in fields.items()
    }


def as_tensors(fields: dict[str, Any]) -> Batch:
    """Contiguous copies of the fields as torch tensors that are views of ONE buffer (used in DataLoader workers).

    A worker hands each storage to the main process through a file-descriptor handshake of its own, the largest
    per-batch cost there: one storage per batch instead of one per field makes a worker several times faster.
    In the main process the plain per-field copies are cheaper (fewer torch calls).
    """
    arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in fields.items()}
    offsets, size = [], 0
    for v in arrays.values():
        size = -(-size // 64) * 64  # every field starts 64-byte aligned
        offsets.append(size)
        size += v.nbytes
    raw = np.empty(-(-size // 64) * 64, dtype=np.uint8)
    buf = torch.from_numpy(raw)
    typed: dict[torch.dtype, torch.Tensor] = {}  # the whole buffer viewed as each dtype needed
    out = {}
    for (name, v), at in zip(arrays.items(), offsets):
        np.copyto(raw[at : at + v.nbytes].view(v.dtype).reshape(v.shape), v)
        dtype = _torch_dtype(v.dtype)
        whole = typed.get(dtype)
        if whole is None:
            whole = typed[dtype] = buf.view(dtype)
        out[name] = whole.as_strided(v.shape, _contiguous_strides(v.shape), at // v.itemsize)
    return out


def _contiguous_strides(shape: tuple[int, ...]) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return strides[::-1]


_TORCH_DTYPES: dict[np.dtype, torch.dtype] = {}


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    found = _TORCH_DTYPES.get(dtype)
    if found is None:
        found = _TORCH_DTYPES[dtype] = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    return found
