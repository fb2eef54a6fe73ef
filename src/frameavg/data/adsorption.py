"""The layout of a dense adsorption folder (written by ``frameavg data generate-adsorption``,
``frameavg.simulation.adsorption_data``) and its readers.

::

    manifest.json            settings, references, systems, placements, splits
    s2ef/<split>.lmdb        trajectory frames: energy (eV), forces (eV/Å), tags, fixed
    dense/<split>.lmdb       initial placements: pos_relaxed, energy_relaxed, adsorption_energy,
                             system_index, placement
    slabs.extxyz             the relaxed clean slabs (``info['system']``: metal-facet)

Given as a training path, the folder means its S2EF training frames (``s2ef/train.lmdb``).
"""

from __future__ import annotations

import json
from pathlib import Path

from frameavg.errors import DataError

SPLITS = ("train", "id", "ood_ads", "ood_cat", "ood_both")
LABEL = "synthetic data: ASE EMT ground truth (not DFT)"
FORMAT = "frameavg-adsorption"


def is_adsorption_folder(path: str | Path) -> bool:
    """True for a folder whose manifest.json names this layout (checked on its first bytes)."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    with manifest.open("rb") as handle:
        return f'"format": "{FORMAT}"'.encode() in handle.read(256)


def training_frames(folder: str | Path) -> Path:
    """The S2EF training frames of an adsorption folder."""
    path = Path(folder) / "s2ef" / "train.lmdb"
    if not path.is_file():
        raise DataError("adsorption folder has no s2ef/train.lmdb (no training systems)", source=str(folder))
    return path


def read_manifest(folder: str | Path) -> dict:
    """The manifest of a generated (or OC20-Dense-layout) folder; ``DataError`` if it is not one."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise DataError("not an adsorption data folder (no manifest.json)", source=str(folder))
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"manifest.json is not valid JSON: {exc}", source=str(path)) from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"manifest.json is not a {FORMAT} manifest", source=str(path))
    return manifest


def read_slabs(folder: str | Path) -> dict:
    """{"metal-facet": relaxed clean slab Atoms} of a generated folder."""
    from ase.io import read

    path = Path(folder) / "slabs.extxyz"
    if not path.is_file():
        raise DataError("no slabs.extxyz (relaxed clean slabs)", source=str(folder))
    return {atoms.info["system"]: atoms for atoms in read(str(path), ":")}
