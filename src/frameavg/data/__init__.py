"""Data layer: readers -> ``Data`` (PyG) -> neighbour-list transform -> ``Batch``.

Names are imported on first use (PEP 562), so ``import frameavg.data`` (and the command line's
start-up) does not pay for torch and PyG until a reader or dataset is actually used.
"""

from __future__ import annotations

from frameavg.lazy import lazy_namespace

_EXPORTS = {
    "LmdbDataset": "frameavg.data.datasets",
    "StructureDataset": "frameavg.data.datasets",
    "open_dataset": "frameavg.data.datasets",
    "atoms_to_data": "frameavg.data.atomic_data",
    "write_lmdb": "frameavg.data.lmdb_store",
    "available_formats": "frameavg.data.readers",
    "detect_format": "frameavg.data.readers",
    "iter_structures": "frameavg.data.readers",
    "read_structures": "frameavg.data.readers",
    "build_datasets": "frameavg.data.splits",
    "index_split": "frameavg.data.splits",
    "load_index_file": "frameavg.data.splits",
    "random_split": "frameavg.data.splits",
}

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS)
