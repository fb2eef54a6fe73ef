"""Reader for the Xu–Kitchin adsorption set (J. Phys. Chem. C 118, 25597 (2014)).

Input: a folder with ``structures.json`` and ``energies.json`` (or the path of ``structures.json``),
both nested as ``[metal][adsorbate][site][coverage]``; a structure is ``{"symbols", "cell",
"pos"}`` (Å), an energy is the adsorption energy per adsorbate (eV, PBE).

Output per structure: ``energy`` = adsorption energy (eV), ``coverage`` [1] (monolayers), ``name``
(``"Pt/O/fcc/0.25"``), periodic in all three directions (slab with vacuum along z, as OC20), and
``tags``/``fixed`` derived from heights:

- atoms of another element than the slab metal are the adsorbate: tag 2, free;
- a metal layer holds as many atoms as the bottom layer (metal atoms within ``LAYER_TOLERANCE``
  of the lowest one); that many highest metal atoms are the surface layer: tag 1, free;
- all other metal atoms are subsurface: tag 0, fixed.

Entries that were never computed (the placeholder string ``"Q"`` instead of a structure or an
energy) are skipped, as are the clean slabs (coverage 0, no adsorption energy) unless
``include_clean=True``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import ase
import numpy as np
from torch_geometric.data import Data

from frameavg.data.readers.ase_files import describe_parse_error
from frameavg.data.readers.registry import ReadOptions, register
from frameavg.errors import DataError

LAYER_TOLERANCE = 1.0  # Å; fcc(111) layers are ~2.3 Å apart, relaxation moves atoms < 0.5 Å


def _files(path: Path) -> tuple[Path, Path]:
    folder = path if path.is_dir() else path.parent
    return folder / "structures.json", folder / "energies.json"


def sniff(path: Path) -> bool:
    structures, energies = _files(path)
    if path.is_file() and path.name != "structures.json":
        return False
    return structures.is_file() and energies.is_file()


def surface_tags(symbols: np.ndarray, heights: np.ndarray, metal: str) -> np.ndarray:
    """OC20-style tags [N] (0 subsurface, 1 surface, 2 adsorbate) from element and height (Å)."""
    is_metal = symbols == metal
    tags = np.full(len(symbols), 2, dtype=np.int64)
    if not is_metal.any():
        return tags
    metal_idx = np.flatnonzero(is_metal)
    z = heights[metal_idx]
    per_layer = int((z < z.min() + LAYER_TOLERANCE).sum())
    tags[metal_idx] = 0
    tags[metal_idx[np.argsort(-z, kind="stable")[:per_layer]]] = 1
    return tags


def _load(file: Path) -> dict:
    try:
        with open(file) as handle:
            content = json.load(handle)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc}", source=str(file)) from None
    if not isinstance(content, dict):
        raise DataError("expected a JSON object [metal][adsorbate][site][coverage]", source=str(file))
    return content


def _entries(tree: dict):
    for metal, by_adsorbate in tree.items():
        for adsorbate, by_site in by_adsorbate.items():
            for site, by_coverage in by_site.items():
                for coverage, entry in by_coverage.items():
                    yield (metal, adsorbate, site, coverage), entry


@register("xu-kitchin", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    structures_file, energies_file = _files(path)
    include_clean = bool(options.extra.get("include_clean", False))
    structures, energies = _load(structures_file), _load(energies_file)
    source = str(structures_file)
    index = 0
    try:
        for (metal, adsorbate, site, coverage), entry in _entries(structures):
            name = f"{metal}/{adsorbate}/{site}/{coverage}"
            if not isinstance(entry, dict):
                continue  # placeholder: never computed
            energy = energies.get(metal, {}).get(adsorbate, {}).get(site, {}).get(coverage)
            clean = float(coverage) == 0.0
            if clean and not include_clean:
                continue
            if not clean and not isinstance(energy, (int, float)):
                continue  # placeholder energy
            yield _to_data(entry, metal, name, float(coverage), None if clean else float(energy), options, source, index)
            index += 1
    except (AttributeError, ValueError, TypeError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"unexpected layout ({type(exc).__name__}: {exc})", source=source, index=index) from None
    if index == 0:
        raise DataError("no structures found", source=source)


def _to_data(entry, metal, name, coverage, energy, options, source, index) -> Data:
    def fail(message):
        return DataError(f"{name}: {message}", source=source, index=index)

    try:
        symbols = np.asarray(entry["symbols"], dtype=str)
        positions = np.asarray(entry["pos"], dtype=np.float64)
        cell = np.asarray(entry["cell"], dtype=np.float64)
    except KeyError as exc:
        raise fail(f"missing key {exc.args[0]!r}") from None
    if positions.ndim != 2 or positions.shape != (len(symbols), 3):
        raise fail(f"positions have shape {positions.shape} for {len(symbols)} symbols")
    if cell.shape != (3, 3):
        raise fail(f"malformed cell (shape {cell.shape})")
    try:
        atoms = ase.Atoms(symbols=list(symbols), positions=positions, cell=cell, pbc=True)
    except (KeyError, ValueError) as exc:
        raise fail(describe_parse_error(exc)) from None
    tags = surface_tags(symbols, positions[:, 2], metal)
    atoms.set_tags(tags)
    atoms.new_array("fixed", tags == 0)
    atoms.info["coverage"] = coverage
    if energy is not None:
        atoms.info["energy"] = energy
    data = options.to_data(atoms, source=source, index=index)
    data.name = name
    return data
