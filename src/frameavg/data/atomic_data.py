"""Structures as PyG ``Data`` objects with the field conventions of the project (DESIGN.md §2).

================  ===========  ================================================================
field             shape        meaning
================  ===========  ================================================================
pos               [N,3] float  Cartesian positions, Å
atomic_numbers    [N] long     Z (1..118)
cell              [1,3,3]      lattice vectors as rows, Å (all zeros when no axis is periodic)
pbc               [1,3] bool   periodicity per axis
natoms            [1] long     number of atoms
tags              [N] long     OC20 tags (0 subsurface, 1 surface, 2 adsorbate); only if present
fixed             [N] bool     atoms held fixed (FixAtoms / OC20 ``move_mask``); all False if none
energy            [1] float64  eV, when available (graph-level float labels are float64)
forces            [N,3] float  eV/Å, when available
================  ===========  ================================================================

Other numeric labels found in ``atoms.info`` (graph level, shape [1] or [1,k]) and in
``atoms.arrays`` (per atom, shape [N,...]) are carried under their own names, e.g. ``y_init``,
``y_relaxed``, ``pos_relaxed``. Batching with PyG gives ``cell`` [B,3,3], ``pbc`` [B,3] and
``natoms`` [B].
"""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping

import numpy as np
import torch
from torch_geometric.data import Data

from frameavg.errors import DataError

MAX_Z = 118

# Legacy (OCP) names and the field each one maps to.
LEGACY_KEYS = {"y": "energy", "force": "forces"}

# Where a label is looked for when no explicit key mapping names its source, in order.
DEFAULT_SOURCES = {
    "energy": ("energy", "y"),
    "forces": ("forces", "force"),
}
# Fallback sources taken only from calculator results (ASE's own names, in eV), never from
# info/arrays/database data where the same name may carry other units (SchNetPack's QM9: Hartree).
CALCULATOR_SOURCES = {"energy": ("free_energy",)}

# Array / info keys that are structural, never copied as labels.
_STRUCTURAL_ARRAYS = {
    "numbers", "positions", "species", "tags", "move_mask", "fixed", "momenta", "masses",
    "initial_charges", "initial_magmoms",
}
_NODE_DTYPES = {np.dtype(bool): torch.bool}


