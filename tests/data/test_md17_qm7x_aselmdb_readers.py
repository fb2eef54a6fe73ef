"""The md17, qm7x and aselmdb readers on files written here in the real layouts: units, force signs,
molecule-wise selection, auto-detection, one-line errors, the CLI."""

import json
import shutil
import subprocess
import sys

import ase
import ase.io
import ase.units
import numpy as np
import pytest
import torch

from frameavg.data import detect_format, iter_structures, read_structures
from frameavg.data.shipped import shipped_path
from frameavg.errors import ConfigError, DataError

try:
    import h5py
except ImportError:  # optional: pip install 'frameavg[qm7x]'
    h5py = None
try:
    import ase_db_backends
except ImportError:  # optional: pip install 'frameavg[aselmdb]'
    ase_db_backends = None

needs_h5py = pytest.mark.skipif(h5py is None, reason="h5py not installed")
needs_backends = pytest.mark.skipif(ase_db_backends is None, reason="ase-db-backends not installed")
KCAL = ase.units.kcal / ase.units.mol  # eV per kcal/mol


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- MD17
@pytest.fixture(scope="module")
def ethanol():
    """3 frames of the shipped rMD17 ethanol file (energies eV, forces eV/Å)."""
    frames = ase.io.read(shipped_path("rmd17_ethanol/train"), ":3")
    numbers = frames[0].numbers
    assert all((f.numbers == numbers).all() for f in frames)
    return {
        "numbers": numbers,
        "positions": np.stack([f.positions for f in frames]),
        "energies": np.array([f.get_potential_energy() for f in frames]),
        "forces": np.stack([f.get_forces() for f in frames]),
    }


def write_rmd17(path, e, kcal=True):
    factor = 1 / KCAL if kcal else 1.0
    m = len(e["energies"])
    np.savez(path, nuclear_charges=e["numbers"], coords=e["positions"], energies=e["energies"] * factor,
             forces=e["forces"] * factor, old_indices=np.arange(m) * 7, old_energies=np.zeros(m),
             old_forces=np.zeros_like(e["forces"]))
    return path


def write_sgdml(path, e, energy_shape=(-1, 1), **extra):
    np.savez(path, z=e["numbers"], R=e["positions"], E=(e["energies"] / KCAL).reshape(energy_shape),
             F=e["forces"] / KCAL, name=np.array("ethanol"), theory=np.array("DFT: PBE+TS"), type=np.array("d"),
             md5=np.array("0123abcd"), **extra)
    return path


