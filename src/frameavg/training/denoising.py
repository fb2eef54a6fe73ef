"""Noisy Nodes (Godwin et al., 2022): training batches with noised positions and a denoising target.

A noised batch is a copy of a training batch (the caller's tensors are never modified) in which a
seeded fraction ``corrupt_ratio`` of the free atoms (``~fixed``; all atoms when the data has no
``fixed``) moves by ε ~ N(0, σ²) per Cartesian component. The neighbour list is rebuilt for the
noised positions, so the model sees the noised structure's own graph. The target per atom is

* ``noise``: ε / σ (dimensionless, unit variance; zero for atoms that did not move), or
* ``relaxed``: ``pos_relaxed − noised pos`` in Å (the IS2RS direction, Equiformer's OC20 task).

The denoising loss is the mean squared error over the moved atoms (``noise``) or over all free
atoms (``relaxed``). Validation, test and prediction never see noise: only the training step
calls :func:`noised_batch`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from frameavg.data.neighbors import NeighborSettings
from frameavg.data.pyg_compat import replace_edges
from frameavg.errors import ConfigError, DataError
from frameavg.training.config_sections import DenoiseConfig, RunConfig, TargetsConfig


#: The ``denoise`` section of a training config (``training.config_sections.DenoiseConfig``);
#: ``DenoiseSettings.from_config(config)`` resolves its seed.
DenoiseSettings = DenoiseConfig


@dataclass
class NoisedBatch:
    """A noised copy of a batch, the per-atom target [N, 3] and the atoms the loss covers [N]."""

    batch: object
    target: Tensor
    mask: Tensor


def new_generator(settings: DenoiseSettings) -> torch.Generator:
    """The CPU generator of the noise (its state goes into training checkpoints)."""
    return torch.Generator().manual_seed(int(settings.seed or 0))


def noised_batch(batch, settings: DenoiseSettings, generator: torch.Generator,
                 neighbors: NeighborSettings) -> NoisedBatch | None:
    """A noised copy of ``batch`` with probability ``settings.prob`` (else None: a clean batch).

    Draws, in this order and always from ``generator`` (reproducible, also after a resume): the
    batch's coin, the atoms that move, the noise. The neighbour list of the copy is rebuilt with
    the run's ``neighbors`` settings, as the data pipeline builds it.
    """
    coin = float(torch.rand((), generator=generator))
    num_atoms = batch.pos.shape[0]
    chosen = torch.rand(num_atoms, generator=generator) < settings.corrupt_ratio
    noise = torch.randn(num_atoms, 3, generator=generator, dtype=torch.float64)
    if coin >= settings.prob:
        return None
    device, dtype = batch.pos.device, batch.pos.dtype
    fixed = getattr(batch, "fixed", None)
    free = torch.ones(num_atoms, dtype=torch.bool, device=device) if fixed is None else ~fixed.bool()
    moved = free & chosen.to(device)
    epsilon = settings.sigma * noise.to(device=device, dtype=dtype) * moved.unsqueeze(-1)
    noised = copy.copy(batch)
    noised.pos = batch.pos.detach() + epsilon
    if getattr(batch, "edge_index", None) is not None:
        edge_index, cell_offsets, counts = neighbors.edges_of(noised)
        noised = replace_edges(noised, edge_index.to(device), cell_offsets.to(device=device), counts.to(device))
    if settings.target == "relaxed":
        relaxed = getattr(batch, "pos_relaxed", None)
        if relaxed is None:
            raise DataError("denoise.target: relaxed needs pos_relaxed in the training data (IS2RE/IS2RS files)")
        return NoisedBatch(noised, (relaxed.to(dtype) - noised.pos).detach(), free)
    if settings.target != "noise":
        raise ConfigError(f"denoise.target must be noise or relaxed, got {settings.target!r}")
    return NoisedBatch(noised, epsilon / settings.sigma, moved)


def denoising_loss(prediction: Tensor, noised: NoisedBatch) -> Tensor:
    """Mean squared error [] of the prediction [N, 3] over the atoms the loss covers."""
    mask = noised.mask
    if not bool(mask.any()):
        return prediction.sum() * 0.0  # no atom moved: a zero that keeps the graph
    error = prediction[mask] - noised.target[mask].to(prediction.dtype)
    return error.pow(2).mean()


def pretraining_config(config: RunConfig | dict) -> RunConfig:
    """``config`` for denoising pre-training on structures without labels (``frameavg
    pretrain``): no energy, force or stress targets, no label mapping and no test set; Noisy Nodes
    with the ``noise`` target on (its sigma, prob, corrupt ratio and weights as the config gives
    them)."""
    run = RunConfig.of(config)
    if run.denoise.target != "noise":
        raise ConfigError("pre-training predicts the noise: denoise.target must be noise")
    return run.replace(
        targets=TargetsConfig(energy=False, forces=False, stress=False),
        normalize=dataclasses.replace(run.normalize, energy=False),
        data=dataclasses.replace(run.data, test=None, keys={}, test_fraction=0.0),  # labels are ignored
        denoise=run.denoise if run.denoise.enabled else dataclasses.replace(run.denoise, mode="noisy_nodes"))


__all__ = ["DenoiseSettings", "pretraining_config", "NoisedBatch", "denoising_loss", "new_generator", "noised_batch"]
