"""Periodic frames are exact on every structure: clouds that determine no frame (a desorbed
molecule's reference atoms see one line) widen to all atoms, then to the lattice; every real
periodic data set is exact with FAENet in float64; the lattice shell belongs to the lattice."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, fcc111, molecule

from frameavg.data import atoms_to_data
from frameavg.data.readers import iter_structures
from frameavg.evaluation.symmetry import model_inputs, random_unimodular
from frameavg.evaluation.testing import assert_symmetric
from frameavg.frames import FrameAveraging
from frameavg.frames.cloud import CLOUD_LEVELS, lattice_shell
from frameavg.frames.compute import frames_for_batch
from frameavg.models import FAENet

from .structures import graphs

CUTOFF = 6.0
PERIODIC_CHECKS = ("rotation", "reflection", "translation", "permutation", "image", "cell")


def faenet_fa(dim: str, forces: str = "from_energy") -> FrameAveraging:
    torch.manual_seed(0)
    model = FAENet(cutoff=CUTOFF, hidden_channels=64, num_filters=64, num_interactions=2, num_gaussians=20,
                   tag_hidden_channels=8, pg_hidden_channels=8, phys_embeds=False, max_atomic_number=100,
                   regress_forces=None)
    return FrameAveraging(model, dims=dim, method="all", forces=forces, cutoff=CUTOFF).double().eval()


def co_above_cu111(height: float = 7.5):
    """A 3x3x4 Cu(111) slab, CO upright ``height`` Å above the top layer, 12 Å vacuum (ASE's layer
    tags, read as OC20 tags)."""
    slab = fcc111("Cu", size=(3, 3, 4), vacuum=12.0)
    add_adsorbate(slab, molecule("CO"), height=height, position="ontop", mol_index=0)
    slab.center(vacuum=12.0, axis=2)
    data = atoms_to_data(slab, dtype=torch.float64)
    assert data.tags.tolist() == [0] * 27 + [1] * 9 + [2, 2]
    return data


@pytest.mark.slow
@pytest.mark.parametrize("dim", ["3D", "2D"])
def test_co_desorbed_above_cu111_is_exact(dim):
    """O (the heavier of the two rarest elements) sees only its C: a one-line cloud, whose
    perpendicular axes used to come from rounding (|ΔE| 0.08 eV, |ΔF| 2.8 eV/Å measured before).
    The cloud widens to all atoms; rotations, reflections, translations, permutations, images and
    cells are exact to 1e-10 in float64."""
    data = co_above_cu111()
    frames = frames_for_batch(graphs([data], cutoff=CUTOFF), "all", dim, cutoff=CUTOFF)
    assert frames.path_names() == ["pair/all-atoms"]
    report = assert_symmetric(faenet_fa(dim), [data], atol=1e-10, checks=PERIODIC_CHECKS, dim=dim, cutoff=CUTOFF,
                              trials=3)
    assert all(r.holds for r in report.rows)


def test_adsorbed_co_keeps_the_reference_cloud():
    """CO at bonding distance: O's edges reach the slab, so the cheaper level-0 cloud is used."""
    frames = frames_for_batch(graphs([co_above_cu111(height=1.9)], cutoff=CUTOFF), "all", "2D", cutoff=CUTOFF)
    assert frames.cloud_level.tolist() == [0]


def test_isolated_chain_atom_reaches_the_lattice_level():
    """One atom per cell, periodic along x only, its images farther than the cutoff: no edges at all,
    so the frame comes from the lattice (the chain axis); the model then sees nothing directional
    and every frame gives the same energy."""
    from ase import Atoms

    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=[[7.0, 0.5, 0.0], [0, 10, 0], [0, 0, 10]], pbc=[True, False, False])
    data = atoms_to_data(atoms, dtype=torch.float64)
    frames = frames_for_batch(graphs([data], cutoff=CUTOFF), "all", "3D", cutoff=CUTOFF)
    assert CLOUD_LEVELS[int(frames.cloud_level[0])] == "lattice"
    assert_symmetric(faenet_fa("3D"), [data], atol=1e-12, checks=PERIODIC_CHECKS, cutoff=CUTOFF)