def _check_eV(structures, e, frames=(0, 1, 2)):
    assert len(structures) == len(frames)
    for data, i in zip(structures, frames):
        np.testing.assert_allclose(data.energy.item(), e["energies"][i], rtol=1e-6)
        np.testing.assert_allclose(data.forces.double().numpy(), e["forces"][i], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(data.pos.double().numpy(), e["positions"][i], atol=1e-12)
        assert data.atomic_numbers.tolist() == e["numbers"].tolist()
        assert not data.pbc.any() and not data.cell.any()
        assert data.idx.tolist() == [i]


def test_kcal_factor():
    assert KCAL == pytest.approx(0.0433641, rel=1e-5)


def test_rmd17_round_trip_in_ev(tmp_path, ethanol):
    path = write_rmd17(tmp_path / "rmd17_ethanol.npz", ethanol)
    assert detect_format(path) == "md17"
    structures = read_structures(path, dtype=torch.float64)
    _check_eV(structures, ethanol)
    # forces keep their sign: they point down the energy gradient, as in the xyz file
    xyz_forces = ase.io.read(shipped_path("rmd17_ethanol/train"), 0).get_forces()
    assert np.sign(structures[0].forces.numpy()).tolist() == np.sign(xyz_forces).tolist()


def test_sgdml_round_trip_both_energy_shapes(tmp_path, ethanol):
    for shape in ((-1, 1), (-1,)):
        path = write_sgdml(tmp_path / f"md17_ethanol_{len(shape)}.npz", ethanol, energy_shape=shape)
        assert detect_format(path) == "md17"
        _check_eV(read_structures(path, dtype=torch.float64), ethanol)


def test_md17_units_option_and_file_units(tmp_path, ethanol):
    path = tmp_path / "ev.npz"
    np.savez(path, z=ethanol["numbers"], R=ethanol["positions"], E=ethanol["energies"], F=ethanol["forces"])
    _check_eV(read_structures(path, units="eV", dtype=torch.float64), ethanol)
    stated = tmp_path / "stated.npz"
    np.savez(stated, z=ethanol["numbers"], R=ethanol["positions"], E=ethanol["energies"], F=ethanol["forces"],
             e_unit=np.array("eV"), r_unit=np.array("Ang"))
    _check_eV(read_structures(stated, dtype=torch.float64), ethanol)  # the file's e_unit
    with pytest.raises(ConfigError, match="unknown units 'hartree'"):
        read_structures(path, units="hartree")
    bohr = tmp_path / "bohr.npz"
    np.savez(bohr, z=ethanol["numbers"], R=ethanol["positions"], E=ethanol["energies"], F=ethanol["forces"],
             r_unit=np.array("bohr"))
    with pytest.raises(DataError, match="positions are in 'bohr'"):
        read_structures(bohr)


def test_md17_indices_file(tmp_path, ethanol):
    path = write_rmd17(tmp_path / "rmd17_ethanol.npz", ethanol)
    index_file = tmp_path / "index_train_01.csv"
    index_file.write_text("2\n0\n")
    _check_eV(read_structures(path, indices=str(index_file), dtype=torch.float64), ethanol, frames=(2, 0))
    assert [int(d.idx) for d in read_structures(path, indices=[1])] == [1]
    index_file.write_text("5\n")
    with pytest.raises(DataError, match="frame index 5 out of range") as exc:
        read_structures(path, indices=str(index_file))
    _one_line(exc)


def test_md17_wrong_keys_and_shapes(tmp_path, ethanol):
    other = tmp_path / "other.npz"
    np.savez(other, positions=ethanol["positions"], numbers=ethanol["numbers"])
    assert _detect_or_none(other) != "md17"
    with pytest.raises(DataError) as exc:
        read_structures(other, format="md17")
    message = _one_line(exc)
    assert "arrays numbers, positions" in message and "nuclear_charges, coords, energies, forces" in message
    assert "z, R, E, F" in message

    bad = tmp_path / "bad.npz"
    np.savez(bad, nuclear_charges=ethanol["numbers"], coords=ethanol["positions"],
             energies=ethanol["energies"][:2] / KCAL, forces=ethanol["forces"] / KCAL)
    assert detect_format(bad) == "md17"
    expected = r"rMD17 layout: 'energies' has shape \(2,\), expected \[3\] for 3 frames \('coords'\)"
    with pytest.raises(DataError, match=expected) as exc:
        read_structures(bad)
    _one_line(exc)
    bad_forces = tmp_path / "bad_forces.npz"
    np.savez(bad_forces, z=ethanol["numbers"], R=ethanol["positions"], E=ethanol["energies"],
             F=ethanol["forces"][:, :4])
    with pytest.raises(DataError, match=r"'F' has shape \(3, 4, 3\), expected \(3, 9, 3\)"):
        read_structures(bad_forces)


def _detect_or_none(path):
    try:
        return detect_format(path)
    except DataError:
        return None


# ----------------------------------------------------------------------------- QM7-X
#: (molecule ID, conformers, atomic numbers) of the synthetic QM7-X file
QM7X_MOLECULES = ((1, ("Geom-m1-i1-c1-opt", "Geom-m1-i1-c1-1"), (6, 1, 1, 1, 1)),
                  (2, ("Geom-m2-i1-c1-opt", "Geom-m2-i1-c1-1"), (8, 1, 1)))


def qm7x_values(molecule, k, n):
    rng = np.random.default_rng(100 * molecule + k)
    positions = np.cumsum(np.full((n, 3), 1.1), axis=0) + rng.normal(0, 0.05, (n, 3))
    return {"atXYZ": positions, "ePBE0+MBD": np.array([-1000.0 * molecule - 0.5 * k]),
            "totFOR": rng.normal(0, 1, (n, 3)), "eAT": np.array([-10.0 * molecule - k]),
            "HLgap": np.array([7.0 + k]), "DIP": np.array([0.1 * molecule]), "vDIP": rng.normal(0, 1, 3),
            "hCHG": rng.normal(0, 0.1, n), "mTPOL": rng.normal(0, 1, (3, 3))}


def write_qm7x(path, molecules=QM7X_MOLECULES, drop=None):
    with h5py.File(path, "w") as handle:
        for molecule, conformers, numbers in molecules:
            group = handle.create_group(str(molecule))
            for k, name in enumerate(conformers):
                conformer = group.create_group(name)
                conformer["atNUM"] = np.array(numbers, dtype=np.int64)
                for key, value in qm7x_values(molecule, k, len(numbers)).items():
                    if (molecule, name, key) != drop:
                        conformer[key] = value
    return path


@needs_h5py
def test_qm7x_round_trip(tmp_path):
    path = write_qm7x(tmp_path / "1000.hdf5")
    assert detect_format(path) == "qm7x"
    structures = read_structures(path, dtype=torch.float64)
    assert [d.name for d in structures] == ["Geom-m1-i1-c1-1", "Geom-m1-i1-c1-opt",
                                            "Geom-m2-i1-c1-1", "Geom-m2-i1-c1-opt"]
    assert [int(d.molecule) for d in structures] == [1, 1, 2, 2]
    for data in structures:
        molecule = int(data.molecule)
        k = {"opt": 0, "1": 1}[data.name.rsplit("-", 1)[1]]
        numbers = dict((m, z) for m, _, z in QM7X_MOLECULES)[molecule]
        expected = qm7x_values(molecule, k, len(numbers))
        assert data.molecule.dtype == torch.long and data.molecule.shape == (1,)
        assert data.atomic_numbers.tolist() == list(numbers)
        assert data.energy.item() == expected["ePBE0+MBD"][0]  # eV already: no conversion
        np.testing.assert_array_equal(data.forces.numpy(), expected["totFOR"])  # total forces, sign kept
        np.testing.assert_array_equal(data.pos.numpy(), expected["atXYZ"])
        assert not data.pbc.any() and "HLgap" not in data


@needs_h5py
def test_qm7x_options(tmp_path):
    path = write_qm7x(tmp_path / "1000.hdf5")
    structures = read_structures(path, energy="eAT", forces="none", properties="HLgap,DIP,vDIP,hCHG,mTPOL",
                                 dtype=torch.float64)
    water = structures[2]  # 3 atoms: vDIP [3] and mTPOL [3,3] are still molecular
    expected = qm7x_values(2, 1, 3)
    assert "forces" not in water and water.energy.item() == expected["eAT"][0]
    assert water.HLgap.tolist() == [8.0] and water.DIP.tolist() == [pytest.approx(0.2)]
    assert water.vDIP.shape == (1, 3) and water.mTPOL.shape == (1, 9)
    np.testing.assert_array_equal(water.vDIP.numpy()[0], expected["vDIP"])
    assert water.hCHG.shape == (3,)
    np.testing.assert_array_equal(water.hCHG.numpy(), expected["hCHG"])
    listed = read_structures(path, properties=["HLgap"])
    assert all("HLgap" in d for d in listed)


@needs_h5py
def test_qm7x_molecule_wise_selection(tmp_path):
    folder = tmp_path / "qm7x"
    folder.mkdir()
    write_qm7x(folder / "1000.hdf5")
    write_qm7x(folder / "2000.hdf5", molecules=((1001, ("Geom-m1001-i1-c1-opt",), (7, 1, 1, 1)),))
    assert detect_format(folder) == "qm7x"
    assert [int(d.molecule) for d in read_structures(folder)] == [1, 1, 2, 2, 1001]
    train_ids, val_ids = tmp_path / "train_molecules.txt", tmp_path / "val_molecules.txt"
    train_ids.write_text("# molecules of the training split\n1\n1001\n")
    val_ids.write_text("2\n")
    train = read_structures(folder, molecules=str(train_ids))
    val = list(iter_structures(folder, molecules=str(val_ids)))
    assert [int(d.molecule) for d in train] == [1, 1, 1001] and [int(d.molecule) for d in val] == [2, 2]
    assert not {int(d.molecule) for d in train} & {int(d.molecule) for d in val}
    assert len(read_structures(folder, molecules=[2, 1001])) == 3
    with pytest.raises(DataError, match="no structures found for the selected molecules"):
        read_structures(folder, molecules=[999])
    bad_ids = tmp_path / "bad.txt"
    bad_ids.write_text("1\nGeom-m1\n")
    with pytest.raises(DataError, match="line 2: not an integer molecule ID"):
        read_structures(folder, molecules=str(bad_ids))


@needs_h5py
def test_qm7x_missing_dataset_is_one_line(tmp_path):
    path = write_qm7x(tmp_path / "1000.hdf5", drop=(2, "Geom-m2-i1-c1-1", "totFOR"))
    structures = iter_structures(path)
    assert int(next(structures).molecule) == 1
    with pytest.raises(DataError, match=r"structure 2: molecule 2, conformer Geom-m2-i1-c1-1: dataset 'totFOR' "
                                        r"missing \(available: DIP, HLgap, ") as exc:
        list(structures)
    _one_line(exc)
    assert len(read_structures(path, forces="none")) == 4
    with pytest.raises(DataError, match="dataset 'nope' missing"):
        read_structures(path, properties="nope")


@needs_h5py
def test_qm7x_needs_h5py_message(tmp_path, monkeypatch):
    path = write_qm7x(tmp_path / "1000.hdf5")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    assert detect_format(path) == "qm7x"  # still recognised as HDF5
    with pytest.raises(DataError, match=r"reading QM7-X needs h5py: pip install 'frameavg\[qm7x\]'"):
        read_structures(path)


@needs_h5py
def test_qm7x_sniff_leaves_other_hdf5_alone(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["positions"] = np.zeros((2, 3))
    assert _detect_or_none(other) != "qm7x"


# ----------------------------------------------------------------------------- ASE-LMDB
def write_aselmdb(path):
    """Three OC20-like slabs with SinglePointCalculator energies/forces, tags and FixAtoms."""
    import ase.db
    from ase.build import add_adsorbate, fcc111
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    rng = np.random.default_rng(0)
    written = []
    with ase.db.connect(str(path), type="aselmdb") as database:
        for k in range(3):
            slab = fcc111("Pt", size=(2, 2, 3), vacuum=6.0)
            add_adsorbate(slab, "O", 1.5 + 0.1 * k, "fcc")
            tags = np.array([0] * 8 + [1] * 4 + [2])  # OC20 convention
            slab.set_tags(tags)
            slab.set_constraint(FixAtoms(mask=tags == 0))
            energy, forces = -50.0 - k, rng.normal(0, 0.5, (len(slab), 3))
            slab.calc = SinglePointCalculator(slab, energy=energy, forces=forces)
            database.write(slab, sid=100 + k, data={"ref_energy": 1.5 * k})
            written.append((slab.positions.copy(), energy, forces, tags))
    return written


@needs_backends
def test_aselmdb_round_trip(tmp_path):
    written = write_aselmdb(tmp_path / "written.aselmdb")
    folder = tmp_path / "copy"  # only the data file, without the writer's lock file
    folder.mkdir()
    path = folder / "data.0000.aselmdb"
    shutil.copy(tmp_path / "written.aselmdb", path)
    assert detect_format(path) == "aselmdb"
    structures = read_structures(path, dtype=torch.float64)
    assert len(structures) == 3
    for k, (data, (positions, energy, forces, tags)) in enumerate(zip(structures, written)):
        np.testing.assert_allclose(data.pos.numpy(), positions, atol=1e-12)
        assert data.energy.item() == energy
        np.testing.assert_allclose(data.forces.numpy(), forces, atol=1e-12)
        assert data.tags.tolist() == tags.tolist()
        assert data.fixed.tolist() == (tags == 0).tolist()
        assert data.pbc.tolist() == [[True, True, False]]
        assert data.sid.tolist() == [100 + k] and data.ref_energy.tolist() == [1.5 * k]
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # read-only, lock-free: no lock file


@needs_backends
def test_aselmdb_folder_and_errors(tmp_path):
    folder = tmp_path / "omat"
    folder.mkdir()
    write_aselmdb(folder / "data.0000.aselmdb")
    write_aselmdb(folder / "data.0001.aselmdb")
    assert detect_format(folder) == "aselmdb"
    assert len(read_structures(folder)) == 6
    broken = tmp_path / "broken.aselmdb"
    broken.write_bytes(b"not an lmdb file" * 64)
    with pytest.raises(DataError, match="broken.aselmdb: not an ASE-LMDB database") as exc:
        read_structures(broken)
    _one_line(exc)


# ----------------------------------------------------------------------------- CLI
def test_cli_data_info_counts(tmp_path, ethanol):
    path = write_rmd17(tmp_path / "rmd17_ethanol.npz", ethanol)
    result = subprocess.run([sys.executable, "-m", "frameavg.cli.main", "data", "info", str(path), "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "md17" and info["count"] == 3
    assert {"energy", "forces"} <= set(info["labels"])
