"""QM7-X reader (Hoja et al., Sci. Data 8, 43 (2021)): the release's HDF5 files, read directly.

Input: one ``.hdf5``/``.h5`` file (``1000.hdf5`` ... ``8000.hdf5``, decompressed from the
release's ``.xz`` archives) or a folder of them (read in name order). Layout: top-level groups are
molecule IDs (``"1"``), each holding one subgroup per conformer (``"Geom-m1-i1-c1-opt"``,
``"Geom-m1-i1-c1-1"``, ...) with datasets ``atNUM`` [N], ``atXYZ`` [N,3] Å, ``ePBE0+MBD`` [1] eV,
``totFOR`` [N,3] eV/Å (total PBE0+MBD forces) and about 40 more (``eAT``, ``HLgap``, ``DIP``,
``vDIP`` [3], ``hCHG`` [N], ``mTPOL`` [3,3], ...). QM7-X is in eV and Å already: no conversion.

Output per conformer: ``energy`` (eV), ``forces`` (eV/Å), ``molecule`` [1] (long: the molecule ID,
for splitting by molecule), ``name`` (the conformer's group name), a molecule without cell.
Conformers of one molecule are strongly correlated: split train/val/test BY MOLECULE (as FAENet
does), with ``molecules=`` lists or with different files per split, never by conformer.

Options:
    energy: dataset holding the energy (default ``ePBE0+MBD``; ``none`` for no energy).
    forces: dataset holding the forces (default ``totFOR``; ``none`` for no forces).
    properties: extra datasets kept as labels under their own names, a list or a comma-separated
        string (``HLgap,vDIP``): scalars as [1], per-atom arrays as [N,...], molecular vectors
        and tensors (``vDIP``, ``mTPOL``, ...) flattened to [1,k]. Units as in QM7-X.
    molecules: molecule IDs to keep: a file with one ID per line, or a list of integers.

Needs h5py (``pip install 'frameavg[qm7x]'``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import ase
import numpy as np
import torch
from torch_geometric.data import Data

from frameavg.data.readers.registry import ReadOptions, read_head, register
from frameavg.errors import ConfigError, DataError

SUFFIXES = (".hdf5", ".h5")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
DEFAULT_ENERGY = "ePBE0+MBD"
DEFAULT_FORCES = "totFOR"
NEEDS_H5PY = "reading QM7-X needs h5py: pip install 'frameavg[qm7x]'"
#: QM7-X datasets that describe the whole molecule even when their length equals the atom count
#: (energies e*, molecular m*, multipole vectors): stored as graph-level labels.
_MOLECULAR = re.compile(r"^(e.*|m.*|DIP|HLgap|KSE|sMIT|sRMSD|vDIP|vTQ|vIQ|vEQ)$")


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError(NEEDS_H5PY) from None
    return h5py


def hdf5_files(path: Path) -> list[Path]:
    """The file itself, or the sorted ``.hdf5``/``.h5`` files of a folder."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise DataError("folder contains no .hdf5/.h5 files", source=str(path))
        return files
    return [path]


