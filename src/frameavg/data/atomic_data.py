"""Structures as PyG ``Data`` objects with the field conventions of the project (docs/conventions.md).

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

from typing import Iterable, Mapping

import numpy as np
import torch
from torch_geometric.data import Data

from frameavg.data import lattice
from frameavg.errors import DataError, did_you_mean

#: Atomic numbers the data layer accepts (every known element). Models embed a subset
#: (``EnergyModel.max_z``); the mismatch is reported with both ranges.
MAX_Z = 118
#: Atoms closer than this (Å), to each other or to their own periodic image, are coincident: no
#: real structure has them, and models' edge directions and gradients are undefined there.
MIN_DISTANCE = 0.1
#: OC20 tag convention: 0 subsurface (fixed), 1 surface, 2 adsorbate.
OC20_TAGS = (0, 1, 2)
#: How tags are read: ``auto`` (OC20 when every tag is 0, 1 or 2; otherwise ASE's surface
#: convention), ``oc20`` (as given, must be 0..2), ``ase`` (ASE's builders: layer 1 = top surface,
#: 2, 3, ... deeper, 0 = adsorbate; mapped to OC20) or ``ignore`` (dropped).
TAG_CONVENTIONS = ("auto", "oc20", "ase", "ignore")

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


def _checked_geometry(atoms, fail) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(atomic numbers [N], positions [N, 3] Å, cell [3, 3] Å (zeros without periodicity), pbc [3])
    of ``atoms``, or ``fail(message)`` raised for no atoms, unknown elements, non-finite
    positions, a bad cell or atoms too close."""
    if len(atoms) == 0:
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
    check_distances(positions, cell, pbc, fail)
    return numbers, positions, cell, pbc


