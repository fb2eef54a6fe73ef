"""One place for derivatives: forces are −∂E/∂x and stress is the strain derivative (over the
volume, ASE's sign), through frame averaging, equal to finite differences on real crystals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import read_structures
from frameavg.data.neighbors import RadiusGraph
from frameavg.derivatives import matrix_to_voigt, voigt_to_matrix, with_derivatives
from frameavg.evaluation.symmetry import model_inputs
from frameavg.frames import FrameAveraging
from frameavg.models import FAENet, build_model

CUTOFF = 5.0


def faenet_fa():
    torch.manual_seed(0)
    model = FAENet(cutoff=CUTOFF, hidden_channels=64, num_filters=64, num_interactions=2, num_gaussians=16,
                   tag_hidden_channels=0, pg_hidden_channels=8, phys_embeds=False, regress_forces=None)
    return FrameAveraging(model, dims="3D", method="all", cutoff=CUTOFF).double().eval()


@pytest.fixture(scope="module")
def oxides(real_data):
    structures = read_structures(real_data / "oxides_eos" / "oxides.db", dtype=torch.float64)
    return [RadiusGraph(CUTOFF)(structures[i]) for i in (0, 60, 150, 280)]


def _energy(model, data, pos, cell):
    moved = data.clone()
    moved.pos, moved.cell = pos, cell.reshape(1, 3, 3)
    with torch.no_grad():
        return float(model(Batch.from_data_list([moved]))["energy"][0])


@pytest.mark.parametrize("name", ["faenet-fa", "schnet"])
def test_stress_and_forces_equal_finite_differences_on_oxides(oxides, name):
    """σ_ij = (1/V) ∂E/∂ε_ij by central differences of E(x (I+ε), cell (I+ε)) with the graph kept,
    1e-6 eV/Å³; forces 1e-6 eV/Å (float64). FAENet with all frames: through the frames."""
    model = faenet_fa() if name == "faenet-fa" else build_model("schnet", hidden_channels=32, num_filters=32,
                                                                  num_interactions=2, cutoff=CUTOFF).double().eval()
    h = 1e-5
    for data in oxides:
        out = with_derivatives(model, Batch.from_data_list([data]), forces=True, stress=True)
        cell, pos = data.cell[0], data.pos
        volume = abs(float(torch.linalg.det(cell)))
        numeric = torch.zeros(3, 3, dtype=torch.float64)
        for i, j in itertools.product(range(3), repeat=2):
            eps = torch.zeros(3, 3, dtype=torch.float64)
            eps[i, j] += h / 2
            eps[j, i] += h / 2
            up = _energy(model, data, pos @ (torch.eye(3) + eps), cell @ (torch.eye(3) + eps))
            down = _energy(model, data, pos @ (torch.eye(3) - eps), cell @ (torch.eye(3) - eps))
            numeric[i, j] = (up - down) / (2 * h) / volume
        torch.testing.assert_close(out["stress"][0], numeric, rtol=0, atol=1e-6)
        torch.testing.assert_close(out["virial"][0], -volume * numeric, rtol=0, atol=1e-6 * volume)
        atom = 2
        for c in range(3):
            shifted = pos.clone()
            shifted[atom, c] += h
            up = _energy(model, data, shifted, cell)
            shifted[atom, c] -= 2 * h
            down = _energy(model, data, shifted, cell)
            assert abs(float(out["forces"][atom, c]) + (up - down) / (2 * h)) < 1e-6


def test_the_batch_is_not_modified_and_molecules_get_nan_stress(real_data):
    molecule = model_inputs(read_structures(real_data / "rmd17_ethanol" / "train.xyz", dtype=torch.float64)[0])
    crystal = model_inputs(read_structures(real_data / "oxides_eos" / "oxides.db", dtype=torch.float64)[0])
    batch = Batch.from_data_list([RadiusGraph(CUTOFF)(molecule), RadiusGraph(CUTOFF)(crystal)])
    pos, cell = batch.pos.clone(), batch.cell.clone()
    out = with_derivatives(faenet_fa(), batch, forces=True, stress=True)
    assert not batch.pos.requires_grad and torch.equal(batch.pos, pos) and torch.equal(batch.cell, cell)
    assert torch.isnan(out["stress"][0]).all() and torch.isfinite(out["stress"][1]).all()
    assert out["forces"].shape == pos.shape


def test_voigt_round_trip():
    matrix = torch.tensor([[[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]]])
    voigt = matrix_to_voigt(matrix)
    assert voigt.tolist() == [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]]  # ASE's order xx yy zz yz xz xy
    assert torch.equal(voigt_to_matrix(voigt), matrix) and torch.equal(voigt_to_matrix(matrix.reshape(1, 9)), matrix)
