"""FAENet's normalisation on a periodic crystal (fcc Cu, 108 atoms, float64, random weights):
GraphNorm divides by the graph's feature spread, ~0 when the atoms are equivalent, so its
gradients blow up near the ideal crystal; the per-atom LayerNorm (``norm="layer"``) stays
well-conditioned. The conditioning numbers: the force norm |dE/dx| at the ideal crystal (0 by
symmetry), the force ratio |F(rattled 0.01 Å)| / |F(rattled 0.05 Å)| (about 0.2 for forces linear
in the displacement; above 1 when the curvature grows as the crystal nears symmetry) and the ratio
of parameter-gradient norms, ideal over rattled by 0.05 Å."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph
from frameavg.models import FAENet


def copper(rattle: float) -> Batch:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    if rattle:
        atoms.rattle(rattle, seed=0)
    return Batch.from_data_list([RadiusGraph(5.0, None)(atoms_to_data(atoms, dtype=torch.float64))])


def gradient_norms(norm: str, batch: Batch) -> tuple[float, float]:
    """(|dE/dpos|, |dE/dθ|) of a seeded FAENet with the ``norm`` normalisation."""
    torch.manual_seed(0)
    net = FAENet(cutoff=5.0, hidden_channels=64, num_filters=64, num_gaussians=16, num_interactions=3,
                 tag_hidden_channels=0, pg_hidden_channels=8, mp_type="base", norm=norm,
                 envelope="polynomial").double()
    moved = batch.clone()
    moved.pos = batch.pos.clone().requires_grad_(True)
    params = [p for p in net.parameters()]
    grads = torch.autograd.grad(net(moved)["energy"].sum(), [moved.pos, *params], allow_unused=True)
    theta = torch.sqrt(sum(g.square().sum() for g in grads[1:] if g is not None))
    return float(grads[0].norm()), float(theta)


@pytest.fixture(scope="module")
def crystals():
    return {rattle: copper(rattle) for rattle in (0.0, 0.01, 0.05)}


def conditioning(norm: str, crystals) -> tuple[float, float, float]:
    """(|F| ideal, |F(0.01 Å)| / |F(0.05 Å)|, |dE/dθ| ideal / |dE/dθ| 0.05 Å)."""
    (f0, t0), (f1, _), (f5, t5) = (gradient_norms(norm, crystals[r]) for r in (0.0, 0.01, 0.05))
    return f0, f1 / f5, t0 / t5


def test_layer_norm_is_well_conditioned_on_an_ideal_and_a_rattled_crystal(crystals):
    force_ideal, force_ratio, theta_ratio = conditioning("layer", crystals)
    assert force_ideal < 1e-12  # exactly symmetric crystal: no force, as the physics says
    assert force_ratio < 0.4  # measured 0.19: forces about linear in the displacement
    assert 0.95 < theta_ratio < 1.05  # measured 0.999


def test_graph_norm_is_ill_conditioned_there(crystals):
    """The defect the layer norm fixes: the same numbers, out of bounds."""
    force_ideal, force_ratio, theta_ratio = conditioning("graph", crystals)
    assert force_ideal > 1e-8  # measured 1e-5: round-off amplified by 1/sqrt(eps) per block
    assert force_ratio > 1.5  # measured 2.3
    assert theta_ratio > 1.5  # measured 1.7