def test_nearly_linear_molecule_is_exact():
    """Atoms 1e-4 Å off a line: classified linear (within tol), yet the directions across the axis
    come from harmonic moments, so all frames stay exact (an arbitrary perpendicular axis would
    leave errors proportional to the offsets)."""
    from ase import Atoms

    rng = np.random.default_rng(3)
    pos = np.zeros((6, 3))
    pos[:, 0] = np.arange(6) * 1.2
    pos[:, 1:] = rng.normal(scale=1e-4, size=(6, 2))
    data = atoms_to_data(Atoms("C2N2O2", positions=pos), dtype=torch.float64)
    frames = frames_for_batch(graphs([data], cutoff=CUTOFF), "all", "3D")
    assert frames.degeneracy_names() == ["linear"] and int(frames.harmonic_order[0]) > 0
    assert_symmetric(faenet_fa("3D"), [data], atol=1e-10, checks=("rotation", "reflection", "permutation"),
                     cutoff=CUTOFF, trials=3)


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False), (True, False, False)])
def test_lattice_shell_belongs_to_the_lattice(pbc):
    """Equivalent cells (unimodular changes of basis) give the same set of shortest vectors; the
    set spans the periodic axes and rotates with the cell."""
    rng = np.random.default_rng(0)
    pbc = np.array(pbc)
    cell = np.eye(3) * [3.1, 4.2, 5.3] + rng.uniform(-0.8, 0.8, size=(3, 3))
    reference = lattice_shell(torch.as_tensor(cell), torch.as_tensor(pbc)).numpy()
    assert np.linalg.matrix_rank(reference) == pbc.sum()
    for _ in range(5):
        change = random_unimodular(rng, pbc, steps=6)
        other = lattice_shell(torch.as_tensor(change @ cell), torch.as_tensor(pbc)).numpy()
        assert _same_rows(reference, other)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotated = lattice_shell(torch.as_tensor(cell @ q.T), torch.as_tensor(pbc)).numpy()
    assert _same_rows(reference @ q.T, rotated)


def test_lattice_shell_of_a_very_skewed_cell():
    """A cell given through a badly skewed basis (b = 40 a + b0) reduces to the same shell."""
    cell = np.array([[3.0, 0, 0], [0.4, 3.2, 0], [0.2, 0.1, 3.5]])
    skewed = cell.copy()
    skewed[1] += 40 * cell[0]
    a = lattice_shell(torch.as_tensor(cell), torch.ones(3, dtype=torch.bool)).numpy()
    b = lattice_shell(torch.as_tensor(skewed), torch.ones(3, dtype=torch.bool)).numpy()
    assert _same_rows(a, b) and len(a) == 6  # ±a1, ±a2, ±a3: up to the third successive minimum


def _same_rows(a: np.ndarray, b: np.ndarray, atol: float = 1e-9) -> bool:
    if a.shape != b.shape:
        return False
    distance = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
    return bool((distance.min(axis=1) < atol).all() and (distance.min(axis=0) < atol).all())


# real periodic data (tests/data/real): (name, path, frame dimension, stride); the full sets are measured by
# benchmarks/frames_symmetry.py --tables periodic-faenet (docs/frames.md)
PERIODIC_DATA = [
    ("oc20_is2re", "oc20_is2re_samples/is2re_bs8.extxyz", "2D", 1),
    ("oc20_is2re_bs3", "oc20_is2re_samples/is2re_bs3.extxyz", "2D", 1),
    ("oc20_s2ef", "oc20_s2ef_single/oc20_single_atoms.json", "2D", 1),
    ("xu_kitchin", "xu_kitchin_adsorption", "2D", 74),
    ("oxides", "oxides_eos/oxides.db", "3D", 47),
    ("oxides_2d", "oxides_eos/oxides.db", "2D", 41),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, path, dim, stride", PERIODIC_DATA, ids=[p[0] for p in PERIODIC_DATA])
def test_real_periodic_structures_are_exact_with_faenet(real_data, name, path, dim, stride):
    """OC20 slabs (all 11 and the S2EF system), a stride of the Xu–Kitchin slabs (2D frames) and of
    the oxides (3D and 2D frames): all-frames FAENet in float64, forces through the frames, every
    check within 1e-10 eV, eV/Å."""
    stream = iter_structures(real_data / path, dtype=torch.float64)
    structures = [model_inputs(d) for d in itertools.islice(stream, 0, None, stride)]
    assert_symmetric(faenet_fa(dim), structures, atol=1e-10, checks=PERIODIC_CHECKS, dim=dim, cutoff=CUTOFF,
                     batch_size=8)
