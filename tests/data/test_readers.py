"""Readers on every real dataset in tests/data/real: detection, labels, units, derived fields."""

import csv
import json

import ase.io
import numpy as np
import pytest
import torch

from frameavg.data import detect_format, iter_structures, read_structures
from frameavg.data.readers import qm9 as qm9_reader
from frameavg.data.readers.xu_kitchin import surface_tags
from frameavg.errors import ConfigError, DataError


@pytest.mark.parametrize(
    "relative, fmt, count",
    [
        ("qm9_subset/qm9_random2000_seed0.extxyz", "qm9", 2000),
        ("qm7/qm7_first300.extxyz", "ase", 300),
        ("rmd17_ethanol/train.xyz", "ase", 1000),
        ("rmd17_ethanol/test_MD.xyz", "ase", 1000),
        ("oc20_is2re_samples/is2re_bs3.extxyz", "ase", 3),
        ("oc20_is2re_samples/is2re_bs8.extxyz", "ase", 8),
        ("oc20_s2ef_single/oc20_single_atoms.json", "ase-db", 1),
        ("oxides_eos/oxides.db", "ase-db", 295),
        ("xu_kitchin_adsorption", "xu-kitchin", 882),
        ("fixtures/schnetpack/test_qm9.db", "ase-db", 20),
        ("fixtures/schnetpack/test_ethanol.db", "ase-db", 20),
        ("fixtures/schnetpack/test_iso.db", "ase-db", 40),
        ("fixtures/schnetpack/test_ani1.db", "ase-db", 20),
        ("fixtures/schnetpack/ethanol_snip.xyz", "ase", 3),
        ("fixtures/nequip/aspirin.xyz", "ase", 15),
    ],
)
def test_every_real_dataset_is_detected_and_read(real_data, relative, fmt, count):
    path = real_data / relative
    assert detect_format(path) == fmt
    structures = read_structures(path)
    assert len(structures) == count
    for data in structures[:50]:
        n = data.pos.shape[0]
        assert data.pos.shape == (n, 3) and data.pos.dtype == torch.float32 and torch.isfinite(data.pos).all()
        assert data.atomic_numbers.shape == (n,) and 1 <= data.atomic_numbers.min() <= data.atomic_numbers.max() <= 118
        assert data.cell.shape == (1, 3, 3) and data.pbc.shape == (1, 3) and data.natoms.tolist() == [n]
        assert data.fixed.shape == (n,) and data.fixed.dtype == torch.bool


def test_extxyz_energies_and_forces_match_ase(real_data):
    path = real_data / "rmd17_ethanol" / "train.xyz"
    frames = ase.io.read(path, ":5")
    structures = list(iter_structures(path, required=("energy", "forces"), dtype=torch.float64))[:5]
    for atoms, data in zip(frames, structures):
        np.testing.assert_array_equal(data.pos.numpy(), atoms.positions)
        np.testing.assert_array_equal(data.forces.numpy(), atoms.get_forces())
        assert data.energy.item() == atoms.get_potential_energy()


def test_ase_trajectory_round_trip(real_data, tmp_path):
    frames = ase.io.read(real_data / "rmd17_ethanol" / "test_MD.xyz", ":4")
    ase.io.write(tmp_path / "md.traj", frames)
    assert detect_format(tmp_path / "md.traj") == "ase"
    structures = read_structures(tmp_path / "md.traj", format="traj", required=("energy", "forces"), dtype=torch.float64)
    assert [d.energy.item() for d in structures] == [a.get_potential_energy() for a in frames]
    np.testing.assert_array_equal(structures[3].forces.numpy(), frames[3].get_forces())


def test_ase_json_oc20_fixed_atoms_tags_and_calculator(real_data):
    (data,) = read_structures(real_data / "oc20_s2ef_single" / "oc20_single_atoms.json", required=("energy", "forces"))
    assert data.natoms.item() == 34 and int(data.fixed.sum()) == 24
    assert data.energy.item() == pytest.approx(-135.66393572)
    assert data.pbc.all() and data.tags.tolist().count(1) == 2  # CO tagged 1 in this file


