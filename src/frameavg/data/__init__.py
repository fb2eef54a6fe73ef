"""Data layer: readers -> ``Data`` (PyG) -> neighbour-list transform -> ``Batch``.

Names are imported on first use (PEP 562), so ``import frameavg.data`` (and the command line's
start-up) does not pay for torch and PyG until a reader or dataset is actually used.
"""

from __future__ import annotations

import importlib

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

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'frameavg.data' has no attribute {name!r}")


def __dir__():
    return __all__
