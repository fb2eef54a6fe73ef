"""QM9 reader: the ``qm9pack`` CSV files and extxyz files with the same property columns.

Sources (detected automatically):
- a ``qm9pack`` CSV (header contains ``XYZ_Ang``; coordinates in Å as a JSON-like list in that
  column, element symbols in ``Elements``), or a folder of them (``qm9_part*.csv``, as in the
  ``qm9pack`` wheel: ``pip install 'frameavg[qm9]'``; the path ``qm9pack`` means that folder);
- an extxyz file whose ``info`` carries the same column names (``shipped:qm9_subset``).

Targets are stored under short names, converted as PyTorch Geometric's QM9 does (energies in eV,
everything else in its original unit):

=========  ============================  ==============  =========================================
name       source column                 unit            meaning
=========  ============================  ==============  =========================================
mu         Dipole_debye                  D               dipole moment
alpha      Polarizability_bohr3          bohr³           isotropic polarizability
homo       HOMO_au                       eV              HOMO energy
lumo       LUMO_au                       eV              LUMO energy
gap        HOMO_LUMO_gap_au              eV              HOMO-LUMO gap
r2         R2_bohr2                      bohr²           electronic spatial extent
zpve       ZPVE_au                       eV              zero-point vibrational energy
U0         InternalEnergy_0K_au          eV              internal energy at 0 K
U          InternalEnergy_298K_au        eV              internal energy at 298.15 K
H          Enthalphy_298K_au             eV              enthalpy at 298.15 K
G          GibbsFreeEnergy_298K_au       eV              free energy at 298.15 K
Cv         Heatcapacity_Cv_cal_mol_K     cal/(mol K)     heat capacity at 298.15 K
A, B, C    RotA_GHz, RotB_GHz, RotC_GHz  GHz             rotational constants
U0_atom    (U0 - Σ atom refs)            eV              atomization energy at 0 K
U_atom     (U - Σ atom refs)             eV              atomization energy at 298.15 K
H_atom     (H - Σ atom refs)             eV              atomization enthalpy at 298.15 K
G_atom     (G - Σ atom refs)             eV              atomization free energy at 298.15 K
=========  ============================  ==============  =========================================

Hartree -> eV uses 27.211386246 (CODATA 2018, as PyG). Atom reference energies are the free-atom
B3LYP/6-31G(2df,p) values of the QM9 release (``atomref``). ``targets=("U0", "gap")`` keeps only
those; ``keys={"energy": "U0"}`` makes one of them the ``energy`` field. The QM9 index is kept as
``idx`` [1] (long).
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from typing import Iterable, Iterator

import ase
import ase.io
import numpy as np
from torch_geometric.data import Data

from frameavg.data.readers.ase_files import describe_parse_error, iread_frames
from frameavg.data.readers.registry import ReadOptions, read_head, register
from frameavg.errors import ConfigError, DataError

HARTREE_TO_EV = 27.211386246

#: name -> (source column, factor to our unit, unit)
TARGETS = {
    "mu": ("Dipole_debye", 1.0, "D"),
    "alpha": ("Polarizability_bohr3", 1.0, "bohr^3"),
    "homo": ("HOMO_au", HARTREE_TO_EV, "eV"),
    "lumo": ("LUMO_au", HARTREE_TO_EV, "eV"),
    "gap": ("HOMO_LUMO_gap_au", HARTREE_TO_EV, "eV"),
    "r2": ("R2_bohr2", 1.0, "bohr^2"),
    "zpve": ("ZPVE_au", HARTREE_TO_EV, "eV"),
    "U0": ("InternalEnergy_0K_au", HARTREE_TO_EV, "eV"),
    "U": ("InternalEnergy_298K_au", HARTREE_TO_EV, "eV"),
    "H": ("Enthalphy_298K_au", HARTREE_TO_EV, "eV"),
    "G": ("GibbsFreeEnergy_298K_au", HARTREE_TO_EV, "eV"),
    "Cv": ("Heatcapacity_Cv_cal_mol_K", 1.0, "cal/(mol K)"),
    "A": ("RotA_GHz", 1.0, "GHz"),
    "B": ("RotB_GHz", 1.0, "GHz"),
    "C": ("RotC_GHz", 1.0, "GHz"),
}
#: Free-atom energies (Hartree) of H, C, N, O, F for U0, U, H, G (QM9 atomref).
ATOM_REFS = {
    "U0": {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730},
    "U": {1: -0.498857, 6: -37.845355, 7: -54.582445, 8: -75.063163, 9: -99.717314},
    "H": {1: -0.497912, 6: -37.844411, 7: -54.581501, 8: -75.062219, 9: -99.716370},
    "G": {1: -0.510927, 6: -37.861317, 7: -54.598897, 8: -75.079532, 9: -99.733544},
}
ALL_TARGETS = (*TARGETS, *(f"{name}_atom" for name in ATOM_REFS))
_MARKER = "InternalEnergy_0K_au"


def paper_units(target: str) -> tuple[str, float] | None:
    """(unit, factor from our unit) in which QM9 papers report the MAE of ``target``: meV for
    energies, the native unit (D, bohr³, ...) otherwise; None if ``target`` is no QM9 target."""
    base = target[: -len("_atom")] if target.endswith("_atom") else target
    if base not in TARGETS:
        return None
    unit = TARGETS[base][2]
    return ("meV", 1000.0) if unit == "eV" else (unit, 1.0)


def qm9pack_folder() -> Path:
    """The CSV folder of the installed ``qm9pack`` package (optional extra ``frameavg[qm9]``)."""
    spec = importlib.util.find_spec("qm9pack")  # locate without importing (it pulls in pandas)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("package qm9pack is not installed: pip install 'frameavg[qm9]'", source="qm9pack")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def csv_files(path: Path) -> list[Path]:
    """QM9 CSV files at ``path``: the file itself, or the ``qm9_part*.csv`` of a folder."""
    if path.is_dir():
        files = sorted(path.glob("qm9_part*.csv")) or sorted(p for p in path.glob("*.csv") if _is_qm9_csv(p))
        if not files:
            raise DataError("folder has no QM9 CSV files (qm9_part*.csv)", source=str(path))
        return files
    return [path]


def _is_qm9_csv(path: Path) -> bool:
    return path.is_file() and b"XYZ_Ang" in read_head(path, 2048).split(b"\n", 1)[0]


def sniff(path: Path) -> bool:
    if path.is_dir():
        return any(path.glob("qm9_part*.csv"))
    if path.suffix.lower() == ".csv":
        return _is_qm9_csv(path)
    if path.suffix.lower() in (".xyz", ".extxyz"):
        lines = read_head(path, 8192).split(b"\n")
        return len(lines) > 1 and _MARKER.encode() in lines[1]
    return False


def select_targets(targets: Iterable[str] | None) -> tuple[str, ...]:
    if targets is None:
        return ALL_TARGETS
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        raise ConfigError(f"unknown QM9 target(s) {', '.join(unknown)}; available: {', '.join(ALL_TARGETS)}")
    return targets


def convert_targets(raw: dict, numbers: np.ndarray, targets: tuple[str, ...], fail) -> dict:
    """Our target values (see module table) from the raw QM9 columns of one molecule."""
    values = {}
    for name in targets:
        base = name[: -len("_atom")] if name.endswith("_atom") else name
        column, factor, _ = TARGETS[base]
        if column not in raw:
            raise fail(f"QM9 column '{column}' (target '{name}') missing")
        try:
            value = float(raw[column])
        except (TypeError, ValueError):
            raise fail(f"QM9 column '{column}' is not a number: {raw[column]!r}") from None
        if name.endswith("_atom"):
            refs = ATOM_REFS[base]
            unknown = sorted(set(numbers.tolist()) - set(refs))
            if unknown:
                raise fail(f"no QM9 atom reference for Z={unknown} (target '{name}')")
            value -= sum(refs[int(z)] for z in numbers)
        values[name] = value * factor
    return values


def _parse_list(text: str, fail, what: str) -> list[str]:
    items = [t.strip().strip("'\"") for t in text.replace("[", " ").replace("]", " ").split(",")]
    items = [t for t in items if t]
    if not items:
        raise fail(f"empty {what}")
    return items


def iterate_csv(path: Path, options: ReadOptions, targets: tuple[str, ...]) -> Iterator[Data]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    for file in csv_files(path):
        source = str(file)
        with open(file, newline="") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "XYZ_Ang" not in reader.fieldnames or "Elements" not in reader.fieldnames:
                raise DataError(f"not a QM9 CSV (columns: {reader.fieldnames})", source=source)
            index = -1
            for index, row in enumerate(reader):

                def fail(message, index=index):
                    return DataError(message, source=source, index=index)

                symbols = _parse_list(row["Elements"] or "", fail, "Elements")
                try:
                    coords = np.array(_parse_list(row["XYZ_Ang"] or "", fail, "XYZ_Ang"), dtype=np.float64)
                except ValueError:
                    raise fail("XYZ_Ang has non-numeric coordinates") from None
                if coords.size != 3 * len(symbols):
                    raise fail(f"XYZ_Ang has {coords.size} numbers for {len(symbols)} atoms")
                try:
                    atoms = ase.Atoms(symbols=symbols, positions=coords.reshape(-1, 3))
                except (KeyError, ValueError) as exc:
                    raise fail(describe_parse_error(exc)) from None
                yield _to_data(atoms, row, row.get("Index"), options, targets, source, index)
            if index < 0:
                raise DataError("no structures found", source=source)


def iterate_extxyz(path: Path, options: ReadOptions, targets: tuple[str, ...]) -> Iterator[Data]:
    source = str(path)
    for index, atoms in iread_frames(source, "extxyz"):
        raw = dict(atoms.info)
        atoms.info = {}
        yield _to_data(atoms, raw, raw.get("index"), options, targets, source, index)


def _to_data(atoms, raw, qm9_index, options, targets, source, index) -> Data:
    def fail(message):
        return DataError(message, source=source, index=index)

    atoms.info.update(convert_targets(raw, atoms.numbers, targets, fail))
    if qm9_index not in (None, ""):
        atoms.info["idx"] = int(qm9_index)
    return options.to_data(atoms, source=source, index=index)


@register("qm9", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    targets = select_targets(options.extra.get("targets"))
    if path.suffix.lower() in (".xyz", ".extxyz"):
        return iterate_extxyz(path, options, targets)
    return iterate_csv(path, options, targets)
