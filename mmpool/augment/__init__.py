"""Augmentations by symmetry id (the dihedral group of a square board) and unpacking of bit planes."""