def atoms_to_data(
    atoms,
    *,
    keys: Mapping[str, str] | None = None,
    required: Iterable[str] = (),
    source: str | None = None,
    index: int | None = None,
    dtype: torch.dtype = torch.float32,
    tags: str = "auto",
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
        tags: tag convention (``TAG_CONVENTIONS``); tags are stored in OC20's.

    Raises ``DataError`` (naming ``source`` and ``index``) for no atoms, unknown elements,
    non-finite positions or labels, a malformed or singular cell, atoms closer than
    ``MIN_DISTANCE`` to each other or to their own periodic image, and bad tags.
    """

    def fail(message: str) -> DataError:
        return DataError(message, source=source, index=index)

    n = len(atoms)
    numbers, positions, cell, pbc = _checked_geometry(atoms, fail)

    data = Data(
        pos=torch.as_tensor(positions, dtype=dtype),
        atomic_numbers=torch.as_tensor(numbers, dtype=torch.long),
        cell=torch.as_tensor(cell, dtype=dtype).unsqueeze(0),
        pbc=torch.as_tensor(pbc).unsqueeze(0),
        natoms=torch.tensor([n], dtype=torch.long),
        fixed=torch.as_tensor(fixed_mask(atoms)),
    )
    if "tags" in atoms.arrays and tags != "ignore":
        data.tags = torch.as_tensor(convert_tags(np.asarray(atoms.arrays["tags"]), tags, fail), dtype=torch.long)

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


def data_to_atoms(data: Data):
    """An ``ase.Atoms`` of one structure's ``Data`` (positions, numbers, cell, pbc; ``fixed`` as
    ``FixAtoms``; tags in OC20's convention). Labels are not copied."""
    import ase
    from ase.constraints import FixAtoms

    atoms = ase.Atoms(numbers=data.atomic_numbers.cpu().numpy(), positions=data.pos.detach().cpu().double().numpy(),
                      cell=data.cell.reshape(3, 3).detach().cpu().double().numpy(),
                      pbc=data.pbc.reshape(3).cpu().numpy())
    if "tags" in data:
        atoms.set_tags(data.tags.cpu().numpy())
    if "fixed" in data and bool(data.fixed.any()):
        atoms.set_constraint(FixAtoms(mask=data.fixed.cpu().numpy()))
    return atoms


def check_key_mapping(keys: Mapping[str, str], available: Iterable[str], fail) -> None:
    """Raise ``fail(msg)`` if a mapped source key is absent, suggesting the closest existing key."""
    available = sorted(available)
    for field, key in keys.items():
        if key not in available:
            hint = did_you_mean(key, available)
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
    """Raise ``fail(msg)`` unless the periodic lattice vectors are finite and independent, and no
    atom would sit within ``MIN_DISTANCE`` of its own periodic image."""
    if not pbc.any():
        return
    if cell.shape != (3, 3) or not np.isfinite(cell).all():
        raise fail(f"malformed cell (shape {cell.shape}, finite={np.isfinite(cell).all()})")
    rows = cell[pbc]
    if np.linalg.matrix_rank(rows, tol=1e-6 * max(1.0, float(np.abs(rows).max()))) < len(rows):
        raise fail(f"singular cell for periodic axes {np.flatnonzero(pbc).tolist()}: {cell.tolist()}")
    if pbc.all() and abs(np.linalg.det(cell)) < 1e-6:
        raise fail(f"cell has (near) zero volume: {cell.tolist()}")
    shortest = lattice.shortest_length(rows, at_least=MIN_DISTANCE)
    if shortest < MIN_DISTANCE:
        raise fail(f"cell too small: every atom is {shortest:.3g} Å from its own periodic image "
                   f"(closer than {MIN_DISTANCE} Å); cell {np.round(cell, 4).tolist()}")


def check_distances(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, fail) -> None:
    """Raise ``fail(msg)`` if two atoms (or an atom and another's periodic image) are closer than
    ``MIN_DISTANCE``. Call after ``check_cell``."""
    n = len(positions)
    if n < 2:
        return
    basis = lattice.periodic_basis(cell, pbc)
    if n <= _DENSE_DISTANCE_CHECK and (lattice.spacings(basis) > 2 * MIN_DISTANCE).all():
        first, second, distance = _close_pairs_dense(positions, basis)
    else:  # vesin costs ~2 ms per call: large structures, extreme cells
        from vesin import NeighborList

        box = cell if pbc.any() else np.zeros((3, 3))
        first, second, distance = NeighborList(cutoff=MIN_DISTANCE, full_list=False).compute(
            positions, box, pbc, quantities="ijd")
    if len(first):
        k = int(np.argmin(distance))
        raise fail(f"atoms {int(first[k])} and {int(second[k])} are {distance[k]:.3g} Å apart "
                   f"(closer than {MIN_DISTANCE} Å: coincident atoms)")


_DENSE_DISTANCE_CHECK = 128


def _close_pairs_dense(positions, basis):
    """Pairs i < j closer than MIN_DISTANCE (to any periodic image), from all pairwise differences
    with rounded fractional coordinates (exact for such short distances when every lattice
    spacing exceeds 2·MIN_DISTANCE, see ``lattice.spacings``)."""
    diff = positions[None, :, :] - positions[:, None, :]  # [n,n,3] = x_j - x_i
    if basis.shape[0]:
        diff = diff - np.round(diff @ np.linalg.pinv(basis)) @ basis
    distance = np.sqrt((diff * diff).sum(-1))
    first, second = np.nonzero(np.triu(distance < MIN_DISTANCE, k=1))
    return first, second, distance[first, second]


def convert_tags(tags: np.ndarray, convention: str, fail) -> np.ndarray:
    """Tags in OC20's convention (0 subsurface, 1 surface, 2 adsorbate) from ``convention``
    (``TAG_CONVENTIONS``)."""
    if convention not in TAG_CONVENTIONS:
        raise fail(f"unknown tag convention {convention!r} (choose from {', '.join(TAG_CONVENTIONS)})")
    tags = np.asarray(tags).astype(np.int64).reshape(-1)
    if tags.size and tags.min() < 0:
        raise fail(f"negative tag {int(tags.min())}")
    if convention == "auto":
        convention = "oc20" if not tags.size or tags.max() <= 2 else "ase"
    if convention == "ase":  # ASE: 0 adsorbate, 1 top layer, >= 2 deeper layers
        return np.select([tags == 0, tags == 1], [2, 1], 0)
    if tags.size and tags.max() > 2:
        raise fail(f"tag {int(tags.max())}: OC20 tags are 0 (subsurface), 1 (surface) or 2 (adsorbate); "
                   "ASE's surface builders number layers 1, 2, ... with 0 for adsorbates (read them with tags='ase')")
    return tags


def validate_data(data: Data, fail, *, distances: bool = False) -> None:
    """Check a ``Data`` read from storage (our LMDB, user code): the fields and shapes of the
    table above, known elements, finite positions, cell and labels, a valid cell, tags 0..2, and
    (``distances``) no coincident atoms. Raises ``fail(msg)``."""
    for name in ("pos", "atomic_numbers"):
        if not isinstance(data.get(name), torch.Tensor):
            raise fail(f"missing field '{name}'")
    pos, z = data.pos, data.atomic_numbers
    n = pos.shape[0] if pos.dim() == 2 else -1
    if pos.dim() != 2 or pos.shape[1] != 3 or not pos.is_floating_point():
        raise fail(f"pos must be a float tensor [N,3], got {tuple(pos.shape)} {pos.dtype}")
    if n == 0:
        raise fail("structure has zero atoms")
    if tuple(z.shape) != (n,) or z.is_floating_point():
        raise fail(f"atomic_numbers must be an integer tensor [{n}], got {tuple(z.shape)} {z.dtype}")
    low, high = int(z.min()), int(z.max())
    if low < 1 or high > MAX_Z:
        raise fail(f"unknown element: atomic number {low if low < 1 else high} (valid: 1..{MAX_Z})")
    if not bool(torch.isfinite(pos).all()):
        atom = int(torch.nonzero(~torch.isfinite(pos).all(dim=1))[0])
        raise fail(f"non-finite position (NaN or inf) for atom {atom}")
    natoms = data.get("natoms")
    if natoms is not None and (natoms.numel() != 1 or int(natoms.reshape(-1)[0]) != n):
        raise fail(f"natoms {natoms.tolist()} does not match {n} positions")
    cell, pbc = data.get("cell"), data.get("pbc")
    if cell is None or pbc is None:
        raise fail("missing field 'cell' or 'pbc' (molecules store a zero cell and pbc all False)")
    if cell.numel() != 9 or pbc.numel() != 3 or pbc.dtype != torch.bool:
        raise fail(f"cell must be [1,3,3] and pbc [1,3] bool, got {tuple(cell.shape)} and {tuple(pbc.shape)} {pbc.dtype}")
    cell_np, pbc_np = cell.double().reshape(3, 3).numpy(), pbc.reshape(3).numpy()
    check_cell(cell_np, pbc_np, fail)
    for name in ("fixed", "tags"):
        value = data.get(name)
        if value is not None and tuple(value.shape) != (n,):
            raise fail(f"'{name}' must have shape [{n}], got {tuple(value.shape)}")
    if data.get("tags") is not None:
        convert_tags(data.tags.numpy(), "oc20", fail)
    for name, value in data.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise fail(f"field '{name}' contains NaN or inf")
    forces = data.get("forces")
    if forces is not None and tuple(forces.shape) != (n, 3):
        raise fail(f"forces have shape {tuple(forces.shape)}, expected ({n}, 3)")
    if distances:
        check_distances(pos.double().numpy(), cell_np, pbc_np, fail)


def fixed_mask(atoms) -> np.ndarray:
    """[N] bool: atoms held fixed (``fixed`` / OC20 ``move_mask`` arrays, ``FixAtoms`` constraints)."""
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
