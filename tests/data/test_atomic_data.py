import ase
import ase.io
import numpy as np
import pytest
import torch
from ase.constraints import FixAtoms
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.shipped import shipped_path
from frameavg.errors import DataError


def test_oc20_fields_and_batching():
    frames = ase.io.read(shipped_path("oc20_is2re/bs3"), ":")
    data = [atoms_to_data(a, keys={"energy": "y_relaxed"}) for a in frames]
    d0 = data[0]
    assert d0.pos.shape == (65, 3) and d0.pos.dtype == torch.float32
    assert d0.cell.shape == (1, 3, 3) and d0.pbc.tolist() == [[True, True, True]]
    assert d0.tags.dtype == torch.long and set(d0.tags.tolist()) <= {0, 1, 2}
    # ASE turns the extxyz move_mask into FixAtoms; in OC20 exactly the subsurface (tag 0) is fixed
    assert torch.equal(d0.fixed, d0.tags == 0)
    assert d0.energy.item() == pytest.approx(frames[0].info["y_relaxed"], rel=1e-6)
    assert d0.y_init.shape == (1,) and d0.pos_relaxed.shape == (65, 3)
    batch = Batch.from_data_list(data)
    assert batch.cell.shape == (3, 3, 3)
    assert batch.natoms.tolist() == [len(a) for a in frames]


def test_molecule_cell_is_zero_and_labels_from_calculator():
    atoms = ase.io.read(shipped_path("rmd17_ethanol/train"), 0)
    d = atoms_to_data(atoms, required=("energy", "forces"), dtype=torch.float64)
    assert torch.count_nonzero(d.cell) == 0 and not d.pbc.any()
    assert d.energy.dtype == torch.float64
    np.testing.assert_allclose(d.forces.numpy(), atoms.get_forces())
    np.testing.assert_allclose(d.energy.item(), atoms.get_potential_energy())


def test_fixatoms_constraint_sets_fixed():
    atoms = ase.Atoms("H2O", positions=[[0, 0, 0], [0, 0, 1], [1, 0, 0]])
    atoms.set_constraint(FixAtoms(indices=[1]))
    assert atoms_to_data(atoms).fixed.tolist() == [False, True, False]


@pytest.mark.parametrize(
    "atoms, message",
    [
        (ase.Atoms(), "zero atoms"),
        (ase.Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "non-finite position"),
        (ase.Atoms("H2", positions=[[0, 0, 0], [np.inf, 0, 0]]), "non-finite position"),
        (ase.Atoms(numbers=[1, 119], positions=[[0, 0, 0], [1, 0, 0]]), "unknown element"),
        (ase.Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True), "singular cell"),
        (ase.Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]], cell=np.zeros((3, 3)), pbc=[True, False, False]), "singular cell"),
    ],
)
def test_bad_structures_name_source_and_index(atoms, message):
    with pytest.raises(DataError, match=message) as info:
        atoms_to_data(atoms, source="file.xyz", index=7)
    assert "file.xyz" in str(info.value) and "structure 7" in str(info.value)


def test_key_mapping_typo_suggests_close_key():
    atoms = ase.io.read(shipped_path("oc20_is2re/bs3"), 0)
    with pytest.raises(DataError, match="did you mean 'y_relaxed'"):
        atoms_to_data(atoms, keys={"energy": "y_relaxd"})


def test_missing_required_label():
    atoms = ase.Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]])
    with pytest.raises(DataError, match="missing required label"):
        atoms_to_data(atoms, required=("energy",))
