"""A trained model as a potential: batched energies, forces and stress in physical units.

``Potential`` is what the ASE calculator, the relaxation engine and molecular dynamics evaluate.
It holds the network (frame-averaged or not), the energy normaliser of its training run and the
neighbour-list settings the model was trained with, and returns float64 energies (eV), forces
(eV/Å) and stress (eV/Å³, ASE's sign). Forces are conservative by default: −∂E/∂x of the
(frame-averaged) energy, through the frames (``frameavg.derivatives``); ``direct_forces=True``
uses a model's own force head instead (not conservative: molecular dynamics warns).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Batch, Data

from frameavg.data.atomic_data import atoms_to_data
from frameavg.data.neighbors import MAX_EDGES_PER_ATOM, NeighborSettings
from frameavg.derivatives import with_derivatives
from frameavg.errors import ConfigError, renamed_keyword
from frameavg.outputs import DIRECT_MODES, ENERGY, FORCES, STRESS
from frameavg.precision import resolve as resolve_precision

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def neighbor_cap_warning(max_neighbors: int) -> str:
    """The consequence of simulating with a hard neighbour cap of ``max_neighbors``."""
    k = int(max_neighbors)
    return (f"this model caps neighbours at {k} (max_neighbors): its energy jumps when the k-th and "
            f"(k+1)-th neighbours (k = {k}) swap, so MD will not conserve energy and relaxations may "
            "stall; retrain with max_neighbors: null (model and data)")


class Potential:
    """Batched model evaluation in physical units.

    Args:
        net: a model ``forward(batch) -> {"energy": [B], ...}`` in normalised units (a training
            task's ``net``), possibly a ``FrameAveraging``.
        normalizer: the ``EnergyNormalizer`` that maps its outputs to eV (identity if None).
        cutoff, max_neighbors, max_edges_per_atom: the neighbour list the model expects (ties at
            ``max_neighbors`` kept, as in training). A hard cap (``max_neighbors`` not None) warns
            once: the energy jumps whenever the k-th and (k+1)-th neighbours swap.
        frame_method: evaluation frame method of a frame-averaged net. ``auto`` (default): ``all``
            (exact), or ``learned`` for a net evaluated with learned frames (its canonicaliser was
            trained with it; PCA frames would show it inputs it never saw). ``frames=``: its old name.
        direct_forces: use the model's own force head (if any) instead of −∂E/∂x.
        device, dtype: where and in which precision the model runs (default cpu, float64).
        precision: instead of ``dtype``, a precision name (``64-true``, ``32-true``, ``bf16-mixed``,
            ``16-mixed``; see ``frameavg.precision``): mixed precision runs the model's products
            under autocast with float32 weights, positions and derivatives.
        training_elements: atomic numbers the model was trained on (None: unknown); structures
            with other elements warn once.
    """

    def __init__(self, net: nn.Module, normalizer=None, *, cutoff: float, max_neighbors: int | None = None,
                 max_edges_per_atom: float | None = MAX_EDGES_PER_ATOM, frame_method: str | None = "auto",
                 direct_forces: bool = False, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float64, precision: str | None = None, training_elements=None,
                 frames: str | None = None):
        from frameavg.frames.averaging import FrameAveraging

        dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype must be float32 or float64, got {dtype}")
        if precision is None:
            precision = "64-true" if dtype == torch.float64 else "32-true"
        self.precision = resolve_precision(precision, device)
        self.dtype = self.precision.dtype
        self.device = torch.device(device)
        frame_method = renamed_keyword(frames, "frames", "frame_method", frame_method)
        if isinstance(net, FrameAveraging) and frame_method is not None:
            if frame_method == "auto":
                frame_method = net.eval_spec.name if net.eval_spec.kind == "learned" else "all"
            net = net.with_eval_method(frame_method)
        self.net = net.to(device=self.device, dtype=self.dtype).eval()
        if normalizer is not None:
            normalizer = normalizer.to(self.device)
        self.normalizer = normalizer
        #: how every neighbour list of this potential is built (ties at max_neighbors kept, as in training)
        self.neighbors = NeighborSettings(float(cutoff), max_neighbors, strict=False, max_edges_per_atom=max_edges_per_atom)
        if max_neighbors is not None:
            warnings.warn(neighbor_cap_warning(max_neighbors), stacklevel=2)
        self.direct_forces = direct_forces
        self.training_elements = None if training_elements is None else {int(z) for z in training_elements}
        self._warned: set[int] = set()
        self.graph = self.neighbors.transform()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> "Potential":
        """The potential of a ``frameavg train`` checkpoint (read with ``weights_only``; no Lightning)."""
        from frameavg.training.checkpoint_io import load_trained_model

        return cls.from_task(load_trained_model(Path(path)), **kwargs)

    @classmethod
    def from_task(cls, task, **kwargs) -> "Potential":
        """The potential of a trained ``AtomisticTask`` or ``TrainedModel`` (its net, normaliser and
        data settings)."""
        neighbors = task.config.data.neighbors
        kwargs.setdefault("cutoff", neighbors.cutoff)
        kwargs.setdefault("max_neighbors", neighbors.max_neighbors)
        kwargs.setdefault("max_edges_per_atom", neighbors.max_edges_per_atom)
        kwargs.setdefault("training_elements", getattr(task, "training_elements", None))
        return cls(task.net, task.normalizer, **kwargs)

    @property
    def cutoff(self) -> float:
        """Neighbour-list radius, Å (``neighbors.cutoff``)."""
        return self.neighbors.cutoff

    @property
    def max_neighbors(self) -> int | None:
        """Neighbours kept per atom (``neighbors.max_neighbors``; None: all)."""
        return self.neighbors.max_neighbors

    @property
    def has_direct_forces(self) -> bool:
        """Whether the model has a force head (``direct_forces=True`` would use it)."""
        inner = getattr(self.net, "model", self.net)
        mode = getattr(inner, "regress_forces", None)
        return mode in DIRECT_MODES

    # ------------------------------------------------------------------ inputs
    def to_data(self, atoms, *, source: str = "structure", index: int | None = None) -> Data:
        """A validated ``Data`` (model inputs, this potential's dtype) of an ``ase.Atoms``."""
        data = atoms_to_data(atoms, source=source, index=index, dtype=self.dtype)
        self.check_elements(data.atomic_numbers, source=source, index=index)
        return data

    def check_elements(self, atomic_numbers: torch.Tensor, *, source: str = "structure", index=None) -> None:
        """Warn (once per element) about elements the model was not trained on."""
        if self.training_elements is None:
            return
        unseen = sorted(set(atomic_numbers.tolist()) - self.training_elements - self._warned)
        if unseen:
            from ase.data import chemical_symbols

            self._warned.update(unseen)
            names = ", ".join(chemical_symbols[z] for z in unseen)
            where = source if index is None else (f"structure {index}" if source == "structure"
                                                  else f"{source}, structure {index}")
            warnings.warn(f"{where}: element(s) {names} never appear in this model's training data; "
                          "its predictions for them are extrapolations", stacklevel=3)

    def batch(self, structures: list[Data]) -> Batch:
        """One batch of structures that already carry their neighbour lists, on this device."""
        return Batch.from_data_list(structures).to(self.device)

    # ------------------------------------------------------------------ evaluation
    def __call__(self, batch, *, forces: bool = True, stress: bool = False) -> dict:
        """{"energy": [B] eV, "forces": [N,3] eV/Å, "stress": [B,3,3] eV/Å³} (float64, detached) of a
        batch with neighbour lists (``stress`` NaN for graphs without a volume). Non-finite values
        are returned as they are: callers give such structures a status."""
        conservative = forces and not (self.direct_forces and self.has_direct_forces)
        with torch.no_grad(), self.precision.context():
            out = with_derivatives(self.net, batch, forces=conservative, stress=stress)
        if forces and FORCES not in out:
            raise ConfigError("the model gives no forces and its energy is not differentiable in positions")
        scale = 1.0 if self.normalizer is None else self.normalizer.std.to(torch.float64)
        if self.normalizer is None:
            energy = out[ENERGY].detach().double()
        else:
            energy = self.normalizer.denormalize_energy(out[ENERGY].detach(), batch.atomic_numbers, batch.batch)
        result = {ENERGY: energy}
        if forces:
            result[FORCES] = out[FORCES].detach().double() * scale
        if stress:
            result[STRESS] = out[STRESS].detach().double() * scale
        return result