def _natural(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def sniff(path: Path) -> bool:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            return False
        path = files[0]
    elif not path.is_file() or path.suffix.lower() not in SUFFIXES:
        return False
    if read_head(path, 8) != HDF5_MAGIC:
        return False
    try:
        h5py = _h5py()
    except DataError:
        return True  # an HDF5 file: reading it reports the missing h5py
    try:
        with h5py.File(path, "r") as handle:
            molecule = next((handle[k] for k in handle if isinstance(handle[k], h5py.Group)), None)
            if molecule is None:
                return False
            conformer = next((molecule[k] for k in molecule if isinstance(molecule[k], h5py.Group)), None)
            return conformer is not None and "atXYZ" in conformer
    except Exception:  # h5py raises OSError/KeyError/RuntimeError for damaged files
        return False


def _names(value, option: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    try:
        names = tuple(str(v).strip() for v in value)
    except TypeError:
        raise ConfigError(f"QM7-X {option}: expected dataset names, got {value!r}") from None
    return tuple(n for n in names if n)


def _dataset_option(value, default: str) -> str | None:
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lower() in ("none", "", "null"):
        return None
    if value is False:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"QM7-X: expected a dataset name or 'none', got {value!r}")
    return value.strip()


def read_molecules(spec) -> set[int]:
    """Molecule IDs from ``spec``: a file with one ID per line (``#`` comments allowed) or a list."""
    if isinstance(spec, (str, Path)):
        file = Path(spec)
        if not file.is_file():
            raise DataError("molecules file not found", source=str(file))
        ids = set()
        for line_no, line in enumerate(file.read_text().splitlines(), start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                ids.add(int(text))
            except ValueError:
                raise DataError(f"line {line_no}: not an integer molecule ID: {text!r}", source=str(file)) from None
        if not ids:
            raise DataError("molecules file lists no molecule IDs", source=str(file))
        return ids
    try:
        return {int(v) for v in spec}
    except (TypeError, ValueError):
        raise ConfigError(f"QM7-X molecules: expected a file or a list of integer IDs, got {spec!r}") from None


@register("qm7x", sniff=sniff)
def iterate(path: Path, options: ReadOptions) -> Iterator[Data]:
    h5py = _h5py()
    energy = _dataset_option(options.extra.get("energy"), DEFAULT_ENERGY)
    forces = _dataset_option(options.extra.get("forces"), DEFAULT_FORCES)
    properties = _names(options.extra.get("properties"), "properties")
    spec = options.extra.get("molecules")
    molecules = None if spec is None else read_molecules(spec)
    return _iterate(h5py, hdf5_files(path), energy, forces, properties, molecules, options)


def _iterate(h5py, files, energy, forces, properties, molecules, options) -> Iterator[Data]:
    total = 0
    for file in files:
        source = str(file)
        index = 0
        try:
            handle = h5py.File(file, "r")
        except OSError as exc:
            raise DataError(f"not a readable HDF5 file ({exc})", source=source) from None
        with handle:
            for molecule_name in sorted(handle, key=_natural):
                group = handle[molecule_name]
                if not isinstance(group, h5py.Group):
                    continue
                try:
                    molecule_id = int(molecule_name)
                except ValueError:
                    raise DataError(f"top-level group '{molecule_name}' is not a QM7-X molecule ID (an integer)",
                                    source=source) from None
                if molecules is not None and molecule_id not in molecules:
                    continue
                for conformer_name in sorted(group, key=_natural):
                    conformer = group[conformer_name]
                    if not isinstance(conformer, h5py.Group):
                        continue
                    yield _to_data(conformer, molecule_id, molecule_name, conformer_name, energy, forces, properties,
                                   options, source, index)
                    index += 1
        total += index
    if total == 0:
        where = str(files[0]) if len(files) == 1 else str(files[0].parent)
        raise DataError("no structures found" + (" for the selected molecules" if molecules is not None else ""),
                        source=where)


def _to_data(conformer, molecule_id, molecule_name, conformer_name, energy, forces, properties, options,
             source, index) -> Data:
    where = f"molecule {molecule_name}, conformer {conformer_name}"

    def fail(message):
        return DataError(f"{where}: {message}", source=source, index=index)

    def read(name):
        if name not in conformer:
            available = ", ".join(sorted(conformer))
            raise fail(f"dataset '{name}' missing (available: {available or 'none'})")
        try:
            return np.asarray(conformer[name][()])
        except Exception as exc:  # damaged datasets raise OSError/RuntimeError/...
            raise fail(f"cannot read dataset '{name}' ({type(exc).__name__}: {exc})") from None

    numbers = read("atNUM")
    positions = read("atXYZ")
    if numbers.ndim != 1 or numbers.dtype.kind not in "iuf":
        raise fail(f"'atNUM' must be [N] atomic numbers, got shape {numbers.shape} ({numbers.dtype})")
    n = len(numbers)
    if positions.shape != (n, 3):
        raise fail(f"'atXYZ' has shape {positions.shape}, expected ({n}, 3) for {n} atoms ('atNUM')")
    atoms = ase.Atoms(numbers=numbers.astype(np.int64), positions=positions.astype(np.float64))
    if energy is not None:
        value = read(energy)
        if value.size != 1 or value.dtype.kind not in "iuf":
            raise fail(f"energy dataset '{energy}' has shape {value.shape}, expected one number")
        atoms.info["energy"] = float(value.reshape(-1)[0])
    if forces is not None:
        value = read(forces)
        if value.shape != (n, 3):
            raise fail(f"forces dataset '{forces}' has shape {value.shape}, expected ({n}, 3)")
        atoms.new_array("forces", value.astype(np.float64))
    molecular = {}
    for name in properties:
        value = read(name)
        if value.dtype.kind not in "biuf":
            raise fail(f"dataset '{name}' is not numeric ({value.dtype})")
        if value.size == 1:
            atoms.info[name] = value.reshape(-1)[0].item()
        elif value.ndim >= 1 and value.shape[0] == n and not _MOLECULAR.match(name):
            atoms.new_array(name, value)
        else:
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise fail(f"label '{name}' contains NaN or inf")
            molecular[name] = value.reshape(1, -1)
    atoms.info["molecule"] = molecule_id
    data = options.to_data(atoms, source=source, index=index)
    for name, value in molecular.items():
        if value.dtype.kind == "f":
            data[name] = torch.as_tensor(value, dtype=options.dtype)
        else:
            data[name] = torch.as_tensor(value.astype(np.int64) if value.dtype.kind in "iu" else value)
    data.name = conformer_name
    return data
