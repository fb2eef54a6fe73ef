"""Shared input handling and force modes for the energy models of ``frameavg.models``.

A model subclasses :class:`EnergyModel` and implements :meth:`EnergyModel.energy`, which maps one
:class:`GraphInputs` (atoms, positions, periodic edges) to per-graph energies and, optionally,
direct per-atom forces. :meth:`EnergyModel.forward` then validates the batch, builds the neighbour
list when the batch has none, and returns ``{"energy": [B], "forces": [N, 3]}`` with forces either
conservative (``-dE/dpos``, differentiable in training for force losses) or from a direct head,
and with ``direct_with_gradient_target`` also ``gradient_forces`` (see ``frameavg.outputs``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from frameavg.data.neighbors import edge_vectors, radius_graph_batch
from frameavg.derivatives import conservative_forces, energy_gradients
from frameavg.errors import ConfigError, DataError
from frameavg.outputs import (
    DENOISING,
    DENOISING_POTENTIAL,
    DIRECT_MODES,
    DIRECT_WITH_GRADIENT_TARGET,
    ENERGY,
    FORCES,
    FROM_ENERGY,
    GRADIENT_FORCES,
    force_mode,
)
from frameavg.precision import full


@dataclass
class GraphInputs:
    """One batch of graphs as tensors.

    Attributes:
        atomic_numbers: [N] long.
        pos: [N, 3] Å (requires grad when forces are taken from the energy).
        batch: [N] long graph index of each atom.
        num_graphs: B.
        edge_index: [2, E] long; row 0 source j (neighbour), row 1 target i (centre).
        cell_offsets: [E, 3] integer image shifts (float) or None for molecules.
        cell: [B, 3, 3] Å or None.
        tags: [N] long OC20 tags (0 bulk, 1 surface, 2 adsorbate) or None.
        create_graph: whether the caller differentiates through ``-dE/dpos`` (training on
            conservative forces): a model with hand-written backward paths keeps them twice
            differentiable then.
        denoising: whether the model's denoising head should predict (see ``EnergyModel``).
    """

    atomic_numbers: Tensor
    pos: Tensor
    batch: Tensor
    num_graphs: int
    edge_index: Tensor
    cell_offsets: Tensor | None
    cell: Tensor | None
    tags: Tensor | None = None
    create_graph: bool = False
    denoising: bool = False

    def edge_vectors(self) -> Tensor:
        """[E, 3] Å: ``pos[j] - pos[i] + cell_offsets @ cell`` (differentiable in ``pos``)."""
        return edge_vectors(self.pos, self.edge_index, self.cell_offsets, self.cell, self.batch)


def check_atomic_numbers(z: Tensor, max_z: int, model: str) -> None:
    """``DataError`` naming the element and both ranges when ``z`` leaves the model's 1..max_z."""
    low, high = (int(v) for v in torch.aminmax(z))
    if low >= 1 and high <= max_z:
        return
    from ase.data import chemical_symbols

    from frameavg.data.atomic_data import MAX_Z

    bad = low if low < 1 else high
    symbol = f" ({chemical_symbols[bad]})" if 0 < bad < len(chemical_symbols) else ""
    raise DataError(f"atomic number {bad}{symbol}: {model} embeds Z = 1..{max_z} "
                    f"(the readers accept 1..{MAX_Z}); remove the element or use a model that embeds it")


def check_tags(tags: Tensor) -> None:
    """``DataError`` unless the tags follow OC20 (0 subsurface, 1 surface, 2 adsorbate)."""
    low, high = (int(v) for v in torch.aminmax(tags))
    if low < 0 or high > 2:
        raise DataError(f"tag {low if low < 0 else high}: tags must be 0 (subsurface), 1 (surface) or 2 (adsorbate) "
                        "as in OC20; ASE's layer tags (1 = top layer, 2, 3, ... deeper, 0 = adsorbate) are converted "
                        "by the readers (tags='ase')")


