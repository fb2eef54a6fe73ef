"""Structure readers: any supported path -> validated ``Data`` objects (see ``atomic_data``).

``read_structures(path)`` detects the format from the path (extension, folder contents, magic
bytes) unless ``format=`` names it; ``iter_structures`` streams the same structures one at a time.
Formats (``available_formats()``): ``frameavg-lmdb`` (ours), ``oc20-lmdb`` (legacy pickles, needs
``trusted=True``), ``aselmdb`` (fairchem's ASE-LMDB), ``qm9`` (qm9pack CSV / QM9 extxyz),
``md17`` (rMD17 / MD17 / sGDML ``.npz``), ``qm7x`` (QM7-X HDF5), ``xu-kitchin``, ``pymatgen-json``
(Structure/Molecule dicts and entries), ``ase-db`` (SQLite / ASE JSON), ``ase`` (extxyz/xyz/traj),
``ase-other`` (anything else ASE reads), and the formats plugins register (``registry.register``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from frameavg.data.readers import catalog
from frameavg.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch_geometric.data import Data

__all__ = [
    "available_formats",
    "detect_format",
    "iter_structures",
    "read_structures",
    "resolve_path",
]


def available_formats() -> dict[str, str]:
    """Reader name -> one-line description: the catalog's formats and those registered by plugins
    imported so far (without importing the registry, i.e. torch, when none is)."""
    formats = catalog.available_formats()
    registry = sys.modules.get("frameavg.data.readers.registry")
    if registry is not None:
        formats |= {name: reader.description for name, reader in registry.READERS.items() if name not in formats}
    return dict(sorted(formats.items()))


def detect_format(path: str | Path) -> str:
    """Name of the reader for ``path`` (see ``registry.detect_format``)."""
    from frameavg.data.readers.registry import detect_format as detect

    return detect(path)


def resolve_path(path: str | Path) -> Path:
    """``path`` as a Path. Special names: ``qm9pack`` (the installed qm9pack CSV folder) and
    ``shipped:NAME`` (data shipped in the package, see ``frameavg.data.shipped``)."""
    from frameavg.data.readers.registry import check_path

    if str(path) == "qm9pack" and not Path(path).exists():
        from frameavg.data.readers import qm9

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
    dtype: "torch.dtype | None" = None,
    tags: str = "auto",
    **options,
) -> "Iterator[Data]":
    """Stream validated structures from ``path`` (see ``read_structures`` for the arguments)."""
    import torch

    from frameavg.data.atomic_data import TAG_CONVENTIONS
    from frameavg.data.readers.registry import READERS, ReadOptions, get_reader, load_readers

    path = resolve_path(path)
    load_readers()
    reader = get_reader(format) if format else READERS[detect_format(path)]
    if tags not in TAG_CONVENTIONS:
        raise ConfigError(f"unknown tag convention '{tags}' (choose from {', '.join(TAG_CONVENTIONS)})")
    unknown = sorted(set(options) - set(reader.options))
    if unknown:
        raise ConfigError(
            f"format '{reader.name}' has no option(s) {', '.join(unknown)}; "
            f"its options: {', '.join(reader.options) or 'none'}"
        )
    if isinstance(required, str):
        required = (required,)
    read_options = ReadOptions(keys=dict(keys or {}), required=tuple(required), trusted=trusted,
                               dtype=torch.float32 if dtype is None else dtype, extra=options, tags=tags)
    return reader.iterate(path, read_options)


def read_structures(path: str | Path, format: str | None = None, **arguments) -> "list[Data]":
    """All structures of a file or folder as validated ``Data`` objects (the arguments of
    ``iter_structures``, keyword-only after ``format``).

    Args:
        path: a file or folder; the format is detected unless ``format`` is given.
        format: reader name or alias (``available_formats()``), e.g. ``"extxyz"``, ``"oc20-lmdb"``.
        keys: ``{our_field: key_in_file}``, e.g. ``{"energy": "U0"}``; a key the file lacks is an
            error that suggests the closest existing key.
        required: fields every structure must have after mapping, e.g. ``("energy", "forces")``.
        trusted: allow unpickling legacy OC20 LMDBs (pickles can run code: trusted files only).
        dtype: floating dtype of positions, cell and float labels (default float32).
        tags: tag convention of the file: ``auto`` (OC20 when all tags are 0..2, else ASE's layer
            tags), ``oc20``, ``ase`` or ``ignore``; stored in OC20's convention.
        **options: reader-specific options, e.g. ``targets=("U0",)`` for QM9,
            ``include_clean=True`` for Xu-Kitchin.

    Raises:
        DataError naming the file and the structure for unreadable or invalid input.
    """
    return list(iter_structures(path, format, **arguments))
