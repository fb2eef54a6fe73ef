"""Datasets for PyG ``DataLoader``: in memory (a list of ``Data``) or on disk (LMDB, random access).

Both are ``torch.utils.data.Dataset`` objects returning one ``Data`` per index, after an optional
``transform`` (e.g. ``RadiusGraph(cutoff=6.0)``). ``open_dataset(path)`` picks the on-disk
dataset for LMDB files and reads everything else into memory.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from frameavg.data.adsorption import is_adsorption_folder, training_frames
from frameavg.data.lmdb_store import lmdb_files, open_env, read_meta
from frameavg.data.readers import detect_format, frameavg_lmdb, oc20_lmdb, read_structures, resolve_path
from frameavg.data.readers.registry import ReadOptions, get_reader
from frameavg.errors import ConfigError

LMDB_FORMATS = {"frameavg-lmdb": frameavg_lmdb, "oc20-lmdb": oc20_lmdb}


class StructureDataset(Dataset):
    """Structures held in memory.

    Args:
        structures: ``Data`` objects (e.g. from ``read_structures``).
        transform: applied to a shallow copy on each access, so the stored objects stay as read.
    """

    def __init__(self, structures: Iterable[Data], transform: Callable[[Data], Data] | None = None):
        self.structures = list(structures)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index: int) -> Data:
        data = self.structures[index]
        return self.transform(copy.copy(data)) if self.transform is not None else data


class LmdbDataset(Dataset):
    """Structures read on demand from our LMDB format or a legacy OC20 LMDB (one file or a folder).

    Safe with several DataLoader workers: each process opens its own read-only, lock-free handle
    on first access.

    Args:
        path: ``.lmdb`` file or folder of ``*.lmdb`` files.
        format: ``"frameavg-lmdb"`` or ``"oc20-lmdb"``; detected when None.
        keys, required, trusted, dtype: as in ``read_structures`` (``trusted`` is needed for
            legacy OC20 LMDBs, whose entries are pickles).
        transform: applied to every structure read.
    """

    def __init__(
        self,
        path: str | Path,
        format: str | None = None,
        *,
        keys: Mapping[str, str] | None = None,
        required=(),
        trusted: bool = False,
        dtype: torch.dtype = torch.float32,
        transform: Callable[[Data], Data] | None = None,
    ):
        self.path = resolve_path(path)
        self.format = get_reader(format).name if format else detect_format(self.path)
        if self.format not in LMDB_FORMATS:
            raise ConfigError(f"{self.path}: LmdbDataset reads LMDB formats {sorted(LMDB_FORMATS)}, not '{self.format}'")
        options = ReadOptions(keys=dict(keys or {}), required=tuple(required), trusted=trusted, dtype=dtype)
        self.source = LMDB_FORMATS[self.format].open_source(self.path, options)
        self.transform = transform

    @property
    def metadata(self) -> dict:
        """Stored metadata of our format (of the first file), ``{}`` for legacy LMDBs."""
        file = lmdb_files(self.path)[0]
        return read_meta(open_env(file), file) or {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Data:
        data = self.source[int(index)]
        return self.transform(data) if self.transform is not None else data

    def close(self) -> None:
        self.source.close()


def open_dataset(
    path: str | Path,
    format: str | None = None,
    *,
    transform: Callable[[Data], Data] | None = None,
    keys: Mapping[str, str] | None = None,
    required=(),
    trusted: bool = False,
    dtype: torch.dtype = torch.float32,
    **options,
) -> Dataset:
    """An ``LmdbDataset`` for LMDB paths, else a ``StructureDataset`` of everything ``path`` holds.

    Arguments as in ``read_structures``; ``transform`` is applied on access. A dense adsorption
    folder (``frameavg.data.adsorption``) opens its S2EF training frames.
    """
    path = resolve_path(path)
    if is_adsorption_folder(path):
        path = training_frames(path)
    name = get_reader(format).name if format else detect_format(path)
    if name in LMDB_FORMATS:
        if options:
            raise ConfigError(f"format '{name}' has no option(s) {', '.join(sorted(options))}")
        return LmdbDataset(path, name, keys=keys, required=required, trusted=trusted, dtype=dtype, transform=transform)
    structures = read_structures(path, name, keys=keys, required=required, trusted=trusted, dtype=dtype, **options)
    return StructureDataset(structures, transform=transform)
