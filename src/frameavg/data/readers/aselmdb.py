"""Reader for ASE-LMDB databases (``.aselmdb``): fairchem's format for the OC20 re-releases, OC22,
OMat24, OMol25, ... One ``.aselmdb`` file or a folder of them (read in name order).

The files are ASE databases stored in LMDB (the ``ase-db-backends`` package; ASE's
``ase.db.connect(path, type="aselmdb")`` dispatches to it). Every row becomes one structure through
``row.toatoms()``: labels from its calculator results (energy in eV, forces in eV/Å, stress),
then its key-value pairs and its ``data`` dictionary (as the ``ase-db`` reader); tags and
``FixAtoms`` constraints (``fixed``) are kept. Opened read-only and lock-free (no lock files are
written next to the data).

Needs ase-db-backends (``pip install 'frameavg[aselmdb]'``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Iterator

from torch_geometric.data import Data

from frameavg.data.lmdb_store import is_lmdb_file
from frameavg.data.readers.registry import ReadOptions, register
from frameavg.errors import DataError

SUFFIX = ".aselmdb"
NEEDS_BACKENDS = "reading ASE-LMDB (.aselmdb) needs ase-db-backends: pip install 'frameavg[aselmdb]'"


def aselmdb_files(path: Path) -> list[Path]:
    """The file itself, or the sorted ``*.aselmdb`` files of a folder."""
    if path.is_dir():
        files = sorted(p for p in path.glob(f"*{SUFFIX}") if p.is_file())
        if not files:
            raise DataError(f"folder contains no *{SUFFIX} files", source=str(path))
        return files
    return [path]


def sniff(path: Path) -> bool:
    if path.is_dir():  # a folder of ASE-LMDB files (but not one of frameavg/OC20 .lmdb files)
        return any(p.is_file() for p in path.glob(f"*{SUFFIX}")) and not any(path.glob("*.lmdb"))
    return path.is_file() and path.suffix.lower() == SUFFIX


@register("aselmdb", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    if importlib.util.find_spec("ase_db_backends") is None:
        raise DataError(NEEDS_BACKENDS, source=str(path))
    return _iterate(aselmdb_files(path), options)


def _connect(source: str):
    """The database at ``source``, read-only: through ``ase.db.connect`` (recent ASE dispatches
    ``type="aselmdb"`` to ase-db-backends), directly through the backend for older ASE."""
    import ase.db

    try:
        return ase.db.connect(source, type="aselmdb", readonly=True)
    except ValueError as exc:
        if "Unknown database type" not in str(exc):
            raise
    from ase_db_backends.aselmdb import LMDBDatabase

    return LMDBDatabase(source, readonly=True)


def _iterate(files: list[Path], options: ReadOptions) -> Iterator[Data]:
    from frameavg.data.readers.ase_db import database_rows

    total = 0
    for file in files:
        source = str(file)
        index = 0
        if not is_lmdb_file(file):  # checked first: the backend cannot clean up after a failed open
            raise DataError("not an ASE-LMDB database (no LMDB header)", source=source)
        opened: list = []
        try:
            for data in database_rows(lambda: _connect(source), options, source, "ASE-LMDB database", opened):
                yield data
                index += 1
        finally:
            for database in opened:
                try:
                    database.close()
                except Exception:  # already closed
                    pass
        total += index
    if total == 0:
        raise DataError("no structures found", source=str(files[0]) if len(files) == 1 else str(files[0].parent))
