"""Lattice frames (``periodic="lattice"`` / ``"lattice-symmetric"``): exact symmetry on real periodic
structures in float64 and float32, frames that do not move when atoms move at fixed cell, a
reduction that rounding cannot change, and the cloud for graphs without a usable lattice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import add_adsorbate, bulk, fcc111, molecule

from frameavg.data import atoms_to_data, read_structures
from frameavg.evaluation.testing import assert_symmetric
from frameavg.frames.compute import compute_frames, frames_for_batch
from frameavg.frames.lattice_frames import reduction_transform
from frameavg.training.config import DEFAULTS, checkpoint_config
from frameavg.training.module import build_network

from .structures import graphs, small_faenet

CUTOFF = 6.0
EXACT = ("rotation", "reflection", "translation", "permutation", "image")


def faenet_fa(dim: str, periodic: str, dtype=torch.float64):
    return small_faenet(dim, cutoff=CUTOFF, periodic=periodic, forces="from_energy", smooth=False, dtype=dtype)


def thermal_fcc(repeat=2, rattle=0.05, seed=1, dtype=torch.float64):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms_to_data(atoms, dtype=dtype)


def primitive_fcc(dtype=torch.float64):
    atoms = bulk("Cu", "fcc", a=3.61).repeat((2, 3, 2))  # a non-orthogonal cell
    atoms.rattle(0.05, seed=2)
    return atoms_to_data(atoms, dtype=dtype)


def slab_with_adsorbate(dtype=torch.float64, pbc=(True, True, True)):
    slab = fcc111("Cu", (3, 3, 3), vacuum=8.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab.rattle(0.02, seed=0)
    slab.pbc = pbc
    return atoms_to_data(slab, dtype=dtype)


CASES = {
    "thermal_fcc": (thermal_fcc, "3D"),
    "primitive_fcc": (primitive_fcc, "3D"),
    "slab_2D": (slab_with_adsorbate, "2D"),
    "slab_3D": (slab_with_adsorbate, "3D"),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("periodic", ["lattice", pytest.param("lattice-symmetric", marks=pytest.mark.slow)])
def test_lattice_frames_are_exact_in_float64(case, periodic):
    """Rotations, reflections, translations, permutations and periodic images to 1e-10 (energies,
    eV) and forces (eV/Å); ``lattice-symmetric`` also to the choice of cell."""
    build, dim = CASES[case]
    checks = EXACT + (("cell",) if periodic == "lattice-symmetric" else ())
    report = assert_symmetric(faenet_fa(dim, periodic), [build()], atol=1e-10, checks=checks, dim=dim,
                              cutoff=CUTOFF, trials=2)
    assert {row.check for row in report.rows} >= set(checks)


@pytest.mark.parametrize("periodic", ["lattice", "lattice-symmetric"])
@pytest.mark.slow
def test_lattice_frames_are_exact_in_float32(periodic):
    data = thermal_fcc(dtype=torch.float32)
    assert_symmetric(faenet_fa("3D", periodic, torch.float32), [data], atol=1e-4, checks=EXACT, dim="3D",
                     cutoff=CUTOFF, trials=2)


def test_lattice_frame_depends_on_how_a_low_symmetry_cell_is_written():
    """The documented trade of ``lattice``: another cell of a primitive fcc lattice may give
    another frame (so ``cell`` is not in its exact checks); ``lattice-symmetric`` is exact."""
    data = primitive_fcc()
    with pytest.raises(AssertionError, match="cell"):
        assert_symmetric(faenet_fa("3D", "lattice"), [data], atol=1e-10, checks=("cell",), dim="3D",
                         cutoff=CUTOFF, trials=3)


@pytest.mark.parametrize("periodic", ["lattice", "lattice-symmetric"])
def test_frames_do_not_move_when_atoms_move_at_fixed_cell(periodic):
    """Along any atom motion at fixed cell the frame set is the same, element by element."""
    data = thermal_fcc()
    first = compute_frames(data.pos, cell=data.cell, pbc=data.pbc, periodic=periodic)
    moved = data.pos + 0.3 * torch.randn(data.pos.shape, generator=torch.Generator().manual_seed(0), dtype=data.pos.dtype)
    second = compute_frames(moved, cell=data.cell, pbc=data.pbc, periodic=periodic)
    assert torch.equal(first.rotation, second.rotation)
    assert first.path_names() == ["lattice"]


def test_frame_counts():
    """One frame for a full lattice (O(3) and SO(3)); ±normal for two periodic axes in 3D unless
    proper; the lattice's symmetry for ``lattice-symmetric`` (48 cubic, 12 hexagonal 2D)."""
    bulk_data, slab = thermal_fcc(), slab_with_adsorbate(pbc=(True, True, False))

    def count(data, **kwargs):
        return int(compute_frames(data.pos, cell=data.cell, pbc=data.pbc, **kwargs).num_frames[0])

    assert count(bulk_data, periodic="lattice") == 1
    assert count(bulk_data, periodic="lattice", method="se3-all") == 1
    assert count(slab, periodic="lattice") == 2
    assert count(slab, periodic="lattice", method="se3-all") == 1
    assert count(slab, periodic="lattice", dim="2D") == 1
    assert count(bulk_data, periodic="lattice-symmetric") == 48
    assert count(bulk_data, periodic="lattice-symmetric", method="se3-all") == 24
    assert count(slab, periodic="lattice-symmetric", dim="2D") == 12