def num_graphs_of(batch, batch_vector: Tensor) -> int:
    """B for a PyG ``Batch`` or ``Data`` (``num_graphs``, else ``natoms``, else from ``batch``)."""
    num_graphs = getattr(batch, "num_graphs", None)
    if isinstance(num_graphs, int):
        return num_graphs
    natoms = getattr(batch, "natoms", None)
    if natoms is not None:
        return int(natoms.numel())
    return int(batch_vector.max()) + 1 if batch_vector.numel() else 0


class EnergyModel(nn.Module):
    """Base class: energy [B] eV from :meth:`energy`, forces [N, 3] eV/Å by ``regress_forces``.

    Args:
        cutoff: neighbour-list radius in Å used when a batch has no ``edge_index``.
        max_neighbors: neighbours kept per atom in that case (None: all).
        regress_forces: a mode of ``frameavg.outputs.FORCE_MODES``: ``"from_energy"`` (default,
            conservative ``F = -dE/dpos``), ``"direct"`` (the model's own force head),
            ``"direct_with_gradient_target"`` (the head, plus ``gradient_forces`` = -dE/dpos,
            detached, in training) or None (energy only).
        max_z: largest atomic number the model embeds.
    """

    def __init__(self, cutoff: float, max_neighbors: int | None = None,
                 regress_forces: str | None = FROM_ENERGY, max_z: int = 100):
        super().__init__()
        regress_forces = force_mode(regress_forces, "regress_forces")
        if regress_forces in DIRECT_MODES and not self.has_direct_forces:
            raise ConfigError(f"{type(self).__name__} has no direct force head; use regress_forces='from_energy'")
        if not cutoff > 0:  # NaN too
            raise ConfigError(f"cutoff must be positive, got {cutoff}")
        self.cutoff = float(cutoff)
        self.max_neighbors = max_neighbors
        self.regress_forces = regress_forces
        self.max_z = int(max_z)

    #: Whether :meth:`energy` can return direct forces (set by subclasses that have a head).
    has_direct_forces = False

    #: Transformations the energy is invariant to (and forces equivariant under) by construction,
    #: as named by ``frameavg.evaluation.symmetry`` checks; what ``frameavg symmetry`` claims.
    invariances: tuple[str, ...] = ("rotation", "reflection", "translation")

    #: Whether the model reads OC20 tags (then they are checked to be 0, 1 or 2).
    uses_tags = False

    #: How the model's optional denoising head predicts per-atom vectors [N, 3]: ``"vector"`` (a
    #: head on the model's own vector or coordinate features: FAENet, PaiNN; under frame averaging
    #: rotated back like forces), ``"gradient"`` (−∂(Σ_i a_i)/∂x of an auxiliary per-atom scalar
    #: a_i, equivariant for invariant models: SchNet) or None (no head).
    denoising_kind: str | None = None

    @property
    def has_denoising_head(self) -> bool:
        """Whether this instance was built with a denoising head (``denoising_head=True``)."""
        return getattr(self, "denoising_head", None) is not None

    def energy(self, inputs: GraphInputs, direct_forces: bool) -> tuple:
        """Per-graph energy [B] and, when ``direct_forces``, per-atom forces [N, 3]; a model with a
        denoising head adds, when ``inputs.denoising``, a third item ``{"denoising": [N, 3]}``
        (``denoising_kind="vector"``) or ``{"denoising_potential": [N]}`` (``"gradient"``)."""
        raise NotImplementedError

    def graph_inputs(self, batch, pos: Tensor | None = None) -> GraphInputs:
        """Validated :class:`GraphInputs` of a batch (neighbour list built if missing)."""
        pos = batch.pos if pos is None else pos
        z = batch.atomic_numbers
        if z.dim() != 1 or pos.dim() != 2 or pos.shape != (z.shape[0], 3):
            raise DataError(f"expected atomic_numbers [N] and pos [N,3], got {tuple(z.shape)} and {tuple(pos.shape)}")
        if z.numel() == 0:
            raise DataError("batch has no atoms")
        model_dtype = next(self.parameters()).dtype
        if pos.dtype != model_dtype:
            raise DataError(f"positions are {pos.dtype} but the model is {model_dtype}: convert one "
                            f"(model.to({pos.dtype}) or read the data with dtype={model_dtype})")
        tags = getattr(batch, "tags", None)
        if not torch.compiler.is_compiling():
            check_atomic_numbers(z, self.max_z, type(self).__name__)
            if not bool(torch.isfinite(pos).all()):
                raise DataError("positions contain NaN or inf")
            if tags is not None and self.uses_tags:
                check_tags(tags)
        batch_vector = getattr(batch, "batch", None)
        if batch_vector is None:
            batch_vector = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        edge_index = getattr(batch, "edge_index", None)
        cell_offsets = getattr(batch, "cell_offsets", None)
        if edge_index is None:
            edge_index, cell_offsets, _ = radius_graph_batch(batch, self.cutoff, self.max_neighbors)
        return GraphInputs(
            atomic_numbers=z.long(), pos=pos, batch=batch_vector, num_graphs=num_graphs_of(batch, batch_vector),
            edge_index=edge_index, cell_offsets=cell_offsets, cell=getattr(batch, "cell", None),
            tags=None if tags is None else tags.long(),
        )

    def forward(self, batch, compute_gradient_forces: bool | None = None,
                compute_denoising: bool | None = None) -> dict[str, Tensor]:
        """``{"energy": [B]}`` plus ``"forces": [N, 3]`` unless ``regress_forces`` is None.

        ``gradient_forces`` [N, 3] (-dE/dpos, detached) comes beside direct forces with
        ``direct_with_gradient_target`` in training mode, or when ``compute_gradient_forces``.
        ``denoising`` [N, 3] comes from a denoising head in training mode, or when
        ``compute_denoising``. ``batch`` is never modified (positions are differentiated through a
        detached copy).
        """
        mode = self.regress_forces
        from_energy = mode == FROM_ENERGY
        direct = mode in DIRECT_MODES
        if compute_gradient_forces is None:
            compute_gradient_forces = self.training and mode == DIRECT_WITH_GRADIENT_TARGET
        gradient_wanted = direct and bool(compute_gradient_forces)
        if compute_denoising is None:
            compute_denoising = self.training
        denoising = bool(compute_denoising) and self.has_denoising_head
        denoising_by_gradient = denoising and self.denoising_kind == "gradient"
        needs_pos_grad = from_energy or gradient_wanted or denoising_by_gradient
        outer_grad = torch.is_grad_enabled()
        with torch.enable_grad() if needs_pos_grad else nullcontext():
            pos = batch.pos
            if needs_pos_grad and not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            inputs = self.graph_inputs(batch, pos)
            # a caller whose positions require grad may train on -dE/dpos (double backward)
            inputs.create_graph = outer_grad and (from_energy or denoising_by_gradient or batch.pos.requires_grad)
            inputs.denoising = denoising
            energy, direct_forces, *extra = self.energy(inputs, direct_forces=direct)
            energy = full(energy)  # a float32 energy (and gradient) also under autocast
        extra = extra[0] if extra else {}
        out = {ENERGY: energy}
        if direct:
            out[FORCES] = full(direct_forces)
        if denoising_by_gradient:
            potential = full(extra[DENOISING_POTENTIAL]).sum()
            # kept in the graph in training (the head learns through its gradient)
            out[DENOISING] = energy_gradients(potential.reshape(1), pos, create_graph=outer_grad,
                                              retain_graph=True)[0]
        elif denoising:
            out[DENOISING] = full(extra[DENOISING])
        if from_energy:
            out[FORCES] = conservative_forces(energy, pos, create_graph=outer_grad)
        elif gradient_wanted:
            forces, _ = energy_gradients(energy, pos, create_graph=False, retain_graph=outer_grad)
            out[GRADIENT_FORCES] = forces.detach()
        return out
