"""Continuous (weighted) frames, ``continuous=True``: exactly invariant like plain frame sets,
identical to them away from degeneracies, continuous where plain frame sets switch, and forces
that equal finite differences at and near exactly symmetric structures (float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data, read_structures
from frameavg.evaluation.symmetry import model_inputs
from frameavg.evaluation.testing import assert_symmetric
from frameavg.frames.compute import compute_frames

from .structures import graphs, small_faenet

CUTOFF = 6.0
EXACT = ("rotation", "reflection", "translation", "permutation")


def faenet_fa(continuous: bool, dim: str = "3D", periodic: str = "cloud", forces=None):
    return small_faenet(dim, cutoff=CUTOFF, periodic=periodic, continuous=continuous, forces=forces)


def stretched(atoms: Atoms, strain: float) -> torch.Tensor:
    """The molecule with x scaled by (1 + strain), as model input."""
    moved = atoms.copy()
    moved.positions[:, 0] *= 1 + strain
    return graphs([atoms_to_data(moved, dtype=torch.float64)], cutoff=CUTOFF)


def energies(model, atoms, strains) -> np.ndarray:
    with torch.no_grad():
        return np.array([float(model(stretched(atoms, e))["energy"]) for e in strains])


def jumps(series: np.ndarray, factor: float = 10.0) -> int:
    steps = np.abs(np.diff(series))
    return int((steps > factor * np.median(steps)).sum())


@pytest.fixture(scope="module")
def ethanol():
    return read_structures("shipped:rmd17_ethanol/test", dtype=torch.float64)[:3]


def test_away_from_degeneracies_continuous_frames_are_the_plain_frames(ethanol):
    """Ethanol's spectrum is far from degenerate: the same 8 frames with equal weights, so the
    averages agree to rounding."""
    batch = graphs(ethanol, cutoff=CUTOFF)
    plain = compute_frames(batch.pos, batch.batch, 3)
    smooth = compute_frames(batch.pos, batch.batch, 3, continuous=True)
    assert smooth.num_frames.tolist() == plain.num_frames.tolist() == [8, 8, 8]
    assert torch.allclose(smooth.weight, plain.weight)
    with torch.no_grad():
        assert torch.allclose(faenet_fa(True)(batch)["energy"], faenet_fa(False)(batch)["energy"], atol=1e-12)


@pytest.mark.parametrize("name", ["benzene", "methane", "ethanol_stretched"])
def test_continuous_frames_are_exact(name, ethanol):
    """Rotations, reflections, translations and permutations to 1e-10 (float64), including a
    benzene inside a blending zone (several harmonic orders and both plane options at once)."""
    structures = {
        "benzene": [atoms_to_data(molecule("C6H6"), dtype=torch.float64)],
        "methane": [atoms_to_data(molecule("CH4"), dtype=torch.float64)],
        "ethanol_stretched": ethanol[:1],
    }[name]
    if name == "benzene":
        atoms = molecule("C6H6")
        atoms.positions[:, 0] *= 1.004  # relative gap 0.008: inside the blend zone
        structures.append(atoms_to_data(atoms, dtype=torch.float64))
    assert_symmetric(faenet_fa(True, forces="from_energy"), structures, atol=1e-10, checks=EXACT, dim="3D",
                     cutoff=CUTOFF, trials=2)


@pytest.mark.slow
def test_periodic_cloud_with_continuous_frames_is_exact():
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=3)
    assert_symmetric(faenet_fa(True, forces="from_energy"), [atoms_to_data(atoms, dtype=torch.float64)],
                     atol=1e-10, checks=EXACT + ("image",), dim="3D", cutoff=CUTOFF, trials=2)


def test_weights_sum_to_one_and_blend_inside_the_zone():
    atoms = molecule("C6H6")
    atoms.positions[:, 0] *= 1.004
    frames = compute_frames(stretched(atoms, 0.0).pos, continuous=True)
    assert abs(float(frames.weight.sum()) - 1.0) < 1e-12
    assert len(set(np.round(frames.weight.numpy(), 12).tolist())) > 1  # unequal weights: a blend
    assert int(frames.num_frames[0]) > 8


@pytest.mark.slow
def test_a_degeneracy_class_change_is_continuous_with_weighted_frames():
    """Benzene stretched along x from its exact D6h shape: the plain frame set switches from the
    24 pair frames to the 8 sign frames when the gap passes tol, and a FAENet (not exactly
    invariant) jumps there; the weighted frames blend the two sets, and the energy has no step
    above 10x the median step."""
    atoms = molecule("C6H6")
    strains = np.linspace(0.0, 0.03, 151)
    plain = energies(faenet_fa(False), atoms, strains)
    smooth = energies(faenet_fa(True), atoms, strains)
    assert jumps(plain) >= 1
    assert jumps(smooth) == 0


@pytest.mark.parametrize("strain", [0.0, 0.0006, 0.004])
def test_forces_equal_finite_differences_at_and_near_a_symmetric_molecule(strain):
    """Benzene exactly symmetric (0), just past the degeneracy tolerance (0.0006) and inside the
    blend zone (0.004): −∂E/∂x through the weighted frames equals central differences to 1e-6 eV/Å."""
    atoms = molecule("C6H6")
    atoms.positions[:, 0] *= 1 + strain
    model = faenet_fa(True, forces="from_energy")
    data = stretched(atoms, 0.0)
    forces = model(data)["forces"].detach()
    h = 1e-5
    for atom, axis in [(0, 0), (1, 1), (7, 2), (3, 0)]:
        shifted = []
        for sign in (1, -1):
            moved = data.clone()
            moved.pos = data.pos.clone()
            moved.pos[atom, axis] += sign * h
            with torch.no_grad():
                shifted.append(float(model(moved)["energy"]))
        numeric = -(shifted[0] - shifted[1]) / (2 * h)
        assert abs(float(forces[atom, axis]) - numeric) < 1e-6, (atom, axis, float(forces[atom, axis]), numeric)


@pytest.mark.slow
def test_stochastic_frames_follow_the_weights():
    """One frame per call, drawn with probability ∝ weight, then weight 1."""
    atoms = molecule("C6H6")
    atoms.positions[:, 0] *= 1.004
    pos = stretched(atoms, 0.0).pos
    full = compute_frames(pos, continuous=True)
    generator = torch.Generator().manual_seed(0)
    hits = torch.zeros(full.rotation.shape[0], dtype=torch.float64)
    draws = 1000
    for _ in range(draws):
        one = compute_frames(pos, method="stochastic", continuous=True, generator=generator)
        assert one.weight.tolist() == [1.0]
        match = (full.rotation - one.rotation).abs().amax(dim=(1, 2)) < 1e-12
        hits[match.nonzero().flatten()[0]] += 1
    assert torch.allclose(hits / draws, full.weight, atol=0.05)


def test_batched_continuous_frames_equal_single_graphs(ethanol):
    atoms = molecule("C6H6")
    atoms.positions[:, 0] *= 1.004
    structures = [model_inputs(ethanol[0]), atoms_to_data(atoms, dtype=torch.float64), model_inputs(ethanol[1])]
    batch = Batch.from_data_list(structures)
    together = compute_frames(batch.pos, batch.batch, 3, continuous=True)
    for index, data in enumerate(structures):
        alone = compute_frames(data.pos, continuous=True)
        assert torch.allclose(together.rotation[together.graph == index], alone.rotation, atol=1e-12)
        assert torch.allclose(together.weight[together.graph == index], alone.weight, atol=1e-12)
