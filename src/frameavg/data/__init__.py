"""Data layer: readers -> ``Data`` (PyG) -> neighbour-list transform -> ``Batch``."""

from frameavg.data.atomic_data import atoms_to_data
from frameavg.data.datasets import LmdbDataset, StructureDataset, open_dataset
from frameavg.data.lmdb_store import write_lmdb
from frameavg.data.readers import available_formats, detect_format, iter_structures, read_structures
from frameavg.data.splits import build_datasets, index_split, load_index_file, random_split

__all__ = [
    "LmdbDataset",
    "StructureDataset",
    "atoms_to_data",
    "available_formats",
    "build_datasets",
    "detect_format",
    "index_split",
    "iter_structures",
    "load_index_file",
    "open_dataset",
    "random_split",
    "read_structures",
    "write_lmdb",
]
