"""``FrameAveraging``: make any ``forward(batch) -> dict`` model E(3)-invariant/equivariant.

All frames of all graphs run through the model as ONE enlarged batch: every graph is repeated
once per frame with canonical positions and cell; the neighbour list is reused (a rotation does
not change it) with shifted atom indices, and every other field is gathered, never deep-copied.
Outputs are mapped back: per-graph and per-atom invariants are averaged over each graph's frames,
vector outputs (forces) are rotated back with ``v @ U.T`` before averaging, rank-2 tensor outputs
(stress) with ``U T U.T``.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from torch_geometric.data import Batch

from frameavg.data.pyg_compat import batch_increments, batch_slices, set_num_graphs
from frameavg.derivatives import energy_gradients
from frameavg.errors import ConfigError, renamed_keyword
from frameavg.frames.compute import DEFAULT_MAX_FRAMES, DEFAULT_TOL, Frames, compute_frames
from frameavg.frames.lattice_frames import PERIODIC_FRAMES
from frameavg.frames.methods import FrameMethod
from frameavg.outputs import (
    DIRECT,
    DIRECT_FORCES,
    DIRECT_WITH_GRADIENT_TARGET,
    ENERGY,
    FORCES,
    FROM_ENERGY,
    GRADIENT_FORCES,
    OUTPUT_KINDS,
    TENSOR_OUTPUTS,
    VECTOR_OUTPUTS,
    Level,
    OutputKind,
    Rank,
    force_mode,
)
from frameavg.precision import full, full_precision

#: Force modes of the wrapper (``frameavg.outputs.FORCE_MODES``).
FORCE_MODES = (DIRECT, FROM_ENERGY, DIRECT_WITH_GRADIENT_TARGET, None)
DEFAULT_VECTOR_KEYS = VECTOR_OUTPUTS
DEFAULT_TENSOR_KEYS = TENSOR_OUTPUTS
_HANDLED = {"pos", "batch", "ptr", "cell", "edge_index"}


class FrameAveraging(nn.Module):
    """Wrap ``model`` so that its outputs are averaged over frames.

    Args:
        model: any module whose ``forward(batch)`` returns a dict of tensors (energy [B],
            forces [N,3], ...). It sees a PyG ``Batch`` with canonical ``pos``/``cell`` and every
            other field of the input.
        dims: ``3D`` or ``2D`` (PCA in x,y about z: slabs); ``frames=`` is its deprecated name.
        method: ``all`` | ``stochastic`` | ``det`` | ``DA`` or ``se3-`` variants (see FrameMethod),
            used in training mode.
        eval_method: method used in eval mode (default: ``method``); e.g. train ``stochastic``,
            evaluate ``all``.
        forces: a mode of ``frameavg.outputs.FORCE_MODES``: ``direct`` (the model's own
            ``forces`` output, rotated back), ``from_energy`` (−∂E/∂pos of the frame-averaged
            energy w.r.t. the ORIGINAL positions, by autograd through frames and model; a
            ``forces`` output of the model moves to ``direct_forces``),
            ``direct_with_gradient_target`` (model forces in ``forces``, the gradient in
            ``gradient_forces``) or None (outputs as the model gives them, averaged). The
            spellings ``model``/``gradient``/``both`` of earlier releases still work (deprecated).
        energy_key: the invariant output differentiated by ``forces="from_energy"``.
        vector_keys / tensor_keys: outputs without a declared kind (``frameavg.outputs.OUTPUT_KINDS``)
            rotated back as vectors [...,3] / rank-2 tensors [...,3,3].
        cutoff: radius of the frame cloud of periodic graphs, Å (see frames.cloud).
        tol: relative tolerance of degeneracy decisions (see frames.compute).
        max_frames: cap on a graph's frame set.
        seed: seed of the generator used by ``stochastic`` and ``DA``; its state is part of
            ``state_dict()``, so a resumed run continues the same random stream.
        canonicalizer: options of the ``LearnedCanonicalizer`` (``channels``, ``num_layers``,
            ``num_rbf``; its cutoff is ``cutoff``) built when ``method`` or ``eval_method`` is
            ``learned``/``se3-learned``. It is a submodule (``self.canonicalizer``): trained with
            the model, saved in ``state_dict()``.
        periodic: frames of periodic graphs: ``cloud`` (PCA of the image-invariant frame cloud),
            ``lattice`` (one frame from the reduced cell: constant at fixed cell, so MD and
            relaxations see a continuous average) or ``lattice-symmetric`` (the lattice's own
            frame set: also invariant to how the cell is written); see ``frames.lattice_frames``.
        continuous: weighted frames whose average is a continuous function of the positions (and
            cell), exact invariance kept (``frames.smooth``); ``det`` keeps plain frame sets.

    ``forward(batch, return_frames=True)`` also returns the ``Frames`` used (degeneracy flags,
    frame counts); ``frames_of(batch)`` computes them without running the model.
    """

    def __init__(
        self,
        model: nn.Module,
        dims: str = "3D",
        method: str = "all",
        eval_method: str | None = None,
        *,
        forces: str | None = DIRECT,
        energy_key: str = ENERGY,
        vector_keys: tuple[str, ...] = DEFAULT_VECTOR_KEYS,
        tensor_keys: tuple[str, ...] = DEFAULT_TENSOR_KEYS,
        cutoff: float = 6.0,
        tol: float = DEFAULT_TOL,
        max_frames: int = DEFAULT_MAX_FRAMES,
        seed: int = 0,
        canonicalizer: dict | None = None,
        periodic: str = "cloud",
        continuous: bool = False,
        frames: str | None = None,
    ):
        super().__init__()
        dims = renamed_keyword(frames, "frames", "dims", dims)  # "frames" now names frames only
        forces = force_mode(forces, "forces", FORCE_MODES, legacy=True)
        self.model = model
        self.train_spec = FrameMethod.parse(method, dims)
        self.eval_spec = FrameMethod.parse(eval_method or method, dims)
        self.forces = forces
        self.energy_key = energy_key
        self.vector_keys = tuple(dict.fromkeys((*vector_keys, GRADIENT_FORCES, DIRECT_FORCES)))
        self.tensor_keys = tuple(tensor_keys)
        self.cutoff = cutoff
        self.tol = tol
        self.max_frames = max_frames
        self.seed = seed
        if periodic not in PERIODIC_FRAMES:
            raise ConfigError(f"unknown periodic frames '{periodic}' (choose from {', '.join(PERIODIC_FRAMES)})")
        self.periodic = periodic
        self.continuous = continuous
        self.generator = torch.Generator().manual_seed(seed)
        self.canonicalizer = None
        if "learned" in (self.train_spec.kind, self.eval_spec.kind):
            from frameavg.frames.learned import LearnedCanonicalizer

            options = dict(canonicalizer or {})
            try:
                self.canonicalizer = LearnedCanonicalizer(cutoff=cutoff, **options)
            except (TypeError, ValueError) as error:
                raise ConfigError(f"frames.canonicalizer: {error}") from None
        self.register_load_state_dict_pre_hook(_keep_generator_without_saved_state)

    @property
    def spec(self) -> FrameMethod:
        """The frame method of the current mode (train or eval)."""
        return self.train_spec if self.training else self.eval_spec

    def with_eval_method(self, method: str) -> "FrameAveraging":
        """A wrapper around the same model (shared weights) that evaluates with ``method`` (e.g.
        ``all`` for exact averages, ``stochastic`` for one frame), other settings unchanged."""
        other = copy.copy(self)
        other.eval_spec = FrameMethod.parse(method, self.eval_spec.dim)
        if other.eval_spec.kind == "learned" and self.canonicalizer is None:
            raise ConfigError("eval method 'learned' needs a canonicaliser trained with the model; this "
                              "model was built without one (train with frames.train: learned)")
        other.generator = torch.Generator().manual_seed(self.seed)
        return other

    def reset_generator(self, seed: int | None = None) -> None:
        """Restart the stochastic/DA random stream (reproducible evaluations)."""
        self.generator.manual_seed(self.seed if seed is None else seed)

    def get_extra_state(self) -> dict:
        """The random stream of ``stochastic``/``DA`` frames (saved with the weights)."""
        return {"generator_state": self.generator.get_state()}

    def set_extra_state(self, state: dict) -> None:
        self.generator.set_state(state["generator_state"])

    def frames_of(self, batch) -> Frames:
        """The frames the current mode computes for ``batch`` (without running the model); random
        methods draw from a fresh generator seeded with ``seed``, leaving the stream untouched."""
        graph_of_atom, num_graphs = _graph_vector(batch)
        with full_precision():
            return self._frames(batch, batch.pos.detach(), graph_of_atom, num_graphs,
                                torch.Generator().manual_seed(self.seed))

    def _frames(self, batch, pos, graph_of_atom, num_graphs, generator) -> Frames:
        if self.spec.kind == "learned":
            from frameavg.frames.learned import learned_frames

            return learned_frames(self.canonicalizer, batch, pos, graph_of_atom, num_graphs, self.spec,
                                  cutoff=self.cutoff, tol=self.tol, max_frames=self.max_frames)
        return compute_frames(
            pos,
            graph_of_atom,
            num_graphs,
            method=self.spec,
            cell=getattr(batch, "cell", None),
            pbc=getattr(batch, "pbc", None),
            atomic_numbers=getattr(batch, "atomic_numbers", None),
            edge_index=getattr(batch, "edge_index", None),
            cell_offsets=getattr(batch, "cell_offsets", None),
            cutoff=self.cutoff,
            tol=self.tol,
            max_frames=self.max_frames,
            generator=generator,
            periodic=self.periodic,
            continuous=self.continuous,
        )

    def forward(self, batch, *, return_frames: bool = False):
        """Frame-averaged outputs (a dict), and with ``return_frames`` the ``Frames`` used:
        ``(outputs, frames)``. ``batch`` is never modified."""
        gradient = self.forces in (FROM_ENERGY, DIRECT_WITH_GRADIENT_TARGET)
        with torch.enable_grad() if gradient else contextlib.nullcontext():
            pos = batch.pos
            if gradient and not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            graph_of_atom, num_graphs = _graph_vector(batch)
            with full_precision():  # frames and canonical copies: never in bf16/fp16 (see frameavg.precision)
                frames = self._frames(batch, pos, graph_of_atom, num_graphs, self.generator)
                expanded, edges = expand_batch(batch, frames, graph_of_atom)
            raw = self.model(expanded)
            if not isinstance(raw, dict):
                raise ConfigError(f"FrameAveraging needs a model returning a dict, got {type(raw).__name__}")
            with full_precision():
                out = average_outputs(
                    {key: full(value) if isinstance(value, torch.Tensor) else value for key, value in raw.items()},
                    frames, num_atoms=pos.shape[0], edges=edges,
                    vector_keys=self.vector_keys, tensor_keys=self.tensor_keys, energy_key=self.energy_key,
                )
            if gradient:
                if self.energy_key not in out:
                    raise ConfigError(f"forces={self.forces!r} needs the model output '{self.energy_key}'")
                forces, _ = energy_gradients(out[self.energy_key], pos, create_graph=self.training)
                if self.forces == FROM_ENERGY:
                    if FORCES in out:
                        out[DIRECT_FORCES] = out.pop(FORCES)
                    out[FORCES] = forces
                else:
                    out[GRADIENT_FORCES] = forces
        return (out, frames) if return_frames else out


def _keep_generator_without_saved_state(module, state_dict, prefix, *args) -> None:
    """Weights saved before the random stream was part of ``state_dict`` load with the stream as
    it is (seeded)."""
    state_dict.setdefault(prefix + "_extra_state", module.get_extra_state())


def _graph_vector(batch) -> tuple[torch.Tensor, int]:
    vector = getattr(batch, "batch", None)
    if vector is None:
        return torch.zeros(batch.pos.shape[0], dtype=torch.long, device=batch.pos.device), 1
    return vector, int(batch.num_graphs)


def expand_batch(
    batch, frames: Frames, graph_of_atom: torch.Tensor | None = None
) -> tuple[Batch, tuple[torch.Tensor, torch.Tensor, int] | None]:
    """One enlarged ``Batch`` holding every frame copy of every graph (see module docstring).

    Returns the batch and, when the input has edges, ``(edge_ids, edge_frame, num_edges)``: the
    original edge and the expanded graph of every expanded edge, and the input's edge count.
    """
    if graph_of_atom is None:
        graph_of_atom, _ = _graph_vector(batch)
    num_graphs = frames.num_graphs
    num_atoms = batch.pos.shape[0]
    counts = torch.bincount(graph_of_atom, minlength=num_graphs)
    out = Batch()
    out.pos = frames.pos
    out.batch = frames.batch
    out.ptr = frames.ptr
    set_num_graphs(out, frames.graph.shape[0])
    if frames.cell is not None:
        out.cell = frames.cell

    edges = edge_ids = None
    edge_index = getattr(batch, "edge_index", None)
    num_edges = None
    if edge_index is not None:
        num_edges = edge_index.shape[1]
        edge_graph = graph_of_atom[edge_index[1]]
        if num_edges and bool((edge_graph[1:] < edge_graph[:-1]).any()):
            raise ConfigError("edge_index must be grouped by graph (as PyG batches are)")
        edge_counts = torch.bincount(edge_graph, minlength=num_graphs)
        edge_ids, edge_frame = _expanded_ids(edge_counts, frames.graph)
        atom_ptr = torch.cumsum(counts, 0) - counts
        shift = (frames.ptr[:-1] - atom_ptr[frames.graph])[edge_frame]
        out.edge_index = edge_index[:, edge_ids] + shift.unsqueeze(0)
        edges = (edge_ids, edge_frame, num_edges)
    else:
        edge_counts = None

    slices = batch_slices(batch)
    increments = batch_increments(batch)
    for key, value in batch.items():
        if key in _HANDLED:
            continue
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            out[key] = value
            continue
        level = _field_level(key, value, slices.get(key), counts, edge_counts, num_atoms, num_edges, num_graphs)
        if level == "node":
            owner, expanded = frames.batch, value[frames.node_index]
        elif level == "edge":
            owner, expanded = edges[1], value[edge_ids]
        else:
            owner, expanded = torch.arange(frames.graph.shape[0], device=value.device), value[frames.graph]
        inc = increments.get(key)
        if isinstance(inc, torch.Tensor) and bool((inc != 0).any()):
            # PyG offset this field by the atoms of preceding graphs (keys named *index*/face):
            # re-offset every copy by the atoms preceding it in the enlarged batch.
            atom_ptr = torch.cumsum(counts, 0) - counts
            if not torch.equal(inc.to(counts.device), atom_ptr):
                raise ConfigError(f"field '{key}' has batch increments FrameAveraging cannot replicate")
            shift = (frames.ptr[:-1] - atom_ptr[frames.graph])[owner]
            expanded = expanded + shift.reshape(-1, *([1] * (expanded.dim() - 1))).to(expanded.dtype)
        out[key] = expanded
    return out, edges


def _expanded_ids(counts: torch.Tensor, frame_graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Original id and expanded graph of every element of every frame copy (elements grouped by graph)."""
    start = torch.cumsum(counts, 0) - counts
    sizes = counts[frame_graph]
    total = int(sizes.sum())
    new_start = torch.cumsum(sizes, 0) - sizes
    owner = torch.repeat_interleave(torch.arange(frame_graph.shape[0], device=counts.device), sizes, output_size=total)
    return torch.arange(total, device=counts.device) + (start[frame_graph] - new_start)[owner], owner


