"""Training losses on normalised quantities.

Forces losses take an optional ``mask`` [N] bool of the atoms that count (free atoms, OC20's
``train_on_free_atoms``).
"""

from __future__ import annotations

import torch

from frameavg.errors import ConfigError


def energy_loss(kind: str, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "mae":
        return (pred - target).abs().mean()
    if kind == "mse":
        return ((pred - target) ** 2).mean()
    raise ConfigError(f"unknown energy loss '{kind}' (choose mae or mse)")


def forces_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``l2mae``: mean over atoms of the Euclidean error norm (OCP); ``mae``; ``mse``."""
    if mask is not None:
        pred, target = pred[mask], target[mask]
    if pred.numel() == 0:
        return pred.sum() * 0.0
    diff = pred - target
    if kind == "l2mae":
        return diff.norm(dim=-1).mean()
    if kind == "mae":
        return diff.abs().mean()
    if kind == "mse":
        return (diff**2).mean()
    raise ConfigError(f"unknown forces loss '{kind}' (choose l2mae, mae or mse)")
