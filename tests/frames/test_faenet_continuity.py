"""Issue 30's continuity must-shows for FAENet with this round's defaults (polynomial envelope,
LayerNorm, all frames, lattice frames for periodic graphs, continuous weighted frames), float64,
on real structures: a thermal 108-atom fcc Cu cell, an ideal fcc cell, a Cu(111) slab with O on a
hollow site, the ideal slab and ethanol. Along seeded random paths no energy step exceeds 10x the
local smooth change, and forces equal finite differences at and near exactly symmetric structures."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph
from frameavg.evaluation.continuity import continuity_check, cu111_slab, reference_structures
from torch_geometric.data import Batch

from .structures import small_faenet

CUTOFF = 5.0


def faenet(dim: str, *, periodic: str = "lattice", continuous: bool = True, forces=None):
    return small_faenet(dim, cutoff=CUTOFF, periodic=periodic, continuous=continuous, forces=forces)


@pytest.fixture(scope="module")
def structures():
    return {name: atoms_to_data(atoms, dtype=torch.float64) for name, atoms in reference_structures().items()}


@pytest.mark.parametrize("name", ["bulk_thermal", "bulk_ideal", "slab_adsorbate", "slab_ideal", "ethanol"])
def test_default_frames_are_continuous_along_a_random_path(structures, name):
    dim = "2D" if name.startswith("slab") else "3D"
    result = continuity_check(faenet(dim), structures[name], steps=80, step=0.003, seed=0, cutoff=CUTOFF)
    assert result.jumps == 0, result.to_dict()
    assert result.max_over_median < 10.0


@pytest.mark.parametrize("name", ["slab_adsorbate", "slab_ideal", "ethanol"])
@pytest.mark.slow
def test_continuous_cloud_frames_are_continuous_along_a_random_path(structures, name):
    """The cloud frames (``periodic="cloud"``) with weights: no jump on the slabs and ethanol. (On
    nearly cubic bulk clouds the triple-degenerate remainder still switches: docs/frames.md.)"""
    dim = "2D" if name.startswith("slab") else "3D"
    result = continuity_check(faenet(dim, periodic="cloud"), structures[name], steps=60, step=0.003, seed=1,
                              cutoff=CUTOFF)
    assert result.jumps == 0, result.to_dict()


def finite_difference_errors(model, data, moves, h=1e-5) -> float:
    graph = RadiusGraph(CUTOFF)
    batch = Batch.from_data_list([graph(data)])
    forces = model(batch)["forces"].detach()
    worst = 0.0
    for atom, axis in moves:
        energies = []
        for sign in (1, -1):
            moved = data.clone()
            moved.pos = data.pos.clone()
            moved.pos[atom, axis] += sign * h
            with torch.no_grad():
                energies.append(float(model(Batch.from_data_list([graph(moved)]))["energy"]))
        worst = max(worst, abs(float(forces[atom, axis]) + (energies[0] - energies[1]) / (2 * h)))
    return worst


@pytest.mark.parametrize("case", ["fcc_ideal", "fcc_near", "slab_ideal", "slab_near"])
def test_forces_equal_finite_differences_at_and_near_symmetric_crystals(case):
    """−∂E/∂x to 1e-6 eV/Å at an ideal fcc cell and an ideal Cu(111) slab, and 1 mÅ away from them."""
    if case.startswith("fcc"):
        atoms, dim = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2), "3D"
    else:
        atoms, dim = cu111_slab(), "2D"
    if case.endswith("near"):
        atoms.rattle(0.001, seed=4)
    data = atoms_to_data(atoms, dtype=torch.float64)
    error = finite_difference_errors(faenet(dim, forces="from_energy"), data, [(0, 0), (1, 2), (5, 1)])
    assert error < 1e-6