def test_ase_db_labels_from_row_data_and_key_mapping(real_data):
    path = real_data / "fixtures" / "schnetpack" / "test_iso.db"
    structures = read_structures(path, keys={"energy": "total_energy", "forces": "atomic_forces"}, required=("energy", "forces"))
    import ase.db

    row = next(ase.db.connect(str(path)).select())
    assert structures[0].energy.item() == pytest.approx(row.key_value_pairs["total_energy"])
    np.testing.assert_allclose(structures[0].forces.numpy(), row.data["atomic_forces"], rtol=1e-6)
    # SchNetPack's QM9 db stores Gibbs energy as data['free_energy'] in Hartree: never taken as energy
    qm9_db = read_structures(real_data / "fixtures" / "schnetpack" / "test_qm9.db")
    assert all("energy" not in d for d in qm9_db)


def test_oxides_db_periodic_with_forces(real_data):
    structures = read_structures(real_data / "oxides_eos" / "oxides.db", required=("energy", "forces"))
    assert all(d.pbc.all() for d in structures)
    assert all(abs(torch.linalg.det(d.cell[0].double())) > 1.0 for d in structures)


def test_plain_xyz_comment_number_becomes_a_mappable_label(real_data):
    path = real_data / "fixtures" / "schnetpack" / "ethanol_snip.xyz"
    (first, *_) = read_structures(path, keys={"energy": "comment_value"}, dtype=torch.float64)
    assert first.energy.item() == pytest.approx(-97208.40600498248)


# ----------------------------------------------------------------------------- QM9
def test_qm9_extxyz_targets_in_ev_and_key_mapping(real_data):
    path = real_data / "qm9_subset" / "qm9_random2000_seed0.extxyz"
    frames = ase.io.read(path, ":3")
    structures = read_structures(
        path, keys={"energy": "U0"}, targets=("U0", "gap", "mu", "U0_atom"), dtype=torch.float64
    )
    for atoms, data in zip(frames, structures):
        assert data.energy.item() == pytest.approx(atoms.info["InternalEnergy_0K_au"] * 27.211386246, rel=1e-12)
        assert data.gap.item() == pytest.approx(atoms.info["HOMO_LUMO_gap_au"] * 27.211386246, rel=1e-12)
        assert data.mu.item() == pytest.approx(atoms.info["Dipole_debye"])
        assert data.idx.item() == atoms.info["index"]
        assert "U0" not in data and "homo" not in data  # mapped to energy; not selected
    with pytest.raises(ConfigError, match="unknown QM9 target"):
        read_structures(path, targets=("U1",))


# Two rows copied verbatim from qm9pack 1.0.3 (qm9pack/data/qm9_part1.csv): methane and acetylene.
QM9PACK_HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,Harmonic_Freq_cmi,RotA_GHz,"
    "RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,"
    "InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K"
)
QM9PACK_ROWS = [
    '"dsgdb9nsd_000001.xyz",1,"C","InChI=1S/CH4/h1H4",5,"[4,1,0,0,0]","[\'C\',\'H\',\'H\',\'H\',\'H\']","[[-0.0126981359,'
    '1.0858041578,0.0080009958],[0.002150416,-0.0060313176,0.0019761204],[1.0117308433,1.4637511618,0.0002765748],'
    '[-0.540815069,1.4475266138,-0.8766437152],[-0.5238136345,1.4379326443,0.9063972942]]","[-0.535689,0.133921,'
    '0.133922,0.133923,0.133923]","[1341.307,1341.3284,1341.365,1562.6731,1562.7453,3038.3205,3151.6034,3151.6788,'
    '3151.7078]",157.7118,157.70997,157.70699,0.,13.21,-0.3877,0.1171,0.5048,35.3641,0.044749,-40.47893,-40.476062,'
    "-40.475117,-40.498597,6.469",
    '"dsgdb9nsd_000004.xyz",4,"C#C","InChI=1S/C2H2/c1-2/h1-2H",4,"[2,2,0,0,0]","[\'C\',\'C\',\'H\',\'H\']",'
    '"[[0.5995394918,0.,1.],[-0.5995394918,0.,1.],[-1.6616385861,0.,1.],[1.6616385861,0.,1.]]","[-0.207019,'
    '-0.207019,0.207019,0.207019]","[549.7648,549.7648,795.2713,795.2713,2078.1131,3455.8096,3557.8599]",0.,'
    "35.6100361,35.6100361,0.,16.28,-0.2845,0.0506,0.3351,59.5248,0.026841,-77.308427,-77.305527,-77.304583,"
    "-77.327429,8.574",
]


