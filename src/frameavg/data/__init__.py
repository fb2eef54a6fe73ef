"""Data layer: readers -> ``Data`` (PyG) -> neighbour-list transform -> ``Batch``."""

from frameavg.data.atomic_data import atoms_to_data
from frameavg.data.lmdb_store import write_lmdb
from frameavg.data.readers import available_formats, detect_format, iter_structures, read_structures

__all__ = ["atoms_to_data", "available_formats", "detect_format", "iter_structures", "read_structures", "write_lmdb"]
