"""Writing predictions: npz (arrays) or extxyz (ASE-readable, one frame per structure)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from frameavg.errors import FrameavgError


def write_predictions(path: Path, structures: list, pred: dict) -> None:
    """Atomically write ``pred`` (``energy`` [B] eV, optional ``forces`` [N,3] eV/Å, ``natoms`` [B]).

    ``.npz``: ``energy`` [B], ``natoms`` [B], ``forces`` [N,3] (concatenated), ``index`` [B].
    ``.extxyz``/``.xyz``: the input structures with predicted ``energy`` and ``forces``
    (read back with ``ase.io.read(path, ':')``).
    """
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".extxyz", ".xyz"):
        raise FrameavgError(f"--out must end in .npz, .extxyz or .xyz, got '{path.name}'")
    path.parent.mkdir(parents=True, exist_ok=True)
    energy = pred["energy"].double().cpu().numpy()
    natoms = pred["natoms"].cpu().numpy()
    forces = pred["forces"].double().cpu().numpy() if "forces" in pred else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        if suffix == ".npz":
            arrays = {"energy": energy, "natoms": natoms, "index": np.arange(len(energy))}
            if forces is not None:
                arrays["forces"] = forces
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
        else:
            _write_extxyz(tmp, structures, energy, forces, natoms)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_extxyz(tmp: str, structures: list, energy, forces, natoms) -> None:
    import ase
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    offsets = np.concatenate([[0], np.cumsum(natoms)])
    frames = []
    for i, data in enumerate(structures):
        pbc = data.pbc[0].numpy()
        atoms = ase.Atoms(numbers=data.atomic_numbers.numpy(), positions=data.pos.detach().double().numpy(),
                          cell=data.cell[0].double().numpy(), pbc=pbc)
        results = {"energy": float(energy[i])}
        if forces is not None:
            results["forces"] = forces[offsets[i]:offsets[i + 1]]
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    ase.io.write(tmp, frames, format="extxyz")
