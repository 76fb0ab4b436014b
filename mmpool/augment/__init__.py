"""Augmentations by symmetry id, and unpacking of bit planes.

- ``dihedral``: the ``Augmentation`` protocol and ``Dihedral``, the 8 symmetries of a square board applied to
  planes and move indices (also bit-packed planes, ``packed_bytes``).
- ``planes``: ``unpack_planes``, bit-packed planes to float tensors with torch (imported on first use)."""

from typing import TYPE_CHECKING

from mmpool.augment.dihedral import Augmentation, Dihedral, packed_bytes

if TYPE_CHECKING:
    from mmpool.augment.planes import unpack_planes


def __getattr__(name: str) -> object:
    if name == "unpack_planes":  # needs torch: imported when asked for
        from mmpool.augment.planes import unpack_planes

        return unpack_planes
    raise AttributeError(f"module 'mmpool.augment' has no attribute {name!r}")


__all__ = ["Augmentation", "Dihedral", "packed_bytes", "unpack_planes"]