def _field_level(key, value, slices, counts, edge_counts, num_atoms, num_edges, num_graphs) -> str:
    if slices is not None:
        diffs = slices.diff().to(counts.device)
        if torch.equal(diffs, counts):
            return "node"
        if edge_counts is not None and torch.equal(diffs, edge_counts):
            return "edge"
        if value.shape[0] == num_graphs:
            return "graph"
        raise ConfigError(f"cannot tell whether field '{key}' is per atom, per edge or per graph")
    size = value.shape[0]
    if size == num_atoms:
        return "node"
    if num_edges is not None and size == num_edges:
        return "edge"
    if size == num_graphs:
        return "graph"
    raise ConfigError(f"field '{key}' has leading size {size}: not atoms ({num_atoms}), edges or graphs ({num_graphs})")


def average_outputs(
    outputs: dict,
    frames: Frames,
    *,
    num_atoms: int,
    edges: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    vector_keys=DEFAULT_VECTOR_KEYS,
    tensor_keys=DEFAULT_TENSOR_KEYS,
    energy_key: str = "energy",
) -> dict:
    """Map model outputs on the enlarged batch back to the input batch (weighted frame average).

    A named output's level (graph, atom, edge) and rank come from ``frameavg.outputs.OUTPUT_KINDS``
    (``energy_key`` is a graph scalar); an output without a declared kind is per atom, per graph
    or per edge by its leading size, and a vector or tensor when listed in ``vector_keys`` or
    ``tensor_keys`` (else a scalar). ``ConfigError`` when a size disagrees with its level."""
    rows = {Level.ATOM: frames.node_index.shape[0], Level.GRAPH: frames.graph.shape[0],
            Level.EDGE: None if edges is None else edges[0].shape[0]}
    result = {}
    for key, value in outputs.items():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            result[key] = value
            continue
        level, rank = _output_kind(key, value, rows, vector_keys, tensor_keys, energy_key)
        if level is Level.ATOM:
            rotation, weight, target, length = frames.rotation[frames.batch], frames.weight[frames.batch], frames.node_index, num_atoms
        elif level is Level.GRAPH:
            rotation, weight, target, length = frames.rotation, frames.weight, frames.graph, frames.num_graphs
        else:
            edge_ids, edge_frame, length = edges
            rotation, weight, target = frames.rotation[edge_frame], frames.weight[edge_frame], edge_ids
        if rank is Rank.VECTOR:
            if value.shape[-1] != 3:
                raise ConfigError(f"vector output '{key}' must end with dimension 3, got {tuple(value.shape)}")
            value = torch.einsum("n...j,nij->n...i", value, rotation.to(value.dtype))
        elif rank is Rank.TENSOR:
            if tuple(value.shape[-2:]) != (3, 3):
                raise ConfigError(f"tensor output '{key}' must end with 3x3, got {tuple(value.shape)}")
            r = rotation.to(value.dtype)
            value = torch.einsum("nij,n...jk,nlk->n...il", r, value, r)
        w = weight.to(value.dtype).reshape(-1, *([1] * (value.dim() - 1)))
        result[key] = torch.zeros(length, *value.shape[1:], dtype=value.dtype, device=value.device).index_add(
            0, target, w * value
        )
    return result


def _output_kind(key: str, value: torch.Tensor, rows: dict, vector_keys, tensor_keys, energy_key) -> tuple[Level, Rank]:
    """(level, rank) of output ``key`` on the enlarged batch (``rows``: rows per level)."""
    size = value.shape[0]
    kind = OutputKind(Level.GRAPH, Rank.SCALAR, "") if key == energy_key else OUTPUT_KINDS.get(key)
    if kind is not None:
        if rows[kind.level] != size:
            raise ConfigError(f"model output '{key}' is per {kind.level.value} but has leading size {size}, "
                              f"not {rows[kind.level]}")
        return kind.level, kind.rank
    level = next((level for level in (Level.ATOM, Level.GRAPH, Level.EDGE) if rows[level] == size), None)
    if level is None:
        raise ConfigError(
            f"model output '{key}' has leading size {size}: not atoms ({rows[Level.ATOM]}), "
            f"graphs ({rows[Level.GRAPH]}) or edges of the enlarged batch"
        )
    rank = Rank.VECTOR if key in vector_keys else Rank.TENSOR if key in tensor_keys else Rank.SCALAR
    return level, rank

