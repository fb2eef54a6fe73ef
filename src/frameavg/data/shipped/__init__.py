"""Small real datasets shipped inside the package (each folder keeps its LICENSE and SOURCE.txt).

- ``rmd17_ethanol``: rMD17 ethanol, ``train.xyz`` (1000 frames), ``test_MD.xyz`` (1000 frames),
  ``isolated_atoms.xyz``; energies eV, forces eV/Å (PBE/def2-SVP). MIT licence.
- ``oc20_is2re_samples``: 3 + 8 OC20 IS2RE slabs (``is2re_bs3.extxyz``, ``is2re_bs8.extxyz``) with
  ``y_init``/``y_relaxed`` (eV), ``pos_relaxed``, ``tags``, ``move_mask``. MIT code, OC20 data CC-BY-4.0.
- ``emt_dense``: a small dense adsorption folder generated with EMT as the ground truth
  (synthetic, not DFT; ``frameavg data generate-adsorption``): 12 systems, 84 placements.
  ``emt_dense/train`` etc. name its S2EF frame files. MIT licence.
- ``qm9_subset``: 2,000 random QM9 molecules (seed 0) with all QM9 targets in original units
  (read with the ``qm9`` reader for eV). QM9 data CC0.
- ``oxides_eos``: 295 bulk BO2 polymorphs (Ti, V, Ru, Ir, Sn), PBE equation-of-state points with
  energies (eV) and forces (eV/Å), an ASE database (fairchem docs; Mehta, Salvador, Kitchin 2015).
  MIT licence.
- ``xu_kitchin_adsorption``: 882 fcc(111) slabs with atomic adsorbates and their adsorption
  energies (eV per adsorbate, PBE; Xu & Kitchin 2014), read with the ``xu-kitchin`` reader (fairchem
  docs). MIT licence.
"""

from __future__ import annotations

from pathlib import Path

from frameavg.errors import DataError

ROOT = Path(__file__).resolve().parent

FILES = {
    "rmd17_ethanol/train": "rmd17_ethanol/train.xyz",
    "rmd17_ethanol/test": "rmd17_ethanol/test_MD.xyz",
    "rmd17_ethanol/isolated_atoms": "rmd17_ethanol/isolated_atoms.xyz",
    "oc20_is2re/bs3": "oc20_is2re_samples/is2re_bs3.extxyz",
    "oc20_is2re/bs8": "oc20_is2re_samples/is2re_bs8.extxyz",
    "qm9_subset": "qm9_subset/qm9_random2000_seed0.extxyz",
    "oxides_eos": "oxides_eos/oxides.db",
    "xu_kitchin_adsorption": "xu_kitchin_adsorption",
    "emt_dense": "emt_dense",
    **{f"emt_dense/{split}": f"emt_dense/s2ef/{split}.lmdb" for split in ("train", "id", "ood_ads", "ood_cat", "ood_both")},
}


def shipped_path(name: str) -> Path:
    """Path of a shipped data file by short name (see ``FILES``), e.g. ``"rmd17_ethanol/train"``."""
    try:
        return ROOT / FILES[name]
    except KeyError:
        raise DataError(f"no shipped dataset '{name}'; available: {', '.join(FILES)}") from None
