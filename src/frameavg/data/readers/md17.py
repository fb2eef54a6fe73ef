"""MD17 reader: the ``.npz`` files of revised MD17 (rMD17) and of the original MD17 / sGDML.

Layouts (detected from the array names):

- rMD17 (Christensen & von Lilienfeld 2020, ``rmd17_ethanol.npz``): ``nuclear_charges`` [N],
  ``coords`` [M,N,3] Å, ``energies`` [M] kcal/mol, ``forces`` [M,N,3] kcal/mol/Å; the arrays
  ``old_indices``, ``old_energies``, ``old_forces`` (the original MD17 frames) are ignored.
- MD17 / sGDML (``md17_ethanol.npz``): ``z`` [N], ``R`` [M,N,3] Å, ``E`` [M] or [M,1] kcal/mol,
  ``F`` [M,N,3] kcal/mol/Å; string arrays (``name``, ``theory``, ``type``, ``md5``, ...) are
  ignored. sGDML files that state their units (``e_unit``, ``r_unit``) are read in those.

Both files store forces (F = −dE/dx). Output per frame: ``energy`` (eV), ``forces`` (eV/Å), ``idx``
[1] (long: the frame's position in the file), a molecule without cell (pbc False).

Options:
    units: energy unit of the file, ``kcal/mol`` (default, or the file's ``e_unit``) or ``eV``;
        forces are in that unit per Å. kcal/mol -> eV uses ``ase.units.kcal / ase.units.mol``.
    indices: frames to keep, in that order: a file with one 0-based integer per line (rMD17's
        ``splits/index_train_01.csv``) or a list of integers.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator

import ase
import ase.units
import numpy as np
from torch_geometric.data import Data

from frameavg.data.readers.registry import ReadOptions, register
from frameavg.errors import ConfigError, DataError

KCAL_PER_MOL_TO_EV = ase.units.kcal / ase.units.mol
#: energy unit -> factor to eV
UNITS = {"kcal/mol": KCAL_PER_MOL_TO_EV, "ev": 1.0}
#: layout -> (numbers, positions, energies, forces) array names
LAYOUTS = {
    "rMD17": ("nuclear_charges", "coords", "energies", "forces"),
    "MD17/sGDML": ("z", "R", "E", "F"),
}
_ANGSTROM = {"ang", "angstrom", "a", "å"}


def _keys(path: Path) -> list[str] | None:
    """Array names of an ``.npz`` file (None if it is no readable zip archive)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return None


def layout(keys) -> str | None:
    """``"rMD17"`` or ``"MD17/sGDML"`` when ``keys`` hold that layout's arrays, else None."""
    keys = set(keys)
    for name, arrays in LAYOUTS.items():
        if set(arrays) <= keys:
            return name
    return None


def sniff(path: Path) -> bool:
    if not path.is_file() or path.suffix.lower() != ".npz":
        return False
    keys = _keys(path)
    return keys is not None and layout(keys) is not None


def energy_factor(requested, e_unit: str | None, r_unit: str | None, source: str) -> float:
    """Factor to eV of the file's energies: the ``units`` option, else the file's ``e_unit``, else
    kcal/mol. Positions must be in Å (``r_unit``, when the file states it)."""
    if requested is not None:
        if str(requested).lower() not in UNITS:
            raise ConfigError(f"MD17: unknown units '{requested}'; choose kcal/mol or eV")
        unit = str(requested)
    elif e_unit is not None:
        unit = e_unit
        if unit.lower() not in UNITS:
            raise DataError(f"energies are in '{unit}' (e_unit); pass units=kcal/mol or units=eV", source=source)
    else:
        unit = "kcal/mol"
    if r_unit is not None and r_unit.lower() not in _ANGSTROM:
        raise DataError(f"positions are in '{r_unit}' (r_unit); the MD17 reader reads Å only", source=source)
    return UNITS[unit.lower()]


