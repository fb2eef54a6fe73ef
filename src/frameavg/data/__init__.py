"""Data layer: readers -> ``Data`` (PyG) -> neighbour-list transform -> ``Batch``."""

from frameavg.data.atomic_data import atoms_to_data

__all__ = ["atoms_to_data"]
