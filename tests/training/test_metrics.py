"""OC20 metrics against hand-computed values."""

import pytest
import torch

from frameavg.metrics import (
    energy_forces_within_threshold,
    energy_within_threshold,
    forces_cos,
    forces_magnitude_error,
    oc20_metrics,
)


def test_energy_metrics_by_hand():
    pred = torch.tensor([1.0, 2.0, 3.0, 4.0])
    true = torch.tensor([1.01, 2.5, 2.98, 4.02])  # errors 0.01, 0.5, 0.02, 0.02
    out = oc20_metrics({"energy": pred}, {"energy": true}, natoms=torch.tensor([1, 1, 1, 1]))
    assert out["energy_mae"] == pytest.approx((0.01 + 0.5 + 0.02 + 0.02) / 4, abs=1e-6)
    assert out["energy_mse"] == pytest.approx((0.01**2 + 0.25 + 0.0004 + 0.0004) / 4, abs=1e-6)
    assert out["energy_rmse"] == pytest.approx(((0.01**2 + 0.25 + 0.0004 + 0.0004) / 4) ** 0.5, abs=1e-6)
    assert out["energy_mae_meV"] == pytest.approx(1e3 * out["energy_mae"])
    assert out["energy_rmse_meV"] == pytest.approx(1e3 * out["energy_rmse"])
    # strict threshold: only 0.01 is below 0.02 (0.02 errors in float32 are on either side; use float64)
    e = energy_within_threshold(pred.double(), torch.tensor([1.01, 2.5, 2.99, 4.03], dtype=torch.float64))
    assert e.item() == pytest.approx(0.5)


def test_forces_cos_and_magnitude_by_hand():
    pred = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    true = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    assert forces_cos(pred, true).item() == pytest.approx(0.5)  # (0 + 1) / 2
    assert forces_magnitude_error(pred, true).item() == pytest.approx(0.5)  # (0 + 1) / 2
    out = oc20_metrics({"forces": pred}, {"forces": true}, natoms=torch.tensor([2]))
    # component errors 1, -1, 0 / 0, 1, 0: MAE 3/6, RMSE sqrt(3/6)
    assert out["forces_mae_meV_per_A"] == pytest.approx(1e3 * 3 / 6)
    assert out["forces_rmse"] == pytest.approx((3 / 6) ** 0.5)
    assert out["forces_rmse_meV_per_A"] == pytest.approx(1e3 * (3 / 6) ** 0.5)


def test_efwt_and_free_atom_masking():
    natoms = torch.tensor([2, 3])
    e_true = torch.tensor([0.0, 0.0], dtype=torch.float64)
    e_pred = torch.tensor([0.01, 0.01], dtype=torch.float64)
    f_true = torch.zeros(5, 3, dtype=torch.float64)
    f_pred = torch.zeros(5, 3, dtype=torch.float64)
    f_pred[1, 2] = 0.029  # graph 0: within 0.03
    f_pred[4, 0] = 0.5  # graph 1: atom 4 way off
    assert energy_forces_within_threshold(e_pred, e_true, f_pred, f_true, natoms).item() == 0.5
    free = torch.tensor([True, True, True, True, False])  # atom 4 fixed -> excluded
    out = oc20_metrics({"energy": e_pred, "forces": f_pred}, {"energy": e_true, "forces": f_true}, natoms, free)
    assert out["energy_forces_within_threshold"] == 1.0
    assert out["forces_mae"] == pytest.approx(0.029 / 12)
    # energy failing the threshold fails EFwT even with perfect forces
    out = oc20_metrics({"energy": e_pred + 0.02, "forces": f_true}, {"energy": e_true, "forces": f_true}, natoms)
    assert out["energy_forces_within_threshold"] == 0.0
    # exactly at the force threshold fails (strict)
    f_pred2 = torch.zeros(5, 3, dtype=torch.float64)
    f_pred2[0, 0] = 0.03
    assert energy_forces_within_threshold(e_pred, e_true, f_pred2, f_true, natoms).item() == 0.5


def test_relaxation_metrics_by_hand():
    """OC20 IS2RS: per structure the mean minimum-image distance of the free atoms to the relaxed
    positions; ADwT = fraction of (structure, threshold 0.010..0.499 Å) pairs below."""
    import numpy as np

    from frameavg.metrics import ADWT_THRESHOLDS, min_image_displacement, relaxation_metrics

    cell = np.eye(3) * 10.0
    target_a = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [0.05, 3.0, 3.0], [5.0, 5.0, 5.0]])
    pred_a = target_a + [[0.1, 0, 0], [0, 0.2, 0], [-0.1, 0, 0], [4.0, 0, 0]]  # atom 2 crosses x = 0
    pred_a[2, 0] += 10.0  # and is given in the next image: still 0.1 Å away
    free_a = np.array([True, True, True, False])  # the fixed atom's 4 Å do not count
    target_b = np.zeros((2, 3))
    pred_b = target_b + [[0.2995, 0, 0], [0, 0, -0.2995]]
    assert np.allclose(min_image_displacement(pred_a, target_a, cell, [True] * 3)[2], [-0.1, 0, 0])
    metrics = relaxation_metrics([pred_a, pred_b], [target_a, target_b], [cell, cell], [[True] * 3] * 2,
                                 [free_a, np.ones(2, bool)], pred_energies=[1.0, -2.0], target_energies=[1.01, -1.5])
    assert len(ADWT_THRESHOLDS) == 490
    # A: mean 0.4/3 = 0.1333 Å, below thresholds 0.134..0.499 (366); B: 0.2995 Å, below 0.300..0.499 (200)
    assert metrics["average_distance_within_threshold"] == pytest.approx((366 + 200) / 980, abs=1e-12)
    assert metrics["mean_distance"] == pytest.approx((0.4 / 3 + 0.2995) / 2)
    assert metrics["relaxed_energy_mae"] == pytest.approx((0.01 + 0.5) / 2)
    assert metrics["relaxed_energy_within_threshold"] == 0.5
    molecule = relaxation_metrics([pred_b], [target_b], [np.zeros((3, 3))], [[False] * 3], [np.ones(2, bool)])
    assert molecule["mean_distance"] == pytest.approx(0.2995)
