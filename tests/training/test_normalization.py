import ase.io
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.shipped import shipped_path
from frameavg.training.normalization import EnergyNormalizer


def _batch(real_data):
    frames = ase.io.read(real_data / "qm7" / "qm7_first300.extxyz", ":300")
    return Batch.from_data_list([atoms_to_data(a, keys={"energy": "hof_pbe0_kcal_mol"}) for a in frames])


def test_element_references_explain_composition(real_data):
    batch = _batch(real_data)
    norm = EnergyNormalizer.fit(batch.atomic_numbers, batch.batch, batch.energy)
    # QM7 heats of formation are close to additive in the composition: residual std << raw std
    assert norm.std.item() < 0.2 * batch.energy.double().std().item()
    z = norm.normalize_energy(batch.energy, batch.atomic_numbers, batch.batch)
    assert abs(z.mean().item()) < 1e-5 and z.std().item() == pytest.approx(1.0, rel=1e-4)
    back = norm.denormalize_energy(z, batch.atomic_numbers, batch.batch)
    torch.testing.assert_close(back, batch.energy.double(), atol=1e-3, rtol=0)
    assert norm.element_references[[1, 6, 7, 8, 16]].abs().sum() > 0
    assert norm.element_references[79] == 0  # absent element


def test_constant_composition_reduces_to_mean():
    frames = ase.io.read(shipped_path("rmd17_ethanol/train"), ":200")
    batch = Batch.from_data_list([atoms_to_data(a) for a in frames])
    norm = EnergyNormalizer.fit(batch.atomic_numbers, batch.batch, batch.energy)
    pred = norm.denormalize_energy(torch.zeros(200), batch.atomic_numbers, batch.batch)
    torch.testing.assert_close(pred, torch.full((200,), batch.energy.double().mean().item(), dtype=torch.float64))
    assert norm.denormalize_forces(norm.normalize_forces(batch.forces)).allclose(batch.forces)
