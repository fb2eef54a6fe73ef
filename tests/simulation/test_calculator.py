"""FrameavgCalculator on real structures: exact symmetry (float64), forces and stress equal finite
differences, the Verlet skin changes nothing along an MD trajectory, checkpoints load."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111
from ase.calculators.calculator import PropertyNotImplementedError
from ase.constraints import FixAtoms
from ase.md.verlet import VelocityVerlet
from ase import units

from frameavg.data import read_structures
from frameavg.data.atomic_data import data_to_atoms
from frameavg.frames import FrameAveraging
from frameavg.models import FAENet
from frameavg.simulation import FrameavgCalculator

CUTOFF = 5.0


def calculator(dim: str = "3D", skin: float = 0.5, **kwargs) -> FrameavgCalculator:
    torch.manual_seed(0)
    model = FAENet(cutoff=CUTOFF, hidden_channels=64, num_filters=64, num_interactions=2, num_gaussians=16,
                   tag_hidden_channels=8, pg_hidden_channels=8, phys_embeds=False, regress_forces=None, **kwargs)
    return FrameavgCalculator(model=FrameAveraging(model, dims=dim, method="all", cutoff=CUTOFF), skin=skin)


def atoms_of(real_data, path, indices):
    structures = read_structures(real_data / path, dtype=torch.float64)
    return [data_to_atoms(structures[i]) for i in indices]


def _transforms(atoms, rng, dim):
    """(name, transformed atoms, rotation R, permutation): forces must become F[perm] @ R.T."""
    n = len(atoms)
    if dim == "2D":
        angle = rng.uniform(0, 2 * np.pi)
        c, s = np.cos(angle), np.sin(angle)
        rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
        reflection = rotation @ np.diag([1.0, -1.0, 1.0])
    else:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rotation = q * np.sign(np.diag(r))
        rotation[:, 0] *= np.sign(np.linalg.det(rotation))
        reflection = -rotation
    out = []
    for name, matrix in (("rotation", rotation), ("reflection", reflection)):
        moved = atoms.copy()
        moved.positions = atoms.positions @ matrix.T
        moved.cell = atoms.cell.array @ matrix.T
        out.append((name, moved, matrix, np.arange(n)))
    moved = atoms.copy()
    moved.positions = atoms.positions + rng.normal(scale=2.0, size=3)
    out.append(("translation", moved, np.eye(3), np.arange(n)))
    permutation = rng.permutation(n)
    out.append(("permutation", atoms[permutation], np.eye(3), permutation))
    return out


@pytest.mark.parametrize("path, indices, dim", [
    ("rmd17_ethanol/train.xyz", (0, 500), "3D"),
    ("oc20_is2re_samples/is2re_bs3.extxyz", (0, 2), "2D"),
    ("oxides_eos/oxides.db", (3, 200), "3D"),
], ids=["ethanol", "oc20-slabs-2d", "oxides"])
def test_energies_invariant_and_forces_equivariant(real_data, path, indices, dim):
    calc = calculator(dim)
    rng = np.random.default_rng(0)
    for atoms in atoms_of(real_data, path, indices):
        atoms.calc = calc
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        for name, moved, rotation, permutation in _transforms(atoms, rng, dim):
            moved.calc = calc
            assert abs(moved.get_potential_energy() - energy) < 1e-10, name
            np.testing.assert_allclose(moved.get_forces(), forces[permutation] @ rotation.T, rtol=0, atol=1e-10,
                                       err_msg=name)


def test_forces_and_stress_equal_finite_differences(real_data):
    """Forces 1e-6 eV/Å on ethanol and an oxide; stress 1e-6 eV/Å³ on two oxide crystals."""
    calc = calculator()
    h = 1e-5
    structures = atoms_of(real_data, "rmd17_ethanol/train.xyz", (7,)) + atoms_of(real_data, "oxides_eos/oxides.db", (9, 250))
    for atoms in structures:
        atoms.calc = calc
        forces = atoms.get_forces()
        for atom, c in ((0, 0), (1, 2), (len(atoms) - 1, 1)):
            probe = atoms.copy()
            probe.calc = calc
            positions = probe.positions.copy()
            positions[atom, c] += h
            probe.positions = positions
            up = probe.get_potential_energy()
            positions[atom, c] -= 2 * h
            probe.positions = positions
            down = probe.get_potential_energy()
            assert abs(forces[atom, c] + (up - down) / (2 * h)) < 1e-6
        if not atoms.pbc.all():
            with pytest.raises(PropertyNotImplementedError, match="stress needs a structure periodic"):
                atoms.get_stress()
            continue
        stress = atoms.get_stress(voigt=False)
        volume = atoms.get_volume()
        for i, j in itertools.product(range(3), repeat=2):
            eps = np.zeros((3, 3))
            eps[i, j] += h / 2
            eps[j, i] += h / 2
            values = []
            for sign in (1, -1):
                probe = atoms.copy()
                probe.calc = calc
                probe.set_cell(atoms.cell.array @ (np.eye(3) + sign * eps), scale_atoms=True)
                values.append(probe.get_potential_energy())
            assert abs(stress[i, j] - (values[0] - values[1]) / (2 * h) / volume) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("path, index, dim", [("rmd17_ethanol/train.xyz", 0, "3D"),
                                               ("oc20_is2re_samples/is2re_bs3.extxyz", 2, "2D")],
                         ids=["ethanol", "oc20-slab"])
def test_skin_gives_the_energies_of_a_rebuild_at_every_step(real_data, path, index, dim):
    """200 NVE steps (1 fs, 600 K): the skin list and a list rebuilt every call give the same
    energies (1e-10 eV), and the skin list is rebuilt exactly at the steps where the Verlet rule
    says so: where some atom has moved more than skin/2 since the last rebuild (measured: 51
    rebuilds in 201 calls for ethanol, whose hydrogens move fastest; 29 for the 24-atom slab)."""
    (atoms,) = atoms_of(real_data, path, (index,))
    skin = 0.5
    skinned, fresh = calculator(dim, skin=skin), calculator(dim, skin=0.0)
    rng = np.random.default_rng(1)
    atoms.set_momenta(rng.normal(scale=np.sqrt(units.kB * 600 * atoms.get_masses())[:, None], size=(len(atoms), 3)))
    atoms.calc = skinned
    differences, trajectory = [], []

    def compare():
        probe = atoms.copy()
        probe.calc = fresh
        differences.append(abs(atoms.get_potential_energy() - probe.get_potential_energy()))
        # the positions as the neighbour list receives them (the model's dtype)
        trajectory.append(skinned.potential.to_data(atoms, source="atoms").pos.double().numpy().copy())

    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.attach(compare, interval=1)
    dynamics.run(200)
    assert len(differences) == 201 and max(differences) < 1e-10
    rebuilds, reference = 0, None  # the Verlet rule, replayed on the trajectory
    for points in trajectory:
        if reference is None or np.sqrt(((points - reference) ** 2).sum(-1)).max() > skin / 2:
            rebuilds, reference = rebuilds + 1, points
    assert skinned.neighbors.calls == len(trajectory) == 201
    assert skinned.neighbors.rebuilds == rebuilds and 1 < rebuilds < 201 // 2
    assert fresh.neighbors.rebuilds == fresh.neighbors.calls


def test_tags_and_fixed_atoms_reach_the_model():
    """An ASE fcc111 slab with an adsorbate and FixAtoms: ASE's layer tags arrive as OC20 tags
    (the tag embedding changes the energy), and fixed atoms are part of the inputs."""
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=8.0)
    add_adsorbate(slab, "O", 1.4, "fcc")
    slab.set_constraint(FixAtoms(indices=[a.index for a in slab if a.tag == 3]))
    calc = calculator("2D")
    data = calc.potential.to_data(slab)
    assert data.tags.tolist() == [0] * 8 + [1] * 4 + [2] and data.fixed.tolist() == [True] * 4 + [False] * 9
    slab.calc = calc
    tagged = slab.get_potential_energy()
    untagged = slab.copy()
    untagged.set_tags(0)
    untagged.calc = calc
    assert abs(untagged.get_potential_energy() - tagged) > 1e-6


def test_direct_forces_warn_that_they_are_not_conservative():
    torch.manual_seed(0)
    model = FAENet(cutoff=CUTOFF, hidden_channels=64, num_filters=32, num_interactions=1, num_gaussians=8,
                   tag_hidden_channels=0, pg_hidden_channels=8, phys_embeds=False, regress_forces="direct")
    with pytest.warns(UserWarning, match="not conservative"):
        FrameavgCalculator(model=FrameAveraging(model, dims="3D", method="all"), direct_forces=True)