def _write_qm9pack_csv(path, frames):
    """Verbatim qm9pack rows plus real QM9 molecules (from the shared subset) in the same layout."""
    columns = QM9PACK_HEADER.split(",")
    with open(path, "w", newline="") as handle:
        handle.write(QM9PACK_HEADER + "\n")
        for row in QM9PACK_ROWS:
            handle.write(row + "\n")
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC)
        for atoms in frames:
            info = atoms.info
            values = {
                "XYZ_file": f"dsgdb9nsd_{info['index']:06d}.xyz",
                "Index": info["index"],
                "SMILES": info["smiles"],
                "InChi": "",
                "N_atoms": len(atoms),
                "Stoichiometry": "[]",
                "Elements": "[" + ",".join(f"'{s}'" for s in atoms.get_chemical_symbols()) + "]",
                "XYZ_Ang": json.dumps(atoms.positions.round(10).tolist(), separators=(",", ":")),
                "Mulliken_pop": "[]",
                "Harmonic_Freq_cmi": "[]",
            }
            writer.writerow([values.get(c, info.get(c)) for c in columns])


def test_qm9pack_csv_reader_units_atomization_and_agreement_with_extxyz(real_data, tmp_path):
    frames = ase.io.read(real_data / "qm9_subset" / "qm9_random2000_seed0.extxyz", ":6")
    csv_path = tmp_path / "qm9_part1.csv"
    _write_qm9pack_csv(csv_path, frames)
    assert detect_format(csv_path) == "qm9" and detect_format(tmp_path) == "qm9"
    structures = read_structures(tmp_path, dtype=torch.float64)
    assert len(structures) == 2 + len(frames)
    methane, acetylene = structures[:2]
    assert methane.atomic_numbers.tolist() == [6, 1, 1, 1, 1] and acetylene.pos[0].tolist() == [0.5995394918, 0.0, 1.0]
    # PyG's QM9 lists U0_atom = -17.1722 eV and gap = 13.7363 eV for methane (molecule 1)
    assert methane.U0_atom.item() == pytest.approx(-17.1722, abs=1e-4)
    assert methane.gap.item() == pytest.approx(13.7363, abs=1e-4)
    assert methane.idx.item() == 1 and methane.alpha.item() == pytest.approx(13.21)
    from_xyz = read_structures(real_data / "qm9_subset" / "qm9_random2000_seed0.extxyz", dtype=torch.float64)
    for csv_data, xyz_data in zip(structures[2:], from_xyz[: len(frames)]):
        assert set(csv_data.keys()) == set(xyz_data.keys())
        for key in xyz_data.keys():
            torch.testing.assert_close(csv_data[key], xyz_data[key], rtol=0, atol=1e-9)


def test_qm9_atom_references_agree_with_schnetpack_db_metadata(real_data):
    import ase.db

    refs = ase.db.connect(str(real_data / "fixtures" / "schnetpack" / "test_qm9.db")).metadata["atomrefs"]
    for ours, theirs in [("U0", "energy_U0"), ("U", "energy_U"), ("H", "enthalpy_H"), ("G", "free_energy")]:
        for z, value in qm9_reader.ATOM_REFS[ours].items():
            assert value == refs[theirs][z]


def test_qm9_csv_bad_row_names_file_and_row(tmp_path):
    path = tmp_path / "qm9_bad.csv"
    path.write_text(QM9PACK_HEADER + "\n" + QM9PACK_ROWS[0] + "\n" + QM9PACK_ROWS[1].replace("[0.5995394918,0.,1.],", "") + "\n")
    with pytest.raises(DataError, match=r"qm9_bad.csv, structure 1: XYZ_Ang has 9 numbers for 4 atoms"):
        read_structures(path)