def atoms_to_data(
    atoms,
    *,
    keys: Mapping[str, str] | None = None,
    required: Iterable[str] = (),
    source: str | None = None,
    index: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Data:
    """Convert one ``ase.Atoms`` to a validated ``Data``.

    Args:
        atoms: the structure. Labels come from its calculator results (a SinglePointCalculator
            as written by extxyz/ASE db readers), then ``atoms.info`` (graph level) and
            ``atoms.arrays`` (per atom).
        keys: explicit mapping ``{our_field: key_in_file}``, e.g. ``{"energy": "U0"}``. A mapped key
            that the structure lacks is an error (with the closest existing key suggested).
        required: fields that must be present after mapping (e.g. ``("energy", "forces")``).
        source, index: file and position, used only in error messages.
        dtype: floating dtype of positions, cell and float labels.
    """

    def fail(message: str) -> DataError:
        return DataError(message, source=source, index=index)

    n = len(atoms)
    if n == 0:
        raise fail("structure has zero atoms")
    numbers = np.asarray(atoms.numbers)
    bad = (numbers < 1) | (numbers > MAX_Z)
    if bad.any():
        raise fail(f"unknown element: atomic number {int(numbers[bad][0])} (valid: 1..{MAX_Z})")
    positions = np.asarray(atoms.positions, dtype=np.float64)
    if not np.isfinite(positions).all():
        atom = int(np.argwhere(~np.isfinite(positions).all(axis=1))[0, 0])
        raise fail(f"non-finite position (NaN or inf) for atom {atom}")

    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    check_cell(cell, pbc, fail)
    if not pbc.any():
        cell = np.zeros((3, 3))

    data = Data(
        pos=torch.as_tensor(positions, dtype=dtype),
        atomic_numbers=torch.as_tensor(numbers, dtype=torch.long),
        cell=torch.as_tensor(cell, dtype=dtype).unsqueeze(0),
        pbc=torch.as_tensor(pbc).unsqueeze(0),
        natoms=torch.tensor([n], dtype=torch.long),
        fixed=torch.as_tensor(_fixed_mask(atoms)),
    )
    if "tags" in atoms.arrays:
        data.tags = torch.as_tensor(np.asarray(atoms.arrays["tags"]), dtype=torch.long)

    labels = _collect_labels(atoms)
    mapped = dict(keys or {})
    check_key_mapping(mapped, labels, fail)
    calculator_results = getattr(getattr(atoms, "calc", None), "results", None) or {}
    for field, candidates in DEFAULT_SOURCES.items():
        if field not in mapped:
            found = next((c for c in candidates if c in labels), None)
            if found is None:
                fallback = CALCULATOR_SOURCES.get(field, ())
                found = next((c for c in fallback if c in calculator_results), None)
            if found is not None:
                mapped[field] = found
    taken = set(mapped.values())
    for key, value in labels.items():
        if key not in taken and key not in LEGACY_KEYS:
            _set_label(data, key, value, n, dtype, fail)
    for field, key in mapped.items():
        _set_label(data, field, labels[key], n, dtype, fail)

    check_required(data, required, labels, fail)
    return data


def check_key_mapping(keys: Mapping[str, str], available: Iterable[str], fail) -> None:
    """Raise ``fail(msg)`` if a mapped source key is absent, suggesting the closest existing key."""
    available = sorted(available)
    for field, key in keys.items():
        if key not in available:
            close = difflib.get_close_matches(key, available, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise fail(
                f"key '{key}' (for field '{field}') not found; available keys: "
                f"{', '.join(available) or 'none'}{hint}"
            )


def check_required(data: Data, required: Iterable[str], available: Iterable[str], fail) -> None:
    """Raise ``fail(msg)`` unless every field in ``required`` is present in ``data``."""
    missing = [f for f in required if f not in data]
    if missing:
        raise fail(
            f"missing required label(s) {', '.join(missing)}; "
            f"available: {', '.join(sorted(available)) or 'none'} (map them with a key mapping)"
        )


def check_cell(cell: np.ndarray, pbc: np.ndarray, fail) -> None:
    """Raise ``fail(msg)`` unless the periodic lattice vectors are finite and independent."""
    if not pbc.any():
        return
    if cell.shape != (3, 3) or not np.isfinite(cell).all():
        raise fail(f"malformed cell (shape {cell.shape}, finite={np.isfinite(cell).all()})")
    rows = cell[pbc]
    if np.linalg.matrix_rank(rows, tol=1e-6 * max(1.0, float(np.abs(rows).max()))) < len(rows):
        raise fail(f"singular cell for periodic axes {np.flatnonzero(pbc).tolist()}: {cell.tolist()}")
    if pbc.all() and abs(np.linalg.det(cell)) < 1e-6:
        raise fail(f"cell has (near) zero volume: {cell.tolist()}")


def _fixed_mask(atoms) -> np.ndarray:
    fixed = np.zeros(len(atoms), dtype=bool)
    if "fixed" in atoms.arrays:
        fixed |= np.asarray(atoms.arrays["fixed"], dtype=bool)
    if "move_mask" in atoms.arrays:
        fixed |= ~np.asarray(atoms.arrays["move_mask"], dtype=bool)
    for constraint in atoms.constraints:
        if type(constraint).__name__ == "FixAtoms":
            fixed[np.asarray(constraint.get_indices(), dtype=int)] = True
    return fixed


def _collect_labels(atoms) -> dict:
    """Numeric labels of a structure: calculator results, then info, then per-atom arrays."""
    labels: dict = {}
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) or {}
    for key, value in results.items():
        labels[key] = value
    for key, value in atoms.info.items():
        if _is_numeric(value):
            labels.setdefault(key, value)
    for key, value in atoms.arrays.items():
        if key not in _STRUCTURAL_ARRAYS and _is_numeric(value):
            labels.setdefault(key, value)
    return labels


def _is_numeric(value) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return True
    if isinstance(value, (int, float, np.integer, np.floating)):
        return True
    if isinstance(value, (np.ndarray, list, tuple)):
        try:
            arr = np.asarray(value)
        except ValueError:
            return False
        return arr.dtype.kind in "biuf" and arr.size > 0
    return False


def _set_label(data: Data, field: str, value, n: int, dtype, fail) -> None:
    arr = np.array(value)  # a copy: database rows hand out read-only buffers
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise fail(f"label '{field}' contains NaN or inf")
    if arr.dtype.kind == "b":
        tensor = torch.as_tensor(arr)
    elif arr.dtype.kind in "iu":
        tensor = torch.as_tensor(arr.astype(np.int64))
    elif arr.ndim == 0 or field == "energy":
        # graph-level floats stay float64: total energies (1e3-1e5 eV) lose meV in float32
        tensor = torch.as_tensor(arr, dtype=torch.float64)
    else:
        tensor = torch.as_tensor(arr, dtype=dtype)
    if field in ("energy",) or arr.ndim == 0:
        tensor = tensor.reshape(1)
    elif arr.ndim >= 1 and arr.shape[0] == n and field not in ("stress", "virial"):
        pass  # per-atom label: [N, ...]
    else:
        tensor = tensor.unsqueeze(0)  # graph-level vector label: [1, k]
    if field == "forces" and tuple(tensor.shape) != (n, 3):
        raise fail(f"forces have shape {tuple(arr.shape)}, expected ({n}, 3)")
    data[field] = tensor