def read_indices(spec, count: int, source: str) -> np.ndarray:
    """Frame indices from ``spec`` (a file of one integer per line, or a list of integers)."""
    if isinstance(spec, (str, Path)):
        file = Path(spec)
        if not file.is_file():
            raise DataError("indices file not found", source=str(file))
        values = []
        for line_no, line in enumerate(file.read_text().splitlines(), start=1):
            text = line.strip().strip(",")
            if not text or text.startswith("#"):
                continue
            try:
                values.append(int(text))
            except ValueError:
                raise DataError(f"line {line_no}: not an integer frame index: {text!r}", source=str(file)) from None
        if not values:
            raise DataError("indices file lists no frames", source=str(file))
        indices = np.asarray(values, dtype=np.int64)
    else:
        try:
            indices = np.asarray(list(spec), dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            raise ConfigError(f"MD17 indices: expected a file or a list of integers, got {spec!r}") from None
    bad = (indices < 0) | (indices >= count)
    if bad.any():
        raise DataError(f"frame index {int(indices[bad][0])} out of range (the file has {count} frames)", source=source)
    return indices


def _text(array) -> str:
    """A string array of an sGDML file (``e_unit``: ``array('kcal/mol')``) as a str."""
    value = np.asarray(array).reshape(-1)[0].item()
    return value.decode() if isinstance(value, bytes) else str(value)


def load(path: Path) -> dict:
    """The arrays of an MD17 ``.npz`` file, checked: numbers [N], positions [M,N,3] Å, energies
    [M] and forces [M,N,3] in the file's units, plus the layout name."""
    source = str(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"not a readable .npz file ({type(exc).__name__}: {exc})", source=source) from None
    with archive:
        name = layout(archive.files)
        if name is None:
            expected = "; ".join(f"{k}: {', '.join(v)}" for k, v in LAYOUTS.items())
            raise DataError(f"not an MD17 file: arrays {', '.join(sorted(archive.files)) or 'none'}; "
                            f"expected {expected}", source=source)
        z_key, r_key, e_key, f_key = LAYOUTS[name]
        try:
            arrays = {key: np.asarray(archive[key]) for key in (z_key, r_key, e_key, f_key)}
            result = {"layout": name, **{key: _text(archive[key]) if key in archive.files else None
                                         for key in ("e_unit", "r_unit")}}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read the arrays ({type(exc).__name__}: {exc})", source=source) from None
    numbers, positions, energies, forces = (arrays[k] for k in (z_key, r_key, e_key, f_key))

    def fail(message):
        return DataError(f"{name} layout: {message}", source=source)

    if numbers.ndim != 1 or numbers.dtype.kind not in "iuf" or len(numbers) == 0:
        raise fail(f"'{z_key}' must be [N] atomic numbers, got shape {numbers.shape} ({numbers.dtype})")
    if numbers.dtype.kind == "f" and not np.array_equal(numbers, np.round(numbers)):
        raise fail(f"'{z_key}' holds non-integer atomic numbers")
    n = len(numbers)
    if positions.ndim != 3 or positions.shape[1:] != (n, 3):
        raise fail(f"'{r_key}' has shape {positions.shape}, expected [M, {n}, 3] for {n} atoms ('{z_key}')")
    m = positions.shape[0]
    if energies.ndim not in (1, 2) or energies.shape[0] != m or energies.size != m:
        raise fail(f"'{e_key}' has shape {energies.shape}, expected [{m}] for {m} frames ('{r_key}')")
    if forces.shape != positions.shape:
        raise fail(f"'{f_key}' has shape {forces.shape}, expected {positions.shape} (as '{r_key}')")
    for key, array in ((r_key, positions), (e_key, energies), (f_key, forces)):
        if array.dtype.kind not in "iuf":
            raise fail(f"'{key}' is not numeric ({array.dtype})")
    if m == 0:
        raise DataError("no structures found", source=source)
    result.update(numbers=numbers.astype(np.int64), positions=positions.astype(np.float64, copy=False),
                  energies=energies.reshape(m).astype(np.float64), forces=forces.astype(np.float64, copy=False))
    return result


@register("md17", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    source = str(path)
    units = options.extra.get("units")
    energy_factor(units, None, None, source)  # an unknown option value fails before the file is read
    loaded = load(path)
    factor = energy_factor(units, loaded["e_unit"], loaded["r_unit"], source)
    count = len(loaded["energies"])
    spec = options.extra.get("indices")
    frames = np.arange(count) if spec is None else read_indices(spec, count, source)
    return _frames(loaded, frames, factor, options, source)


def _frames(loaded: dict, frames: np.ndarray, factor: float, options: ReadOptions, source: str) -> Iterator[Data]:
    numbers = loaded["numbers"]
    for frame in frames.tolist():
        atoms = ase.Atoms(numbers=numbers, positions=loaded["positions"][frame])
        atoms.info["energy"] = float(loaded["energies"][frame]) * factor
        atoms.new_array("forces", loaded["forces"][frame] * factor)  # forces already: −dE/dx
        atoms.info["idx"] = int(frame)
        yield options.to_data(atoms, source=source, index=frame)
