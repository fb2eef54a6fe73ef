"""The point cloud a graph's frame is computed from.

* Non-periodic graph: the atom positions relative to their centroid, weight 1 (plain PCA).
* Periodic graph: edge vectors ``pos[j] − pos[i] + offsets @ cell`` (minimum image and all further
  images within ``cutoff``) from centre atoms i to their neighbours j, weighted by a cosine
  envelope ``w(d) = ½(cos(πd/cutoff) + 1)``. Which centres, is the graph's *cloud level*:

  ====  ===================  ==============================================================
  0     ``reference-atoms``  the atoms of the graph's rarest element (ties: the heavier one),
                             e.g. the adsorbate of a slab or the metal of an oxide
  1     ``all-atoms``        every atom of the graph
  2     ``lattice``          every atom, plus the shortest lattice vectors (all vectors of the
                             periodic lattice up to its largest successive minimum, weight 1)
  ====  ===================  ==============================================================

  ``compute_frames`` starts every periodic graph at level 0 and moves a graph up one level
  whenever its cloud does not determine a frame: no extent at all, or all vectors on one line
  (e.g. the O of a CO molecule desorbed far above a slab sees only its C). The level reached is
  reported in ``Frames.cloud_level``.

Every level is a function of the periodic structure itself: it does not change when an atom is
moved to another periodic image, when the cell is replaced by an equivalent one (a unimodular
change of basis) or when atoms are permuted, and it rotates with the structure. The envelope makes
levels 0 and 1 continuous when atoms cross the cutoff. Wrapped positions, by contrast, jump by a
lattice vector when an atom crosses a cell face, which is why PCA of wrapped positions is not image
invariant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from frameavg.data.atomic_data import MAX_Z
from frameavg.data.lattice import periodic_basis, shortest_vectors
from frameavg.errors import DataError


#: Names of the cloud levels of periodic graphs (``FrameCloud.level`` / ``Frames.cloud_level``).
CLOUD_LEVELS = ("reference-atoms", "all-atoms", "lattice")
MAX_CLOUD_LEVEL = len(CLOUD_LEVELS) - 1


@dataclass
class FrameCloud:
    """Weighted vectors (float64) whose second moment defines each graph's frame.

    vectors [M,3] Å, weight [M], graph [M] (owning graph), translation [B,3] (the centroid that
    canonical positions are measured from), periodic [B] bool, level [B] long (cloud level of
    each periodic graph, see the module docstring; 0 for molecules).
    """

    vectors: torch.Tensor
    weight: torch.Tensor
    graph: torch.Tensor
    translation: torch.Tensor
    periodic: torch.Tensor
    level: torch.Tensor


def periodic_graphs(cell: torch.Tensor | None, pbc: torch.Tensor | None, num_graphs: int, device) -> torch.Tensor:
    """[B] bool: graphs with at least one periodic axis and a non-zero cell."""
    if pbc is None or cell is None:
        return torch.zeros(num_graphs, dtype=torch.bool, device=device)
    return pbc.reshape(num_graphs, 3).any(dim=1) & (cell.reshape(num_graphs, 9) != 0).any(dim=1)


def reference_atoms(atomic_numbers: torch.Tensor | None, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """[N] bool: the atoms of each graph's rarest element (ties: the heavier one); all atoms if Z is unknown."""
    if atomic_numbers is None:
        return torch.ones_like(batch, dtype=torch.bool)
    z = atomic_numbers.long()
    key = batch * (MAX_Z + 1) + z
    counts = torch.bincount(key, minlength=num_graphs * (MAX_Z + 1))[key]
    fewest = torch.full((num_graphs,), torch.iinfo(torch.long).max, dtype=torch.long, device=z.device)
    fewest = fewest.scatter_reduce(0, batch, counts, reduce="amin")
    rarest = counts == fewest[batch]
    heaviest = torch.full((num_graphs,), -1, dtype=torch.long, device=z.device)
    heaviest = heaviest.scatter_reduce(0, batch, torch.where(rarest, z, -1), reduce="amax")
    return rarest & (z == heaviest[batch])


def cosine_envelope(distance: torch.Tensor, cutoff: float) -> torch.Tensor:
    """½(cos(πd/cutoff) + 1) for d < cutoff, else 0."""
    inside = distance < cutoff
    value = 0.5 * (torch.cos(math.pi * distance.clamp(max=cutoff) / cutoff) + 1.0)
    return torch.where(inside, value, torch.zeros_like(value))


