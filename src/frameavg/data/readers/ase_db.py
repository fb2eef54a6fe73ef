"""Reader for ASE databases: SQLite (``.db``, detected by its magic bytes) and ASE JSON (``.json``).

Labels come from each row's calculator results (energy, forces, ...), its key-value pairs and its
``data`` dictionary (as SchNetPack stores them), in that order of precedence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import ase.db
from torch_geometric.data import Data

from frameavg.data.readers.registry import ReadOptions, read_head, register
from frameavg.errors import DataError

SQLITE_MAGIC = b"SQLite format 3\x00"


def sniff(path: Path) -> bool:
    if not path.is_file():
        return False
    return read_head(path, 16) == SQLITE_MAGIC or path.suffix.lower() in (".db", ".json")


@register("ase-db", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    kind = "db" if read_head(path, 16) == SQLITE_MAGIC else "json"
    yield from database_rows(lambda: ase.db.connect(str(path), type=kind, use_lock_file=False), options,
                             str(path), "ASE database")


def database_rows(connect, options: ReadOptions, source: str, what: str, opened: list | None = None) -> Iterator[Data]:
    """Every row of the ASE database ``connect()`` opens, as ``Data``: labels from the row's
    calculator results, then its key-value pairs and ``data``. A damaged file gives one
    ``DataError`` naming ``what`` and the row. ``opened``: the database is appended to it (for
    callers that must close it)."""
    index = 0
    try:
        database = connect()
        if opened is not None:
            opened.append(database)
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
    except Exception as exc:  # ASE's parsers and backends raise anything for damaged files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(f"cannot read {what} ({type(exc).__name__}{': ' + first_line if first_line else ''})",
                        source=source, index=index if index else None) from None
