"""Reader for pymatgen's JSON (``Structure.as_dict()``, ``Molecule.as_dict()``, computed entries),
as materials data sets ship them: one object, a list of them, or a mapping id -> object.

Pymatgen itself is not needed: the layout is plain JSON. Each object is a structure (``sites``,
and ``lattice`` for periodic ones), or a record holding one under ``structure`` (a
``ComputedStructureEntry``, a Materials Project document). Labels: the record's numeric fields
(e.g. ``energy``, ``energy_per_atom``, ``correction``; pymatgen and the Materials Project give
energies in eV), the structure's ``properties`` and per-site ``properties`` (e.g. ``forces`` in
eV/Å, ``magmom``). ``energy`` is the record's total ``energy`` when present; map others with
``keys``. Disordered sites (several species or partial occupancy) are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import ase
import ase.data
import numpy as np
from torch_geometric.data import Data

from frameavg.data.readers.registry import ReadOptions, read_head, register
from frameavg.errors import DataError


def sniff(path: Path) -> bool:
    if not path.is_file() or path.suffix.lower() != ".json":
        return False
    head = read_head(path, 65536)
    return b'"sites"' in head and b'"species"' in head


def records(document) -> list:
    """The objects of a pymatgen JSON document (one object, a list, or a mapping of objects)."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        if "sites" in document or "structure" in document:
            return [document]
        values = list(document.values())
        if values and all(isinstance(v, dict) and ("sites" in v or "structure" in v) for v in values):
            return values
    raise DataError("not a pymatgen JSON document (expected structures with 'sites')")


def record_to_atoms(record: dict) -> ase.Atoms:
    """One pymatgen record as ``ase.Atoms`` with its labels in ``info`` and ``arrays``."""
    if not isinstance(record, dict):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    structure = record if "sites" in record else record.get("structure")
    if not isinstance(structure, dict) or not isinstance(structure.get("sites"), list):
        raise DataError("record has no structure ('sites' or 'structure.sites')")
    sites = structure["sites"]
    lattice = structure.get("lattice")
    cell = np.asarray(lattice["matrix"], dtype=np.float64) if lattice else np.zeros((3, 3))
    symbols, positions = [], []
    for k, site in enumerate(sites):
        species = site.get("species") or []
        if len(species) != 1 or abs(float(species[0].get("occu", 1.0)) - 1.0) > 1e-6:
            raise DataError(f"site {k} is disordered ({species}): partial occupancies are not supported")
        element = species[0].get("element")
        if element not in ase.data.atomic_numbers:
            raise DataError(f"site {k}: unknown element {element!r}")
        symbols.append(element)
        if "xyz" in site:
            positions.append(np.asarray(site["xyz"], dtype=np.float64))
        elif "abc" in site and lattice:
            positions.append(np.asarray(site["abc"], dtype=np.float64) @ cell)
        else:
            raise DataError(f"site {k} has no Cartesian 'xyz' (or fractional 'abc' with a lattice)")
    pbc = lattice.get("pbc", (True, True, True)) if lattice else (False, False, False)
    atoms = ase.Atoms(symbols=symbols, positions=np.asarray(positions, dtype=np.float64), cell=cell, pbc=pbc)
    per_site = {}
    for k, site in enumerate(sites):
        for name, value in (site.get("properties") or {}).items():
            per_site.setdefault(name, [None] * len(sites))[k] = value
    for name, values in per_site.items():
        if all(v is not None for v in values):
            array = np.asarray(values)
            if array.dtype.kind in "biuf":
                atoms.new_array(name, array)
    for source in (structure.get("properties") or {}, record):
        for name, value in source.items():
            if name not in ("structure", "sites", "lattice") and not name.startswith("@") and _numeric(value):
                atoms.info.setdefault(name, value)
    return atoms


def _numeric(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    if isinstance(value, list) and value:
        array = np.asarray(value, dtype=object)
        return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in array.ravel())
    return False


@register("pymatgen-json", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    source = str(path)
    try:
        document = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"invalid JSON ({exc})", source=source) from None
    try:
        items = records(document)
    except DataError as exc:
        raise DataError(str(exc), source=source) from None
    if not items:
        raise DataError("no structures found", source=source)
    for index, record in enumerate(items):
        try:
            atoms = record_to_atoms(record)
        except DataError as exc:
            raise DataError(str(exc), source=source, index=index) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed pymatgen record ({type(exc).__name__}: {exc})", source=source, index=index) from None
        yield options.to_data(atoms, source=source, index=index)
