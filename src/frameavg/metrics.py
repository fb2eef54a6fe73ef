"""Metrics exactly as the OC20 evaluator defines them (fairchem ``modules/evaluator.py``).

Energies are [B] (eV), forces [N,3] (eV/Å), ``natoms`` [B]. Force metrics are taken over the atoms
passed in: callers pass only free atoms when evaluating on free atoms (OC20 default), via ``mask``.
Thresholds: 0.02 eV for energies, 0.03 eV/Å (maximum absolute component) for forces; both strict
(``<``) as in the OC20 evaluator. A top-level module: training validates with these metrics,
evaluation tests with them and simulation scores relaxations with them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from frameavg.outputs import ENERGY, FORCES, STRESS

ENERGY_THRESHOLD = 0.02  # eV
FORCES_THRESHOLD = 0.03  # eV/Å


def energy_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def energy_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def energy_within_threshold(pred, target, threshold: float = ENERGY_THRESHOLD) -> torch.Tensor:
    """Fraction of structures with |ΔE| < threshold."""
    return ((pred - target).abs() < threshold).float().mean()


def forces_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all force components, eV/Å."""
    return (pred - target).abs().mean()


def forces_cos(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between predicted and target force vectors (per atom)."""
    return torch.nn.functional.cosine_similarity(pred, target, dim=-1).mean()


def forces_magnitude_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of force vector norms, eV/Å."""
    return (pred.norm(dim=-1) - target.norm(dim=-1)).abs().mean()


def energy_forces_within_threshold(
    energy_pred, energy_target, forces_pred, forces_target, natoms: torch.Tensor,
    energy_threshold: float = ENERGY_THRESHOLD, forces_threshold: float = FORCES_THRESHOLD,
) -> torch.Tensor:
    """Fraction of structures with |ΔE| < 0.02 eV and max |ΔF component| < 0.03 eV/Å.

    ``natoms`` [B] counts the atoms of each structure present in ``forces_*`` (free atoms only
    when the forces were masked); a structure with no atoms left passes on energy alone.
    """
    graph = torch.repeat_interleave(torch.arange(len(natoms), device=natoms.device), natoms)
    max_error = torch.zeros(len(natoms), dtype=forces_pred.dtype, device=forces_pred.device)
    component_max = (forces_pred - forces_target).abs().amax(dim=-1)
    max_error = max_error.scatter_reduce(0, graph, component_max, reduce="amax", include_self=True)
    ok = ((energy_pred - energy_target).abs() < energy_threshold) & (max_error < forces_threshold)
    return ok.float().mean()


def oc20_metrics(pred: dict, target: dict, natoms: torch.Tensor, free: torch.Tensor | None = None) -> dict:
    """All OC20 metrics available from ``pred``/``target`` dicts with ``energy`` and/or ``forces``.

    Args:
        natoms: [B] atoms per structure. free: [N] bool, atoms the force metrics are taken on
            (None: all atoms). ``stress`` [B,3,3] (eV/Å³) gives ``stress_mae`` (not an OC20 metric).
    Returns: {metric name: float}.
    """
    out = {}
    has_energy = ENERGY in pred and ENERGY in target
    has_forces = FORCES in pred and FORCES in target
    if has_energy:
        e_pred, e_true = pred[ENERGY].detach(), target[ENERGY].detach()
        out["energy_mae"] = energy_mae(e_pred, e_true).item()
        out["energy_mse"] = energy_mse(e_pred, e_true).item()
        out["energy_within_threshold"] = energy_within_threshold(e_pred, e_true).item()
        out["energy_rmse"] = math.sqrt(out["energy_mse"])
    if has_forces:
        f_pred, f_true = pred[FORCES].detach(), target[FORCES].detach()
        counts = natoms
        if free is not None:
            graph = torch.repeat_interleave(torch.arange(len(natoms), device=natoms.device), natoms)
            counts = torch.bincount(graph[free], minlength=len(natoms))
            f_pred, f_true = f_pred[free], f_true[free]
        out["forces_mae"] = forces_mae(f_pred, f_true).item()
        out["forces_cos"] = forces_cos(f_pred, f_true).item()
        out["forces_magnitude_error"] = forces_magnitude_error(f_pred, f_true).item()
        out["forces_rmse"] = (f_pred - f_true).double().square().mean().sqrt().item()  # over components
        if has_energy:
            out["energy_forces_within_threshold"] = energy_forces_within_threshold(
                e_pred, e_true, f_pred, f_true, counts
            ).item()
    if STRESS in pred and STRESS in target:
        s_pred, s_true = pred[STRESS].detach().reshape(-1, 9), target[STRESS].detach().reshape(-1, 9)
        out["stress_mae"] = (s_pred - s_true).abs().mean().item()  # eV/Å³, over all 9 components
    return out | with_units(out)


#: Metric name -> (name with its unit, factor from eV / eV/Å) of ``with_units``.
UNIT_KEYS = {"energy_mae": ("energy_mae_meV", 1e3), "energy_rmse": ("energy_rmse_meV", 1e3),
             "forces_mae": ("forces_mae_meV_per_A", 1e3), "forces_rmse": ("forces_rmse_meV_per_A", 1e3)}


def with_units(metrics: dict) -> dict:
    """The MAE/RMSE metrics again in meV and meV/Å, units in the names (``energy_mae_meV``)."""
    return {UNIT_KEYS[k][0]: v * UNIT_KEYS[k][1] for k, v in metrics.items() if k in UNIT_KEYS}


# --------------------------------------------------------------------------- IS2RS / IS2RE by relaxation
ADWT_THRESHOLDS = np.arange(0.01, 0.5, 0.001)  # Å, the OC20 evaluator's


def min_image_displacement(pred_pos: np.ndarray, target_pos: np.ndarray, cell: np.ndarray, pbc) -> np.ndarray:
    """[n,3] displacements pred − target reduced to the nearest periodic image (OC20 ``min_diff``):
    fractional differences along periodic axes wrapped into (−1/2, 1/2]. (OC20 also folds
    non-periodic axes; its structures are periodic along all three, where both agree.)"""
    diff = np.asarray(pred_pos, dtype=np.float64) - np.asarray(target_pos, dtype=np.float64)
    periodic = np.asarray(pbc, dtype=bool).reshape(3)
    if not periodic.any():
        return diff
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    fractional = np.linalg.solve(cell.T, diff.T).T
    wrapped = fractional % 1.0 % 1.0  # twice, as OC20: -1e-17 % 1.0 == 1.0
    wrapped[wrapped > 0.5] -= 1.0
    fractional[:, periodic] = wrapped[:, periodic]
    return fractional @ cell


def average_distance_within_threshold(mean_distances) -> float:
    """OC20's ADwT: the fraction of (structure, threshold) pairs, thresholds 0.01..0.499 Å, whose
    mean free-atom distance to the relaxed positions is below the threshold."""
    distances = np.asarray(mean_distances, dtype=np.float64)
    if distances.size == 0:
        return math.nan
    return float((distances[:, None] < ADWT_THRESHOLDS[None, :]).mean())


def relaxation_metrics(pred_positions, target_positions, cells, pbcs, free_masks,
                       pred_energies=None, target_energies=None) -> dict:
    """IS2RS and IS2RE-by-relaxation metrics of relaxed structures against relaxed references.

    Args (one entry per structure): positions [n,3] Å, cells [3,3], pbcs [3], free_masks [n]
    (atoms that count: OC20 evaluates free atoms only); energies eV (optional).
    Returns ``average_distance_within_threshold``, ``mean_distance`` (Å, mean over structures),
    and with energies ``relaxed_energy_mae`` (eV) and ``relaxed_energy_within_threshold``
    (fraction within 0.02 eV)."""
    distances = []
    for pred, target, cell, pbc, free in zip(pred_positions, target_positions, cells, pbcs, free_masks):
        free = np.asarray(free, dtype=bool)
        diff = min_image_displacement(np.asarray(pred)[free], np.asarray(target)[free], cell, pbc)
        distances.append(float(np.linalg.norm(diff, axis=1).mean()) if free.any() else 0.0)
    out = {"average_distance_within_threshold": average_distance_within_threshold(distances),
           "mean_distance": float(np.mean(distances)) if distances else math.nan}
    if pred_energies is not None and target_energies is not None:
        errors = np.abs(np.asarray(pred_energies, dtype=np.float64) - np.asarray(target_energies, dtype=np.float64))
        out["relaxed_energy_mae"] = float(errors.mean())
        out["relaxed_energy_within_threshold"] = float((errors < ENERGY_THRESHOLD).mean())
    return out


__all__ = [
    "ADWT_THRESHOLDS", "ENERGY_THRESHOLD", "FORCES_THRESHOLD", "UNIT_KEYS", "average_distance_within_threshold",
    "energy_forces_within_threshold", "energy_mae", "energy_mse", "energy_within_threshold", "forces_cos",
    "forces_mae", "forces_magnitude_error", "min_image_displacement", "oc20_metrics", "relaxation_metrics",
    "with_units",
]
