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
    total = 0
    for file in files:
        source = str(file)
        index = 0
        if not is_lmdb_file(file):  # checked first: the backend cannot clean up after a failed open
            raise DataError("not an ASE-LMDB database (no LMDB header)", source=source)
        database = None
        try:
            database = _connect(source)
            rows = database.select()
            while True:
                try:
                    row = next(rows)
                except StopIteration:
                    break
                atoms = row.toatoms()
                for key, value in {**(row.get("data") or {}), **row.key_value_pairs}.items():
                    atoms.info.setdefault(key, value)
                yield options.to_data(atoms, source=source, index=index)
                index += 1
        except DataError:
            raise
        except Exception as exc:  # lmdb, zlib and JSON decoding raise many kinds for damaged files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise DataError(f"cannot read ASE-LMDB database ({type(exc).__name__}"
                            f"{': ' + first_line if first_line else ''})",
                            source=source, index=index if index else None) from None
        finally:
            if database is not None:
                try:
                    database.close()
                except Exception:  # already closed
                    pass
        total += index
    if total == 0:
        raise DataError("no structures found", source=str(files[0]) if len(files) == 1 else str(files[0].parent))
