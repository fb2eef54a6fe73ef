"""Learned canonicalisation (Kaba et al., 2023): a small equivariant network picks each graph's frame.

One forward pass of the wrapped model per graph instead of the 8 (or more) of frame averaging,
and the frame is trained with the task.

* :class:`LearnedCanonicalizer` is an O(3)-equivariant message-passing network on the graph's edge
  vectors (PaiNN-style scalar and vector channels). It returns three vectors per graph, [B, 3, 3]
  (rows), each a sum over atoms of equivariant per-atom vectors, and an invariant scale [B]
  that degeneracy is judged against: the bound on the vectors' norms that the triangle inequality
  gives through the layers, i.e. their size if nothing cancelled.
* :func:`gram_schmidt_frames` turns the vectors into an orthogonal frame U (columns = canonical
  axes, as everywhere in ``frameavg.frames``):

  - 3D, O(3) (``learned``): e1 = v1/|v1|, e2 and e3 by Gram–Schmidt of v2 and v3. All three are
    polar vectors, so a reflection of the input reflects the frame: U may be improper
    (det −1), and canonical positions ``(x − t) @ U`` are invariant under rotations AND
    reflections. This is the O(3) handedness rule: the handedness of (v1, v2, v3).
  - 3D, SO(3) (``se3-learned``): e3 = e1 × e2 (det U = +1): invariant under rotations only.
  - 2D (slabs; rotations about z): the vectors' x, y parts; e1, e2 in the plane (e2 by
    Gram–Schmidt for O(2), e2 = z × e1 for SO(2)), and e3 = z.

* **Degenerate vectors.** Any equivariant vector of a structure with a symmetry axis or centre
  is constrained by it (methane's, a single atom's or a 2-atom molecule's perpendicular vectors are
  exactly zero), so no canonicaliser can give such a graph a frame. A graph is *degenerate*
  when |v1| < tol·scale, or the part of v2 (v3) orthogonal to the previous axes is below tol·scale
  (a cancellation by symmetry leaves rounding noise of order eps·scale, far below).
  Degenerate graphs fall back to the exact PCA frame set (method ``all``: frame averaging for that
  graph alone, so outputs stay exactly invariant); ``Frames.fallback`` [B] flags them.

The translation is each graph's centroid. Translations and periodic image shifts do not change
edge vectors, so the frame (and a model that reads edge vectors) is invariant to them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from frameavg.data.neighbors import edge_vectors, radius_graph_batch
from frameavg.frames.cloud import cosine_envelope
from frameavg.frames.methods import FrameMethod

#: Largest atomic number the canonicaliser embeds.
MAX_Z = 118
#: Relative size (|v| / scale) below which learned vectors are degenerate, per dtype of the
#: positions: rounding leaves about eps·scale, and a vector of relative size r gives the frame an
#: error of about eps/r.
DEGENERATE_TOL = {torch.float64: 1e-5, torch.float32: 1e-4}


class _ScaledSiLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.silu(x) * (1.0 / 0.6)


def _mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), _ScaledSiLU(), nn.Linear(n_hidden, n_out))


class LearnedCanonicalizer(nn.Module):
    """Equivariant vectors [B, 3, 3] (three per graph, as rows) and their invariant scale [B].

    Args:
        channels: width C of the scalar [N, C] and vector [N, 3, C] atom features.
        num_layers: message-passing layers.
        num_rbf: Gaussians over [0, cutoff] expanding edge lengths.
        cutoff: Å; edges longer than this are ignored (a cosine envelope makes the vectors
            continuous as atoms cross it).
    """

    def __init__(self, channels: int = 16, num_layers: int = 2, num_rbf: int = 16, cutoff: float = 6.0):
        super().__init__()
        if channels < 1 or num_layers < 1 or num_rbf < 2 or not cutoff > 0:
            raise ValueError(f"canonicaliser needs channels >= 1, num_layers >= 1, num_rbf >= 2 and cutoff > 0, "
                             f"got {channels}, {num_layers}, {num_rbf}, {cutoff}")
        self.channels = channels
        self.cutoff = float(cutoff)
        self.embedding = nn.Embedding(MAX_Z + 1, channels)
        self.register_buffer("centres", torch.linspace(0.0, cutoff, num_rbf), persistent=False)
        self.width = cutoff / (num_rbf - 1)
        # per layer: edge filter -> (scalar message, vector-from-edge, vector-from-neighbour) gates
        self.filters = nn.ModuleList(nn.Linear(num_rbf, 3 * channels) for _ in range(num_layers))
        self.messages = nn.ModuleList(_mlp(channels, channels, 3 * channels) for _ in range(num_layers))
        # the scalars after the last layer would feed nothing: no update there
        self.updates = nn.ModuleList(_mlp(2 * channels, channels, channels) for _ in range(num_layers - 1))
        self.output = nn.Linear(channels, 3, bias=False)

    def forward(self, pos: Tensor, batch: Tensor, num_graphs: int, atomic_numbers: Tensor, edge_index: Tensor,
                cell_offsets: Tensor | None = None, cell: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """pos [N, 3] Å, batch [N], atomic_numbers [N], edge_index [2, E] (row 0 neighbour j,
        row 1 centre i), cell_offsets [E, 3], cell [B, 3, 3] -> (vectors [B, 3, 3], scale [B])."""
        dtype = self.output.weight.dtype
        num_atoms = pos.shape[0]
        vectors = edge_vectors(pos.to(dtype), edge_index, cell_offsets,
                               None if cell is None else cell.to(dtype), batch)
        length = torch.linalg.vector_norm(vectors, dim=-1)
        keep = (length < self.cutoff) & (length > 0)
        if not bool(keep.all()):
            edge_index, vectors, length = edge_index[:, keep], vectors[keep], length[keep]
        source, target = edge_index[0], edge_index[1]
        unit = vectors / length.unsqueeze(-1)
        radial = torch.exp(-0.5 * ((length.unsqueeze(-1) - self.centres.to(dtype)) / self.width) ** 2)
        radial = radial * cosine_envelope(length, self.cutoff).unsqueeze(-1)

        s = self.embedding(atomic_numbers.long().clamp(0, MAX_Z))
        v = s.new_zeros(num_atoms, 3, self.channels)
        # bound [N, C] of |v| by the triangle inequality: what |v| would be without cancellation
        bound = s.new_zeros(num_atoms, self.channels)
        c = self.channels
        for layer, (filt, message) in enumerate(zip(self.filters, self.messages)):
            gates = filt(radial) * message(s).index_select(0, source)  # [E, 3C]
            g_scalar, g_edge, g_vector = gates[:, :c], gates[:, c:2 * c], gates[:, 2 * c:]
            s = s + s.new_zeros(num_atoms, c).index_add(0, target, g_scalar)
            dv = unit.unsqueeze(-1) * g_edge.unsqueeze(1) + v.index_select(0, source) * g_vector.unsqueeze(1)
            v = v + v.new_zeros(num_atoms, 3, c).index_add(0, target, dv)
            with torch.no_grad():
                db = g_edge.abs() + bound.index_select(0, source) * g_vector.abs()
                bound = bound + bound.new_zeros(num_atoms, c).index_add(0, target, db)
            if layer < len(self.updates):
                s = s + self.updates[layer](torch.cat([s, torch.linalg.vector_norm(v, dim=1)], dim=-1))
        atom_vectors = self.output(v)  # [N, 3, 3]: three equivariant vectors per atom (no bias)
        graph_vectors = v.new_zeros(num_graphs, 3, 3).index_add(0, batch, atom_vectors).transpose(1, 2)
        with torch.no_grad():
            atom_bound = (bound @ self.output.weight.abs().t()).sum(-1)  # [N]
            scale = v.new_zeros(num_graphs).index_add(0, batch, atom_bound)
        return graph_vectors, scale


def _normalised(v: Tensor) -> tuple[Tensor, Tensor]:
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v / norm.clamp(min=torch.finfo(v.dtype).tiny), norm.squeeze(-1)


def gram_schmidt_frames(vectors: Tensor, scale: Tensor, *, proper: bool, dim: str, tol: float
                        ) -> tuple[Tensor, Tensor]:
    """Frames U [B, 3, 3] (columns e1, e2, e3) from vectors [B, 3, 3] (rows v1, v2, v3), and
    degenerate [B] bool (see the module docstring for the rules)."""
    threshold = tol * scale
    if dim == "2D":
        plane = vectors[:, :2, :2]
        e1, n1 = _normalised(plane[:, 0])
        if proper:
            e2, n2 = torch.stack([-e1[:, 1], e1[:, 0]], dim=-1), n1
        else:
            e2, n2 = _normalised(plane[:, 1] - (plane[:, 1] * e1).sum(-1, keepdim=True) * e1)
        degenerate = (n1 <= threshold) | (n2 <= threshold)
        zero = vectors.new_zeros(vectors.shape[0], 1)
        columns = [torch.cat([e1, zero], -1), torch.cat([e2, zero], -1),
                   torch.cat([zero, zero, zero + 1], -1)]
        return torch.stack(columns, dim=-1), degenerate
    e1, n1 = _normalised(vectors[:, 0])
    v2 = vectors[:, 1]
    e2, n2 = _normalised(v2 - (v2 * e1).sum(-1, keepdim=True) * e1)
    if proper:
        e3, n3 = torch.linalg.cross(e1, e2), n2
    else:
        v3 = vectors[:, 2]
        e3, n3 = _normalised(v3 - (v3 * e1).sum(-1, keepdim=True) * e1 - (v3 * e2).sum(-1, keepdim=True) * e2)
    degenerate = (n1 <= threshold) | (n2 <= threshold) | (n3 <= threshold)
    return torch.stack([e1, e2, e3], dim=-1), degenerate


def learned_frames(canonicalizer: LearnedCanonicalizer, batch, pos: Tensor, graph_of_atom: Tensor, num_graphs: int,
                   spec: FrameMethod, *, cutoff: float, tol: float, max_frames: int):
    """``Frames`` of a batch from the canonicaliser: one learned frame per graph, the exact PCA
    frame set for degenerate graphs (``Frames.fallback``). Differentiable in ``pos`` and in the
    canonicaliser's parameters. Degeneracy of the learned vectors is judged with ``DEGENERATE_TOL``
    (per dtype); ``tol``, ``cutoff`` and ``max_frames`` are those of the PCA fallback."""
    from frameavg.frames.compute import NONE, FrameSetInfo, compute_frames, expand_frames, validate_graphs

    cell, pbc = getattr(batch, "cell", None), getattr(batch, "pbc", None)
    counts = validate_graphs(pos, graph_of_atom, num_graphs, cell, pbc)
    edge_index = getattr(batch, "edge_index", None)
    cell_offsets = getattr(batch, "cell_offsets", None)
    if edge_index is None:
        edge_index, cell_offsets, _ = radius_graph_batch(batch, cutoff)
    vectors, scale = canonicalizer(pos, graph_of_atom, num_graphs, batch.atomic_numbers, edge_index,
                                   cell_offsets, cell)
    rotation, degenerate = gram_schmidt_frames(vectors.to(torch.float64), scale.to(torch.float64).detach(),
                                               proper=spec.proper, dim=spec.dim,
                                               tol=DEGENERATE_TOL.get(vectors.dtype, DEGENERATE_TOL[torch.float32]))
    device = pos.device
    graph = torch.arange(num_graphs, device=device)
    translation = torch.zeros(num_graphs, 3, dtype=torch.float64, device=device).index_add(
        0, graph_of_atom, pos.to(torch.float64)) / counts.clamp(min=1).unsqueeze(-1).to(torch.float64)
    zeros = torch.zeros(num_graphs, dtype=torch.long, device=device)
    info = FrameSetInfo(None, zeros + NONE, zeros, torch.zeros(num_graphs, dtype=torch.bool, device=device))
    set_size = torch.ones(num_graphs, dtype=torch.long, device=device)
    if bool(degenerate.any()):
        pca = compute_frames(pos, graph_of_atom, num_graphs, method=FrameMethod("all", spec.proper, spec.dim),
                             cell=cell, pbc=pbc, atomic_numbers=batch.atomic_numbers, edge_index=edge_index,
                             cell_offsets=cell_offsets, cutoff=cutoff, tol=tol, max_frames=max_frames)
        keep = degenerate.index_select(0, pca.graph)
        rotation = torch.cat([rotation[~degenerate], pca.rotation[keep].to(torch.float64)])
        graph = torch.cat([graph[~degenerate], pca.graph[keep]])
        order = torch.sort(graph, stable=True).indices
        rotation, graph = rotation[order], graph[order]
        translation = torch.where(degenerate.unsqueeze(-1), pca.translation, translation)
        info = FrameSetInfo(None, torch.where(degenerate, pca.degeneracy, info.degeneracy),
                        torch.where(degenerate, pca.harmonic_order, zeros),
                        degenerate & pca.truncated, cloud_level=pca.cloud_level, periodic=pca.periodic)
        set_size = torch.where(degenerate, pca.set_size, set_size)
    frames = expand_frames(pos, graph_of_atom, counts, translation, rotation, graph, cell, spec, set_size, info)
    frames.fallback = degenerate
    return frames


def fallback_rate(frames) -> float:
    """Fraction of the graphs of ``frames`` that fell back to PCA frames (0 for PCA methods)."""
    fallback = getattr(frames, "fallback", None)
    return 0.0 if fallback is None or fallback.numel() == 0 else float(fallback.float().mean())


__all__ = ["LearnedCanonicalizer", "fallback_rate", "gram_schmidt_frames", "learned_frames"]
