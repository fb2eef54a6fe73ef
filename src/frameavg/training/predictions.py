"""Writing predictions: npz (arrays) or extxyz (ASE-readable, one frame per structure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from frameavg.errors import FrameavgError
from frameavg.files import atomic_output
from frameavg.outputs import ENERGY, FORCES, STRESS


def write_predictions(path: Path, structures: list, pred: dict) -> None:
    """Atomically write ``pred`` (``energy`` [B] eV, optional ``forces`` [N,3] eV/Å, ``stress``
    [B,3,3] eV/Å³, ``natoms`` [B], optional ``status`` [B]: "ok" or why a structure was not
    predicted, its values then NaN).

    ``.npz``: ``energy`` [B], ``natoms`` [B], ``forces`` [N,3] (concatenated), ``index`` [B],
    ``status`` [B] strings.
    ``.extxyz``/``.xyz``: the input structures with predicted ``energy`` and ``forces`` and
    ``info["status"]`` (read back with ``ase.io.read(path, ':')``).
    """
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".extxyz", ".xyz"):
        raise FrameavgError(f"--out must end in .npz, .extxyz or .xyz, got '{path.name}'")
    energy = pred[ENERGY].double().cpu().numpy()
    natoms = pred["natoms"].cpu().numpy()
    forces = pred[FORCES].double().cpu().numpy() if FORCES in pred else None
    stress = pred[STRESS].double().cpu().numpy() if STRESS in pred else None
    status = list(pred.get("status") or ["ok"] * len(energy))
    with atomic_output(path) as tmp:
        if suffix == ".npz":
            arrays = {ENERGY: energy, "natoms": natoms, "index": np.arange(len(energy)), "status": np.array(status)}
            if forces is not None:
                arrays[FORCES] = forces
            if stress is not None:
                arrays[STRESS] = stress
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        else:
            _write_extxyz(tmp, structures, energy, forces, natoms, status, stress)


def _write_extxyz(tmp, structures: list, energy, forces, natoms, status, stress=None) -> None:
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from frameavg.data.atomic_data import data_to_atoms

    offsets = np.concatenate([[0], np.cumsum(natoms)])
    frames = []
    for i, data in enumerate(structures):
        atoms = data_to_atoms(data)
        results = {ENERGY: float(energy[i])}
        if forces is not None:
            results[FORCES] = forces[offsets[i]:offsets[i + 1]]
        if stress is not None and np.isfinite(stress[i]).all():
            results[STRESS] = stress[i]
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info["status"] = status[i]
        frames.append(atoms)
    ase.io.write(str(tmp), frames, format="extxyz")