def frame_cloud(
    pos: torch.Tensor,
    batch: torch.Tensor,
    num_graphs: int,
    *,
    cell: torch.Tensor | None = None,
    pbc: torch.Tensor | None = None,
    atomic_numbers: torch.Tensor | None = None,
    edge_index: torch.Tensor | None = None,
    cell_offsets: torch.Tensor | None = None,
    cutoff: float = 6.0,
    level: torch.Tensor | None = None,
) -> FrameCloud:
    """Build the frame cloud of every graph of a batch (see the module docstring).

    Args:
        pos [N,3], batch [N] (sorted graph index), cell [B,3,3], pbc [B,3], atomic_numbers [N];
        edge_index [2,E] / cell_offsets [E,3]: the batch's neighbour list (row 0 neighbour j,
        row 1 centre i); built here for periodic graphs (vesin, ``cutoff``) when absent.
        cutoff: radius of the periodic cloud and of its envelope, Å.
        level: [B] cloud level of each periodic graph (default: 0 everywhere).
    """
    pos64 = pos.to(torch.float64)
    counts = torch.bincount(batch, minlength=num_graphs)
    translation = torch.zeros(num_graphs, 3, dtype=torch.float64, device=pos.device).index_add(0, batch, pos64)
    translation = translation / counts.clamp(min=1).unsqueeze(-1).to(torch.float64)
    periodic = periodic_graphs(cell, pbc, num_graphs, pos.device)
    centred = pos64 - translation.index_select(0, batch)
    if level is None:
        level = torch.zeros(num_graphs, dtype=torch.long, device=pos.device)
    level = torch.where(periodic, level, torch.zeros_like(level))
    if not bool(periodic.any()):
        ones = torch.ones(pos.shape[0], dtype=torch.float64, device=pos.device)
        return FrameCloud(vectors=centred, weight=ones, graph=batch, translation=translation, periodic=periodic,
                          level=level)
    molecular_atoms = ~periodic[batch]
    vectors = [centred[molecular_atoms]]
    graphs = [batch[molecular_atoms]]
    weights = [torch.ones(len(graphs[0]), dtype=torch.float64, device=pos.device)]

    if cutoff is None or cutoff <= 0:
        raise DataError(f"periodic frames need a positive cutoff, got {cutoff}")
    if edge_index is None or cell_offsets is None:
        edge_index, cell_offsets = _periodic_edges(pos, batch, num_graphs, cell, pbc, periodic, cutoff)
    centres = reference_atoms(atomic_numbers, batch, num_graphs) | (level > 0).index_select(0, batch)
    centres = centres & periodic.index_select(0, batch)
    edge_vec, edge_graph, envelope = _centre_edges(pos64, batch, cell, edge_index, cell_offsets, centres, cutoff)
    inside = torch.nonzero(envelope > 0).flatten()
    vectors.append(edge_vec.index_select(0, inside))
    graphs.append(edge_graph.index_select(0, inside))
    weights.append(envelope.index_select(0, inside))
    lattice_graphs = torch.nonzero(level >= 2).flatten().tolist()
    for g in lattice_graphs:
        shell = lattice_shell(cell[g].to(torch.float64).reshape(3, 3), pbc[g].reshape(3))
        vectors.append(shell)
        graphs.append(torch.full((shell.shape[0],), g, dtype=torch.long, device=pos.device))
        weights.append(torch.ones(shell.shape[0], dtype=torch.float64, device=pos.device))

    return FrameCloud(
        vectors=torch.cat(vectors),
        weight=torch.cat(weights),
        graph=torch.cat(graphs),
        translation=translation,
        periodic=periodic,
        level=level,
    )


def _centre_edges(pos64, batch, cell, edge_index, cell_offsets, centres, cutoff):
    """Edge vectors [M,3] (j − i + images) from the centre atoms i (``centres`` [N] bool), their
    graph [M] and their cosine-envelope weight [M] (0 beyond the cutoff)."""
    chosen = torch.nonzero(centres.index_select(0, edge_index[1])).flatten()
    source, target = edge_index[0].index_select(0, chosen), edge_index[1].index_select(0, chosen)
    offsets = cell_offsets.index_select(0, chosen).to(torch.float64)
    edge_graph = batch.index_select(0, target)
    lattice = cell.to(torch.float64).reshape(-1, 3, 3).index_select(0, edge_graph)  # rows a1, a2, a3
    edge_vec = (pos64.index_select(0, source) - pos64.index_select(0, target) + offsets[:, 0:1] * lattice[:, 0]
                + offsets[:, 1:2] * lattice[:, 1] + offsets[:, 2:3] * lattice[:, 2])
    return edge_vec, edge_graph, cosine_envelope(torch.linalg.vector_norm(edge_vec, dim=-1), cutoff)


def _periodic_edges(pos, batch, num_graphs, cell, pbc, periodic, cutoff):
    """Neighbour lists (vesin) of the periodic graphs only; batch-global atom indices."""
    from frameavg.data.neighbors import neighbor_list

    ptr = torch.zeros(num_graphs + 1, dtype=torch.long, device=pos.device)
    ptr[1:] = torch.cumsum(torch.bincount(batch, minlength=num_graphs), 0)
    edges, offsets = [], []
    for g in torch.nonzero(periodic).flatten().tolist():
        lo, hi = int(ptr[g]), int(ptr[g + 1])
        ei, off = neighbor_list(pos[lo:hi], cell[g], pbc[g], cutoff)
        edges.append(ei + lo)
        offsets.append(off)
    return torch.cat(edges, dim=1), torch.cat(offsets, dim=0)


def lattice_shell(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """The shortest vectors of a periodic lattice, [K,3] Å (differentiable in ``cell``).

    All lattice vectors ``n @ cell`` (integer n along the periodic axes of ``pbc``) whose length is
    at most the lattice's largest successive minimum (``data.lattice.shortest_vectors``). The set
    belongs to the lattice, not to its basis: any equivalent cell gives the same vectors, and it
    spans every periodic direction.
    """
    axes = np.flatnonzero(pbc.detach().cpu().numpy().astype(bool))
    coefficients = shortest_vectors(periodic_basis(cell.detach().cpu().numpy(), pbc.detach().cpu().numpy()))
    full = np.zeros((coefficients.shape[0], 3))
    full[:, axes] = coefficients
    return torch.as_tensor(full, dtype=cell.dtype, device=cell.device) @ cell
