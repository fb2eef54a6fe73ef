"""Batched PCA frames for a whole batch of graphs, with exact handling of degenerate spectra.

Conventions: a frame is an orthogonal matrix U [3,3] whose columns are the canonical axes. A
graph's canonical positions are ``(pos − t) @ U`` (t: centroid), its canonical cell is
``cell @ U`` (rows rotated by the same matrix, so ``offsets @ cell`` edge vectors stay
consistent) and a vector output ``v`` predicted in the frame maps back as ``v @ U.T``.

Frame sets (per graph, computed from the graph's frame cloud, see ``frames.cloud``), with
C = Σ w v vᵀ and eigenvalues λ1 >= λ2 >= λ3 (relative gaps compared with ``tol``·λ1):

* ``none`` (distinct spectrum): U = [±u1, ±u2, ±u3] — 8 frames, 4 with det=+1. In 2D mode the
  PCA is of (x,y) only and U = [±u1, ±u2, e_z]: 4 frames, 2 with det=+1. Planar structures
  (λ3 = 0) are in this class: their eigenvectors are well defined.
* ``pair`` (λ1≈λ2 or λ2≈λ3; in 2D λ1≈λ2): the plane of the degenerate pair and the distinct axis
  a are well defined, directions inside the plane are not. Inside the plane we use complex
  harmonic moments m_p = Σ w (x + iy)^p of the cloud and take the smallest p with
  |m_p| > tol·Σ w|x + iy|^p; its phase fixes p in-plane directions e1 = angle arg(m_p)/p + 2πj/p,
  which rotate with the structure, whatever in-plane basis (x, y) was used. Frames:
  [e1, ±a×e1, ±a] (ordered as the eigenvalues): 4p frames (2p with det=+1). Benzene gets p=6.
  If no p <= 12 qualifies, the in-plane directions of the innermost shell of the cloud are used.
* ``linear`` (λ2≈λ3≈0, e.g. CO2; in 2D no in-plane extent): the cloud lies on (or, within
  ``tol``, near) one axis a. When its extent across the axis is above the rounding level of the
  input dtype (``LINEAR_NOISE`` × machine epsilon, relative), the directions across the axis are
  taken from harmonic moments as for ``pair`` (a nearly linear molecule is still exact). Otherwise
  the cloud is exactly linear and rotations about a do not change canonical positions: frames
  [±a, ±b, ±a×b] for an arbitrary b ⟂ a (8 / 4), and averaging over the signs of b cancels the
  components of vector outputs that the arbitrary b would otherwise leave. A *periodic* graph whose
  cloud is exactly linear (or has no extent) is not exactly linear itself: its cloud is widened
  (``frames.cloud``: reference atoms -> all atoms -> all atoms + lattice) until it determines a
  frame; ``Frames.cloud_level`` tells how far each graph went.
* ``triple`` (λ1≈λ2≈λ3, e.g. methane, cubic crystals): the covariance carries no direction. We use
  the shell of cloud vectors (equal length within tol) that yields the fewest frames among the
  4 innermost shells, and from every ordered pair (a, b) of shell vectors at the smallest angle
  (within tol) the frame [â, b⊥, â×b⊥] (and its mirror image). For a structure with exact
  symmetry this set is finite and maps onto itself under the symmetry, so averaging is exact
  (methane: 24 frames = |Td|; fcc Cu: 48).
* ``point`` (no extent: one atom): the identity basis with its sign flips. Periodic graphs never
  end here (the lattice level always has extent).

``tol`` is the single relative margin used for every "equal within tolerance" decision (eigen
gaps, moments, shell radii, angles, third-moment signs). Frame sets are exact (invariant up to
float error) whenever the structure is at least ``tol`` away from a decision boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from frameavg.errors import ConfigError, DataError
from frameavg.frames.cloud import CLOUD_LEVELS, MAX_CLOUD_LEVEL, FrameCloud, frame_cloud, periodic_graphs
from frameavg.frames.lattice_frames import (
    PERIODIC_FRAMES,
    lattice_bases,
    lattice_basis_frames,
    lattice_shell_cloud,
)
from frameavg.frames.linalg import random_orthogonal, random_z_rotations
from frameavg.frames.methods import FrameMethod
from frameavg.frames.sets import (  # noqa: F401  (DEGENERACY ... re-exported: frames.compute is their old home)
    DEFAULT_MAX_FRAMES,
    DEFAULT_TOL,
    DEGENERACY,
    LINEAR,
    LINEAR_NOISE,
    NONE,
    PAIR,
    POINT,
    TRIPLE,
    ZERO_EXTENT,
    FrameSetInfo,
    frame_sets,
    shell_frames,
)
from frameavg.frames.smooth import DEFAULT_BLEND_WIDTH, smooth_frame_sets

@dataclass
class Frames:
    """Frames of a batch of B graphs, expanded into G' = Σ_b F_b frame copies of the graphs.

    Expanded graphs are ordered by original graph, then frame; the atoms of each expanded graph
    are the atoms of its original graph in their original order.

    Attributes:
        pos [N',3]: canonical positions (dtype of the input positions), Å.
        cell [G',3,3] or None: canonical cells (rows rotated by the frame).
        rotation [G',3,3]: the frame U of each expanded graph (canonical = (x − t) @ U; vectors
            map back with ``v @ U.T``).
        graph [G']: original graph of each expanded graph.
        frame_index [G']: index of the frame within its graph's frame set.
        weight [G']: averaging weight (1/F_b; sums to 1 over a graph's frames).
        batch [N']: expanded graph of each expanded atom; ptr [G'+1].
        node_index [N']: original atom of each expanded atom.
        num_frames [B]: frames per graph (after stochastic selection).
        set_size [B]: size of each graph's full frame set.
        translation [B,3]: the centroid t.
        eigenvalues [B,3] (3D) or [B,2] (2D): spectrum of the frame cloud's second moment, Å².
        degeneracy [B]: index into ``DEGENERACY``.
        cloud_level [B]: periodic graphs: the frame cloud used, index into
            ``frames.cloud.CLOUD_LEVELS`` (0 reference atoms, 1 all atoms, 2 all atoms + lattice);
            0 for molecules.
        harmonic_order [B]: p used inside a degenerate plane (0 if none).
        truncated [B] bool: frame set cut at ``max_frames`` (averaging is then approximate).
        method: the FrameMethod used.
        cloud_level, periodic: see ``frames.cloud`` (None for ``DA``).
        lattice [B] bool or None: graphs whose frames come from their lattice
            (``frames.lattice_frames``) rather than a frame cloud.
        fallback [B] bool or None: ``learned`` frames only: graphs whose learned vectors were
            degenerate and that use the PCA frame set instead (``frames.learned``).
    """

    pos: torch.Tensor
    cell: torch.Tensor | None
    rotation: torch.Tensor
    graph: torch.Tensor
    frame_index: torch.Tensor
    weight: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor
    node_index: torch.Tensor
    num_frames: torch.Tensor
    set_size: torch.Tensor
    translation: torch.Tensor
    eigenvalues: torch.Tensor | None
    degeneracy: torch.Tensor
    harmonic_order: torch.Tensor
    truncated: torch.Tensor
    method: FrameMethod
    cloud_level: torch.Tensor | None = None
    periodic: torch.Tensor | None = None
    fallback: torch.Tensor | None = None
    lattice: torch.Tensor | None = None

    @property
    def num_graphs(self) -> int:
        return int(self.num_frames.shape[0])

    def degeneracy_names(self) -> list[str]:
        return [DEGENERACY[i] for i in self.degeneracy.tolist()]

    def path_names(self) -> list[str]:
        """Per graph, the path its frames took: the degeneracy class, and for periodic graphs the
        cloud level after a slash, e.g. ``pair/all-atoms``."""
        names = self.degeneracy_names()
        if self.periodic is None or self.cloud_level is None:
            return names
        lattice = self.lattice.tolist() if self.lattice is not None else [False] * len(names)
        return [("lattice" if from_lattice else f"{name}/{CLOUD_LEVELS[level]}") if periodic else name
                for name, periodic, level, from_lattice in zip(names, self.periodic.tolist(),
                                                                self.cloud_level.tolist(), lattice)]


def compute_frames(
    pos: torch.Tensor,
    batch: torch.Tensor | None = None,
    num_graphs: int | None = None,
    *,
    method: str | FrameMethod = "all",
    dim: str = "3D",
    cell: torch.Tensor | None = None,
    pbc: torch.Tensor | None = None,
    atomic_numbers: torch.Tensor | None = None,
    edge_index: torch.Tensor | None = None,
    cell_offsets: torch.Tensor | None = None,
    cutoff: float = 6.0,
    tol: float = DEFAULT_TOL,
    max_frames: int = DEFAULT_MAX_FRAMES,
    generator: torch.Generator | None = None,
    periodic: str = "cloud",
    continuous: bool = False,
    blend_width: float = DEFAULT_BLEND_WIDTH,
) -> Frames:
    """Frames and canonical copies of every graph of a batch (no Python loop over graphs except
    for the rare triple-degenerate ones).

    Args:
        pos [N,3] Å; batch [N] sorted graph index (None: one graph); num_graphs B.
        method: ``all``, ``stochastic``, ``det``, ``DA`` or their ``se3-`` variants (FrameMethod).
        dim: ``3D`` or ``2D`` (PCA in x,y, z kept).
        cell [B,3,3], pbc [B,3]: periodic graphs use the image-invariant cloud of ``frames.cloud``.
        atomic_numbers [N]: picks the reference atoms of periodic clouds (all atoms if None).
        edge_index [2,E], cell_offsets [E,3]: neighbour list reused for periodic clouds.
        cutoff: radius of periodic clouds, Å. tol: relative tolerance of all degeneracy decisions.
        max_frames: cap on a graph's frame set. generator: source of randomness (stochastic, DA).
        periodic: frames of periodic graphs: ``cloud`` (PCA of the frame cloud, ``frames.cloud``),
            ``lattice`` (one frame from the reduced cell, constant at fixed cell) or
            ``lattice-symmetric`` (the lattice's own frame set); see ``frames.lattice_frames``.
        continuous: weighted frames whose average is continuous in the positions
            (``frames.smooth``; not for ``det``); ``blend_width``: width of their blending zones.

    Differentiable with respect to ``pos`` (and ``cell``): forces of frame-averaged energies can be
    taken by autograd through the frames.
    """
    spec = FrameMethod.parse(method, dim) if isinstance(method, str) else method
    if batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    counts = validate_graphs(pos, batch, num_graphs, cell, pbc)
    if spec.kind == "learned":
        raise ConfigError("learned frames come from a trained canonicaliser: use FrameAveraging(model, "
                          "method='learned'), which holds one")

    if spec.kind == "DA":
        translation = torch.zeros(num_graphs, 3, dtype=torch.float64, device=pos.device).index_add(
            0, batch, pos.to(torch.float64)
        ) / counts.unsqueeze(-1).to(torch.float64)
        sampler = random_z_rotations if spec.dim == "2D" else random_orthogonal
        rotation = sampler(num_graphs, proper=spec.proper, generator=generator, device=pos.device)
        graph = torch.arange(num_graphs, device=pos.device)
        zeros = torch.zeros(num_graphs, dtype=torch.long, device=pos.device)
        info = FrameSetInfo(None, zeros, zeros, torch.zeros(num_graphs, dtype=torch.bool, device=pos.device))
        set_size = torch.ones(num_graphs, dtype=torch.long, device=pos.device)
    else:
        smooth = (blend_width if continuous and spec.kind != "det" else None)
        rotation, graph, weight, info, translation = _frame_sets_of_batch(
            pos, batch, num_graphs, spec, cell=cell, pbc=pbc, atomic_numbers=atomic_numbers, edge_index=edge_index,
            cell_offsets=cell_offsets, cutoff=cutoff, tol=tol, max_frames=max_frames, periodic=periodic, smooth=smooth)
        _check_extent(info.extent, counts, info.periodic)
        set_size = torch.bincount(graph, minlength=num_graphs)
        if weight is not None and spec.kind in ("stochastic", "sample"):
            rotation, graph, weight = _pick_weighted(rotation, graph, weight, set_size,
                                                     1 if spec.kind == "stochastic" else spec.samples, generator)
        elif spec.kind == "stochastic":
            rotation, graph = _pick_one(rotation, graph, set_size, generator)
        elif spec.kind == "sample":
            rotation, graph = _pick_k(rotation, graph, set_size, spec.samples, generator)
        return expand_frames(pos, batch, counts, translation, rotation, graph, cell, spec, set_size, info, weight)

    return expand_frames(pos, batch, counts, translation, rotation, graph, cell, spec, set_size, info)


def frames_for_batch(batch, method: str | FrameMethod = "all", dim: str = "3D", **kwargs) -> Frames:
    """``compute_frames`` reading pos, batch, cell, pbc, atomic_numbers and the neighbour list
    (edge_index, cell_offsets) from a PyG ``Batch``/``Data``."""
    num_graphs = int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1
    vector = getattr(batch, "batch", None)
    return compute_frames(
        batch.pos,
        vector,
        num_graphs,
        method=method,
        dim=dim,
        cell=getattr(batch, "cell", None),
        pbc=getattr(batch, "pbc", None),
        atomic_numbers=getattr(batch, "atomic_numbers", None),
        edge_index=getattr(batch, "edge_index", None),
        cell_offsets=getattr(batch, "cell_offsets", None),
        **kwargs,
    )


def _frame_sets_of_batch(pos, batch, num_graphs, spec, *, cell, pbc, atomic_numbers, edge_index, cell_offsets,
                         cutoff, tol, max_frames, periodic, smooth):
    """Full frame sets of a batch: rotations [K,3,3] and their graph [K] (sorted), their weights
    [K] (None: equal weights), the ``FrameSetInfo`` and the centroids [B,3]. ``smooth``: blend
    width of continuous weighted frames for the cloud (None: plain frame sets). Periodic graphs take their frames from the lattice
    (``periodic`` = ``lattice`` / ``lattice-symmetric``, where the lattice gives one) or from the
    frame cloud; every other graph from the cloud."""
    if periodic not in PERIODIC_FRAMES:
        raise ConfigError(f"unknown periodic frames '{periodic}' (choose from {', '.join(PERIODIC_FRAMES)})")
    usable = None
    if periodic != "cloud" and cell is not None and pbc is not None:
        rows, rank, usable = lattice_bases(cell, pbc, num_graphs, spec.dim, tol)
        if not bool(usable.any()):
            usable = None
    if usable is None:
        return _cloud_frame_sets(pos, batch, num_graphs, spec, cell, pbc, atomic_numbers, edge_index, cell_offsets,
                                 cutoff, tol, max_frames, smooth)
    device = pos.device
    counts = torch.bincount(batch, minlength=num_graphs)
    translation = torch.zeros(num_graphs, 3, dtype=torch.float64, device=device).index_add(0, batch, pos.to(torch.float64))
    translation = translation / counts.unsqueeze(-1).to(torch.float64)
    zeros = torch.zeros(num_graphs, dtype=torch.long, device=device)
    dims = 3 if spec.dim == "3D" else 2
    info = FrameSetInfo(torch.zeros(num_graphs, dims, dtype=torch.float64, device=device), zeros.clone(), zeros.clone(),
                        torch.zeros(num_graphs, dtype=torch.bool, device=device),
                        extent=torch.ones(num_graphs, dtype=torch.float64, device=device),
                        cloud_level=zeros.clone(), periodic=periodic_graphs(cell, pbc, num_graphs, device))
    info.lattice = usable.clone()
    if periodic == "lattice":
        rotations, owners = lattice_basis_frames(rows, rank, usable, dim=spec.dim, proper=spec.proper)
    else:
        vectors, owner = lattice_shell_cloud(rows, rank, usable)
        cloud = FrameCloud(vectors=vectors, weight=torch.ones(vectors.shape[0], dtype=torch.float64, device=device),
                           graph=owner, translation=translation, periodic=info.periodic, level=zeros)
        rotations, owners, shell_info = frame_sets(cloud, num_graphs, spec, tol=tol, max_frames=max_frames)
        keep = usable.index_select(0, owners)
        rotations, owners = rotations[keep], owners[keep]
        for name in ("eigenvalues", "degeneracy", "harmonic_order", "truncated"):
            getattr(info, name)[usable] = getattr(shell_info, name)[usable]
    rotations, owners = [rotations], [owners]
    weights = [(1.0 / torch.bincount(owners[0], minlength=num_graphs).clamp(min=1).to(torch.float64))[owners[0]]]
    rest = torch.nonzero(~usable).flatten()
    if rest.numel():
        sub = _sub_batch(rest, pos, batch, num_graphs, cell, pbc, atomic_numbers, edge_index, cell_offsets)
        rot, own, sub_weight, sub_info, _ = _cloud_frame_sets(*sub[:3], spec, *sub[3:], cutoff, tol, max_frames, smooth)
        rotations.append(rot)
        owners.append(rest.index_select(0, own))
        weights.append(sub_weight if sub_weight is not None else (1.0 / torch.bincount(own).to(torch.float64))[own])
        for name in ("eigenvalues", "degeneracy", "harmonic_order", "truncated", "extent", "cloud_level"):
            getattr(info, name)[rest] = getattr(sub_info, name).to(getattr(info, name).dtype)
    rotation, owner, weight = torch.cat(rotations), torch.cat(owners), torch.cat(weights)
    order = torch.argsort(owner, stable=True)
    weight = weight.index_select(0, order) if smooth is not None else None
    return rotation.index_select(0, order), owner.index_select(0, order), weight, info, translation


def _sub_batch(graphs, pos, batch, num_graphs, cell, pbc, atomic_numbers, edge_index, cell_offsets):
    """The batch restricted to ``graphs`` [G] (sorted): positional arguments of ``_cloud_frame_sets``
    up to ``cell_offsets``, atoms and edges renumbered."""
    keep_graph = torch.zeros(num_graphs, dtype=torch.bool, device=pos.device)
    keep_graph[graphs] = True
    new_graph = torch.cumsum(keep_graph.long(), 0) - 1
    atoms = torch.nonzero(keep_graph.index_select(0, batch)).flatten()
    new_atom = torch.full((pos.shape[0],), -1, dtype=torch.long, device=pos.device)
    new_atom[atoms] = torch.arange(atoms.shape[0], device=pos.device)
    sub_edges = sub_offsets = None
    if edge_index is not None and cell_offsets is not None:
        kept = torch.nonzero(keep_graph.index_select(0, batch.index_select(0, edge_index[1]))).flatten()
        sub_edges = new_atom[edge_index[:, kept]]
        sub_offsets = cell_offsets.index_select(0, kept)
    return (pos.index_select(0, atoms), new_graph.index_select(0, batch.index_select(0, atoms)), graphs.shape[0],
            cell.reshape(num_graphs, 3, 3).index_select(0, graphs), pbc.reshape(num_graphs, 3).index_select(0, graphs),
            None if atomic_numbers is None else atomic_numbers.index_select(0, atoms), sub_edges, sub_offsets)


def _cloud_frame_sets(pos, batch, num_graphs, spec, cell, pbc, atomic_numbers, edge_index, cell_offsets, cutoff,
                      tol, max_frames, smooth):
    """Frame sets from the frame cloud (``frames.cloud``), widening the cloud of periodic graphs
    that it does not determine; same returns as ``_frame_sets_of_batch``."""
    noise = LINEAR_NOISE * torch.finfo(pos.dtype).eps
    level = None
    while True:
        cloud = frame_cloud(
            pos, batch, num_graphs, cell=cell, pbc=pbc, atomic_numbers=atomic_numbers,
            edge_index=edge_index, cell_offsets=cell_offsets, cutoff=cutoff, level=level,
        )
        if smooth is None:
            rotation, graph, info = frame_sets(cloud, num_graphs, spec, tol=tol, max_frames=max_frames, noise=noise)
            weight = None
        else:
            rotation, graph, weight, info = smooth_frame_sets(cloud, num_graphs, spec, tol=tol, width=smooth,
                                                              max_frames=max_frames, noise=noise)
        widen = info.unresolved & cloud.periodic & (cloud.level < MAX_CLOUD_LEVEL)
        if not info.any_unresolved or not bool(widen.any()):
            break
        level = cloud.level + widen.long()
    info.cloud_level, info.periodic = cloud.level, cloud.periodic
    info.lattice = torch.zeros(num_graphs, dtype=torch.bool, device=pos.device)
    return rotation, graph, weight, info, cloud.translation


# --------------------------------------------------------------------------------------------
# validation


def validate_graphs(pos, batch, num_graphs, cell, pbc) -> torch.Tensor:
    """Atoms per graph [B]; ``DataError`` for malformed positions, batch vectors or cells."""
    if pos.dim() != 2 or pos.shape[-1] != 3:
        raise DataError(f"positions must have shape [N,3], got {tuple(pos.shape)}")
    if not pos.is_floating_point():
        raise DataError(f"positions must be floating point, got {pos.dtype}")
    if batch.shape[0] != pos.shape[0]:
        raise DataError(f"batch vector has {batch.shape[0]} entries for {pos.shape[0]} atoms")
    counts = torch.bincount(batch, minlength=num_graphs)
    # one synchronisation for the common case; details only when something is wrong
    checks = [(batch[1:] < batch[:-1]).any(), (counts == 0).any(), ~torch.isfinite(pos.sum())]
    if cell is not None and pbc is not None:
        checks.append(~torch.isfinite(cell.sum()))
    unsorted, empty, bad_pos, *bad_cell = torch.stack(checks).tolist()
    if unsorted:
        raise DataError("batch vector must be sorted (atoms of each graph contiguous), as PyG batches are")
    if empty or counts.shape[0] != num_graphs:
        empty_graphs = torch.nonzero(counts[:num_graphs] == 0).flatten().tolist()
        raise DataError(f"graph(s) {empty_graphs} have no atoms (or batch indices exceed num_graphs={num_graphs})")
    if bad_pos:
        finite = torch.isfinite(pos).all(dim=1)
        bad = torch.unique(batch[~finite]).tolist()
        atom = int(torch.nonzero(~finite)[0])
        raise DataError(f"non-finite position (NaN or inf) at atom {atom}, in graph(s) {bad}; frames are undefined")
    if bad_cell and bad_cell[0]:
        bad = torch.nonzero(~torch.isfinite(cell.reshape(num_graphs, 9)).all(dim=1)).flatten().tolist()
        raise DataError(f"non-finite cell in graph(s) {bad}")
    return counts


def _check_extent(extent: torch.Tensor, counts: torch.Tensor, periodic: torch.Tensor) -> None:
    """Several atoms of a non-periodic graph all at one point have no frame: a clear error."""
    collapsed = (extent <= ZERO_EXTENT) & (counts > 1) & ~periodic
    if bool(collapsed.any()):
        bad = torch.nonzero(collapsed).flatten().tolist()
        raise DataError(
            f"graph(s) {bad}: all atoms are at the same position (zero extent); frames are undefined"
        )


# --------------------------------------------------------------------------------------------
# selection and expansion


def _pick_one(rotation, graph, set_size, generator):
    """One frame per graph, uniformly from its set (seeded generator)."""
    num_graphs = set_size.shape[0]
    start = torch.cumsum(set_size, 0) - set_size
    u = torch.rand(num_graphs, generator=generator, dtype=torch.float64).to(set_size.device)
    choice = start + torch.minimum((u * set_size).long(), set_size - 1)
    return rotation[choice], graph[choice]


def _pick_weighted(rotation, graph, weight, set_size, k, generator):
    """``k`` distinct frames per graph drawn with probabilities ∝ ``weight`` (Efraimidis–Spirakis
    keys u^(1/w); all of a smaller set), their weights renormalised to sum to 1 per graph."""
    u = torch.rand(graph.shape[0], generator=generator, dtype=torch.float64).to(graph.device)
    key = torch.log(u.clamp(min=1e-300)) / weight.detach().clamp(min=1e-300)  # larger is better
    order = torch.argsort(-key, stable=True)
    order = order[torch.argsort(graph.index_select(0, order), stable=True)]  # by graph, then by key
    start = torch.cumsum(set_size, 0) - set_size
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=graph.device) - start.index_select(0, graph[order])
    keep = rank < k
    rotation, graph, weight = rotation[keep], graph[keep], weight[keep]
    total = torch.zeros(set_size.shape[0], dtype=weight.dtype, device=weight.device).index_add(0, graph, weight)
    return rotation, graph, weight / total.index_select(0, graph)


def _pick_k(rotation, graph, set_size, k, generator):
    """``k`` distinct frames per graph, uniformly from its set (all of a smaller set); ``graph``
    is sorted, so a random key per frame ranks the frames of each graph independently."""
    key = torch.rand(graph.shape[0], generator=generator, dtype=torch.float64).to(graph.device)
    order = torch.argsort(graph.to(torch.float64) * 2.0 + key)  # by graph, then by key
    start = torch.cumsum(set_size, 0) - set_size
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.shape[0], device=graph.device) - start.index_select(0, graph[order])
    keep = rank < k
    return rotation[keep], graph[keep]


def expand_frames(pos, batch, counts, translation, rotation, graph, cell, spec, set_size, info, weight=None) -> Frames:
    """``Frames`` from the chosen rotations [K,3,3] of graphs ``graph`` [K] (sorted) and their
    averaging weights [K] (None: equal): canonical copies ``(pos − translation) @ U`` and the
    bookkeeping of the expanded batch."""
    device = pos.device
    num_frames = torch.bincount(graph, minlength=counts.shape[0])
    frame_index = torch.arange(graph.shape[0], device=device) - (torch.cumsum(num_frames, 0) - num_frames).index_select(0, graph)
    if weight is None:
        weight = (1.0 / num_frames.to(torch.float64)).index_select(0, graph)

    sizes = counts.index_select(0, graph)
    new_ptr = torch.zeros(graph.shape[0] + 1, dtype=torch.long, device=device)
    new_ptr[1:] = torch.cumsum(sizes, 0)
    total = int(new_ptr[-1])
    expanded_batch = torch.repeat_interleave(torch.arange(graph.shape[0], device=device), sizes, output_size=total)
    shift = (torch.cumsum(counts, 0) - counts).index_select(0, graph) - new_ptr[:-1]
    node_index = torch.repeat_interleave(shift, sizes, output_size=total).add_(torch.arange(total, device=device))

    centred = (pos.to(torch.float64) - translation.index_select(0, batch)).index_select(0, node_index)
    frame_of_atom = rotation.index_select(0, expanded_batch)  # rows of U: canonical = Σ_j c_j U[j]
    # accumulated in place: one [N',3] buffer instead of five (fresh large buffers cost page faults)
    canonical = centred[:, 0:1] * frame_of_atom[:, 0]
    canonical = canonical.addcmul_(centred[:, 1:2], frame_of_atom[:, 1]).addcmul_(centred[:, 2:3], frame_of_atom[:, 2])
    canonical_cell = None
    if cell is not None:
        canonical_cell = torch.bmm(cell.to(torch.float64).reshape(-1, 3, 3).index_select(0, graph), rotation).to(cell.dtype)
    return Frames(
        pos=canonical.to(pos.dtype),
        cell=canonical_cell,
        rotation=rotation.to(pos.dtype),
        graph=graph,
        frame_index=frame_index,
        weight=weight.to(pos.dtype),
        batch=expanded_batch,
        ptr=new_ptr,
        node_index=node_index,
        num_frames=num_frames,
        set_size=set_size,
        translation=translation,
        eigenvalues=info.eigenvalues,
        degeneracy=info.degeneracy,
        harmonic_order=info.harmonic_order,
        truncated=info.truncated,
        method=spec,
        cloud_level=info.cloud_level,
        periodic=info.periodic,
        lattice=info.lattice,
    )
