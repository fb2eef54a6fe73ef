"""Structure readers: any supported path -> validated ``Data`` objects (see ``atomic_data``).

``read_structures(path)`` detects the format from the path (extension, folder contents, magic
bytes) unless ``format=`` names it; ``iter_structures`` streams the same structures one at a time.
Formats (``available_formats()``): ``frameavg-lmdb`` (ours), ``oc20-lmdb`` (legacy pickles, needs
``trusted=True``), ``qm9`` (qm9pack CSV / QM9 extxyz), ``xu-kitchin``, ``ase-db`` (SQLite / ASE
JSON), ``ase`` (extxyz/xyz/traj), ``ase-other`` (anything else ASE reads).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch_geometric.data import Data

# Importing the reader modules registers them.
from frameavg.data.readers import ase_db, ase_files, frameavg_lmdb, oc20_lmdb, qm9, xu_kitchin  # noqa: F401
from frameavg.data.readers.registry import READERS, ReadOptions, check_path, detect_format, get_reader
from frameavg.errors import ConfigError

__all__ = [
    "available_formats",
    "detect_format",
    "iter_structures",
    "read_structures",
    "resolve_path",
]


def available_formats() -> dict[str, str]:
    """Reader name -> one-line description."""
    return {name: reader.description for name, reader in sorted(READERS.items())}


def resolve_path(path: str | Path) -> Path:
    """``path`` as a Path. Special names: ``qm9pack`` (the installed qm9pack CSV folder) and
    ``shipped:NAME`` (data shipped in the package, see ``frameavg.data.shipped``)."""
    if str(path) == "qm9pack" and not Path(path).exists():
        return qm9.qm9pack_folder()
    if str(path).startswith("shipped:"):
        from frameavg.data.shipped import shipped_path

        return shipped_path(str(path).split(":", 1)[1])
    return check_path(path)


def iter_structures(
    path: str | Path,
    format: str | None = None,
    *,
    keys: Mapping[str, str] | None = None,
    required=(),
    trusted: bool = False,
    dtype: torch.dtype = torch.float32,
    **options,
) -> Iterator[Data]:
    """Stream validated structures from ``path`` (see ``read_structures`` for the arguments)."""
    path = resolve_path(path)
    reader = get_reader(format) if format else READERS[detect_format(path)]
    unknown = sorted(set(options) - set(reader.options))
    if unknown:
        raise ConfigError(
            f"format '{reader.name}' has no option(s) {', '.join(unknown)}; "
            f"its options: {', '.join(reader.options) or 'none'}"
        )
    if isinstance(required, str):
        required = (required,)
    read_options = ReadOptions(keys=dict(keys or {}), required=tuple(required), trusted=trusted, dtype=dtype, extra=options)
    return reader.iterate(path, read_options)


def read_structures(
    path: str | Path,
    format: str | None = None,
    *,
    keys: Mapping[str, str] | None = None,
    required=(),
    trusted: bool = False,
    dtype: torch.dtype = torch.float32,
    **options,
) -> list[Data]:
    """All structures of a file or folder as validated ``Data`` objects.

    Args:
        path: a file or folder; the format is detected unless ``format`` is given.
        format: reader name or alias (``available_formats()``), e.g. ``"extxyz"``, ``"oc20-lmdb"``.
        keys: ``{our_field: key_in_file}``, e.g. ``{"energy": "U0"}``; a key the file lacks is an
            error that suggests the closest existing key.
        required: fields every structure must have after mapping, e.g. ``("energy", "forces")``.
        trusted: allow unpickling legacy OC20 LMDBs (pickles can run code: trusted files only).
        dtype: floating dtype of positions, cell and float labels.
        **options: reader-specific options, e.g. ``targets=("U0",)`` for QM9,
            ``include_clean=True`` for Xu-Kitchin.

    Raises:
        DataError naming the file and the structure for unreadable or invalid input.
    """
    return list(iter_structures(path, format, keys=keys, required=required, trusted=trusted, dtype=dtype, **options))