def test_qm9pack_folder_needs_the_optional_extra():
    import importlib.util

    if importlib.util.find_spec("qm9pack") is not None:
        assert (qm9_reader.qm9pack_folder() / "qm9_part1.csv").is_file()
    else:
        with pytest.raises(DataError, match=r"frameavg\[qm9\]"):
            read_structures("qm9pack")


# ----------------------------------------------------------------------------- Xu-Kitchin
def test_xu_kitchin_tags_fixed_and_adsorption_energy(real_data):
    folder = real_data / "xu_kitchin_adsorption"
    energies = json.loads((folder / "energies.json").read_text())
    structures = read_structures(folder / "structures.json", required=("energy",))
    assert len(structures) == 882
    for data in structures:
        metal, adsorbate, site, coverage = data.name.split("/")
        assert data.energy.item() == pytest.approx(energies[metal][adsorbate][site][coverage])
        assert data.coverage.item() == float(coverage)
        n_ads = int((data.tags == 2).sum())
        assert n_ads == round(float(coverage) * 4)  # 2x2 cell: one adsorbate per 0.25 ML
        assert int((data.tags == 1).sum()) == 4 and int((data.tags == 0).sum()) == 12
        assert torch.equal(data.fixed, data.tags == 0)
        z = data.pos[:, 2]
        assert z[data.tags == 1].min() > z[data.tags == 0].max()
    clean = read_structures(folder, include_clean=True)
    assert len(clean) == 882 + 224 and sum("energy" not in d for d in clean) == 224


def test_surface_tags_rule_on_a_relaxed_buckled_top_layer():
    symbols = np.array(["Pt"] * 8 + ["O"])
    heights = np.array([0.0, 0.05, 2.3, 2.31, 4.2, 4.9, 4.6, 4.3, 6.0])  # 2 atoms per layer; top buckled
    assert surface_tags(symbols, heights, "Pt").tolist() == [0, 0, 0, 0, 0, 1, 1, 0, 2]


def test_pymatgen_json_structures_molecules_and_entries(tmp_path):
    """Structure dicts (Cartesian or fractional sites), Molecule dicts and computed entries with
    energies, per-site forces; disordered sites refused."""
    lattice = {"matrix": [[3.0, 0, 0], [0, 3.0, 0], [0, 0, 4.0]], "pbc": [True, True, False]}
    structure = {"@module": "pymatgen.core.structure", "@class": "Structure", "lattice": lattice, "properties": {},
                 "sites": [{"species": [{"element": "Pt", "occu": 1}], "abc": [0.5, 0.5, 0.25],
                            "properties": {"forces": [0.0, 0.1, -0.2]}},
                           {"species": [{"element": "O", "occu": 1.0}], "xyz": [0.0, 0.0, 2.5],
                            "properties": {"forces": [0.0, -0.1, 0.2]}}]}
    molecule = {"@module": "pymatgen.core.structure", "@class": "Molecule", "charge": 0, "spin_multiplicity": 1,
                "sites": [{"species": [{"element": "C", "occu": 1}], "xyz": [0, 0, 0]},
                          {"species": [{"element": "O", "occu": 1}], "xyz": [0, 0, 1.13]}]}
    entry = {"@module": "pymatgen.entries.computed_entries", "@class": "ComputedStructureEntry", "energy": -12.5,
             "correction": -0.3, "structure": structure, "entry_id": "mp-x"}
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({"a": entry, "b": molecule}))
    assert detect_format(path) == "pymatgen-json"
    first, second = read_structures(path, dtype=torch.float64)
    assert first.energy.item() == -12.5 and first.correction.item() == pytest.approx(-0.3)
    assert first.pos[0].tolist() == [1.5, 1.5, 1.0] and first.pbc.tolist() == [[True, True, False]]
    assert first.forces.tolist() == [[0.0, 0.1, -0.2], [0.0, -0.1, 0.2]]
    assert second.atomic_numbers.tolist() == [6, 8] and not second.pbc.any() and "energy" not in second
    structure["sites"][0]["species"] = [{"element": "Pt", "occu": 0.5}, {"element": "Pd", "occu": 0.5}]
    path.write_text(json.dumps([structure]))
    with pytest.raises(DataError, match=r"mixed.json, structure 0: site 0 is disordered"):
        read_structures(path)