def test_reduction_ignores_rounding_and_undoes_a_change_of_cell():
    """T depends on the Gram matrix through decisions with margins: a hexagonal cell (a size
    reduction tie at exactly ½) gives the same T after a rotation, and a sheared cell reduces to the
    basis of the original one."""
    hexagonal = np.array([[2.55, 0.0, 0.0], [-1.275, 2.55 * np.sqrt(3) / 2, 0.0], [0.0, 0.0, 20.0]])
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    t0 = reduction_transform(hexagonal @ hexagonal.T, 1e-3)
    rotated = hexagonal @ rotation.T
    assert np.array_equal(t0, reduction_transform(rotated @ rotated.T, 1e-3))
    assert abs(round(np.linalg.det(t0))) == 1
    sheared = np.array([[1, 0, 0], [3, 1, 0], [-2, 1, 1]]) @ hexagonal
    reduced = reduction_transform(sheared @ sheared.T, 1e-3) @ sheared
    assert np.allclose(reduced @ reduced.T, (t0 @ hexagonal) @ (t0 @ hexagonal).T, atol=1e-9)


def test_mixed_batch_uses_the_cloud_for_molecules_and_matches_separate_graphs():
    """A batch of a molecule, a crystal and a slab: the molecule takes the PCA cloud, the periodic
    graphs their lattice, and every graph's frames equal those it gets alone."""
    ethanol = atoms_to_data(molecule("CH3CH2OH"), dtype=torch.float64)
    structures = [thermal_fcc(), ethanol, slab_with_adsorbate()]
    together = frames_for_batch(graphs(structures, cutoff=CUTOFF), "all", "3D", cutoff=CUTOFF, periodic="lattice")
    assert together.path_names()[0] == "lattice" and together.path_names()[2] == "lattice"
    assert not together.lattice[1]
    for index, data in enumerate(structures):
        alone = frames_for_batch(graphs([data], cutoff=CUTOFF), "all", "3D", cutoff=CUTOFF, periodic="lattice")
        assert torch.allclose(together.rotation[together.graph == index], alone.rotation, atol=1e-12)


@pytest.mark.slow
def test_shipped_oc20_slabs_are_exact_with_lattice_frames():
    slabs = read_structures("shipped:oc20_is2re/bs3", dtype=torch.float64)[:2]
    assert_symmetric(faenet_fa("2D", "lattice"), slabs, atol=1e-10, checks=EXACT, dim="2D", cutoff=CUTOFF, trials=2)


def test_config_default_is_lattice_and_old_checkpoints_keep_the_cloud():
    assert DEFAULTS["frames"]["periodic"] == "lattice"
    config = {"seed": 0, "model": {"name": "faenet", "hidden_channels": 32, "num_filters": 32,
                                   "num_interactions": 1, "num_gaussians": 8, "tag_hidden_channels": 4,
                                   "pg_hidden_channels": 4},
              "frames": {"dims": "3D", "train": "stochastic", "eval": "all"}, "denoise": {"mode": "none"}}
    old = build_network(checkpoint_config(config))  # a checkpoint saved before the keys existed
    assert (old.periodic, old.continuous, old.cutoff) == ("cloud", False, 6.0)
    config["frames"].update(periodic="lattice", continuous=True)
    new = build_network(config)
    assert (new.periodic, new.continuous) == ("lattice", True)
    assert DEFAULTS["frames"]["continuous"] is True
