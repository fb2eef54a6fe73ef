"""Periodic neighbour lists (built on ``vesin``) and the ``RadiusGraph`` transform.

Conventions (docs/conventions.md): ``edge_index[0]`` is the neighbour (source j), ``edge_index[1]`` the
centre (target i); both directions are present; the edge vector is
``pos[j] - pos[i] + cell_offsets @ cell``. Periodicity may differ per axis (mixed ``pbc``), and
cells smaller than the cutoff give edges to several images of the same atom (and of the atom
itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform
from vesin import NeighborList

from frameavg.data import lattice
from frameavg.errors import DataError
from frameavg.precision import full_precision

#: Non-strict ``max_neighbors`` keeps neighbours within this distance (Å) of the k-th one (as OCP).
TIE_TOLERANCE = 0.01
#: Default cap of the neighbours per atom a cutoff sphere is expected to hold (density × sphere
#: volume, ``data.lattice.expected_neighbors``), checked before the list is allocated. Dense metals
#: hold ~80 at 6 Å and ~650 at 12 Å; a cell far smaller than the cutoff holds millions.
MAX_EDGES_PER_ATOM = 2000
#: Edges of one structure above which the list is refused whatever the cap per atom (~4 GB).
MAX_EDGES = 100_000_000


def neighbor_list(
    pos: torch.Tensor,
    cell: torch.Tensor | None,
    pbc: torch.Tensor | None,
    cutoff: float,
    max_neighbors: int | None = None,
    strict: bool = True,
    max_edges_per_atom: float | None = MAX_EDGES_PER_ATOM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All pairs closer than ``cutoff`` (Å) in one structure.

    Args:
        pos: [N,3] positions, Å.
        cell: [3,3] (or [1,3,3]) lattice vectors as rows, Å; ignored where ``pbc`` is False.
        pbc: [3] (or [1,3]) bool periodicity per axis; None means not periodic.
        cutoff: radius, Å (pairs with distance < cutoff).
        max_neighbors: keep at most this many nearest neighbours per centre atom.
        strict: if False, also keep neighbours within ``TIE_TOLERANCE`` of the k-th distance, so
            that symmetry-equivalent neighbours are not cut arbitrarily.
        max_edges_per_atom: refuse (``DataError``) before allocating when the cell's density
            says a cutoff sphere holds more neighbours than this (None: no cap; see
            ``MAX_EDGES_PER_ATOM``). ``max_neighbors`` does not help: all pairs are found first.

    Returns:
        edge_index [2,E] long (row 0 neighbour j, row 1 centre i), sorted by centre then distance;
        cell_offsets [E,3] with the dtype of ``pos`` (integer image shifts).
    """
    if cutoff <= 0:
        raise DataError(f"cutoff must be positive, got {cutoff}")
    points = pos.detach().cpu().numpy().astype(np.float64, copy=False)
    periodic = np.zeros(3, dtype=bool) if pbc is None else pbc.detach().cpu().numpy().reshape(3).astype(bool)
    box = np.zeros((3, 3)) if cell is None else cell.detach().cpu().numpy().reshape(3, 3).astype(np.float64)
    if not periodic.any():
        box = np.zeros((3, 3))
    check_edge_budget(len(points), box, periodic, float(cutoff), max_edges_per_atom)
    centre, neighbour, shifts, dist = NeighborList(cutoff=float(cutoff), full_list=True).compute(
        points, box, periodic, quantities="ijSd"
    )
    order = np.lexsort((dist, centre))
    centre, neighbour, shifts, dist = centre[order], neighbour[order], shifts[order], dist[order]
    if max_neighbors is not None:
        keep = _max_neighbors_mask(centre, dist, len(points), max_neighbors, strict)
        centre, neighbour, shifts = centre[keep], neighbour[keep], shifts[keep]
    edge_index = torch.from_numpy(np.stack([neighbour, centre]).astype(np.int64)).to(pos.device)
    cell_offsets = torch.from_numpy(np.ascontiguousarray(shifts)).to(device=pos.device, dtype=pos.dtype)
    return edge_index, cell_offsets


def check_edge_budget(num_atoms: int, cell: np.ndarray, pbc: np.ndarray, cutoff: float,
                      max_edges_per_atom: float | None = MAX_EDGES_PER_ATOM) -> float:
    """Expected neighbours per atom of a structure at ``cutoff``; ``DataError`` above the caps."""
    expected = lattice.expected_neighbors(num_atoms, lattice.periodic_basis(cell, pbc), cutoff)
    if max_edges_per_atom is not None and expected > max_edges_per_atom:
        raise DataError(
            f"cell too small for cutoff {cutoff:g} Å: its density puts ~{expected:.3g} neighbours in a cutoff "
            f"sphere (cap {max_edges_per_atom:g} per atom); check the cell, or raise the cap "
            "(max_edges_per_atom; data.max_edges_per_atom in configs)")
    if expected * num_atoms > MAX_EDGES:
        raise DataError(f"~{expected * num_atoms:.3g} edges at cutoff {cutoff:g} Å exceed {MAX_EDGES:.0e} "
                        "for one structure; use a smaller cutoff or max_neighbors")
    return expected


def _max_neighbors_mask(centre, dist, n_atoms, k, strict) -> np.ndarray:
    """Mask of edges (sorted by centre, then distance) kept by the ``max_neighbors`` rule."""
    if k < 1:
        raise DataError(f"max_neighbors must be >= 1, got {k}")
    counts = np.bincount(centre, minlength=n_atoms)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(centre)) - starts[centre]
    if strict:
        return rank < k
    over = counts > k
    kth = np.full(n_atoms, np.inf)
    kth[over] = dist[starts[over] + k - 1]
    return dist <= kth[centre] + TIE_TOLERANCE


def radius_graph_batch(
    batch, cutoff: float, max_neighbors: int | None = None, strict: bool = True,
    max_edges_per_atom: float | None = MAX_EDGES_PER_ATOM,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbour lists for every graph of a PyG ``Batch`` (or a single ``Data``).

    Returns:
        edge_index [2,E] with batch-global atom indices, cell_offsets [E,3], neighbors [B]
        (edge count per graph).
    """
    ptr = batch.ptr.tolist() if hasattr(batch, "ptr") and batch.ptr is not None else [0, batch.num_nodes]
    cells = getattr(batch, "cell", None)
    pbcs = getattr(batch, "pbc", None)
    edges, offsets, counts = [], [], []
    for g in range(len(ptr) - 1):
        lo, hi = ptr[g], ptr[g + 1]
        ei, off = neighbor_list(
            batch.pos[lo:hi],
            None if cells is None else cells[g],
            None if pbcs is None else pbcs[g],
            cutoff,
            max_neighbors,
            strict,
            max_edges_per_atom,
        )
        edges.append(ei + lo)
        offsets.append(off)
        counts.append(ei.shape[1])
    return (
        torch.cat(edges, dim=1),
        torch.cat(offsets, dim=0),
        torch.tensor(counts, dtype=torch.long, device=batch.pos.device),
    )


@dataclass(frozen=True)
class NeighborSettings:
    """How one run builds every neighbour list: ``cutoff`` (Å), ``max_neighbors`` per atom (None:
    no limit), ``strict`` (exact ``max_neighbors``; False keeps ties within ``TIE_TOLERANCE``, as
    OCP) and the memory guard ``max_edges_per_atom`` (see ``neighbor_list``). Training batches,
    noised batches, ``frameavg test``/``predict`` and the simulations all build their graphs from
    the run's one instance (``training.config_sections.DataConfig.neighbors``)."""

    cutoff: float
    max_neighbors: int | None = None
    strict: bool = True
    max_edges_per_atom: float | None = MAX_EDGES_PER_ATOM

    def __post_init__(self):
        if not self.cutoff > 0:  # NaN too
            raise DataError(f"cutoff must be positive, got {self.cutoff}")

    def transform(self) -> "RadiusGraph":
        """The PyG transform that adds these neighbour lists to a ``Data``."""
        return RadiusGraph(self.cutoff, self.max_neighbors, self.strict, self.max_edges_per_atom)

    def verlet_list(self, skin: float) -> "VerletList":
        """A neighbour list with a ``skin`` (Å) for one structure that moves a little per call."""
        return VerletList(self.cutoff, skin, self.max_neighbors, self.strict, self.max_edges_per_atom)

    def edges_of(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``radius_graph_batch`` of ``batch`` with these settings."""
        return radius_graph_batch(batch, self.cutoff, self.max_neighbors, self.strict, self.max_edges_per_atom)


class RadiusGraph(BaseTransform):
    """PyG transform adding ``edge_index`` [2,E], ``cell_offsets`` [E,3] and ``neighbors`` [1].

    Args:
        cutoff: radius, Å.
        max_neighbors: at most this many nearest neighbours per atom (None: no limit).
        strict: exact ``max_neighbors`` (True) or keep ties within 0.01 Å (False, as OCP).
        max_edges_per_atom: memory guard (see ``neighbor_list``).
    """

    def __init__(self, cutoff: float, max_neighbors: int | None = None, strict: bool = True,
                 max_edges_per_atom: float | None = MAX_EDGES_PER_ATOM):
        self.settings = NeighborSettings(cutoff, max_neighbors, strict, max_edges_per_atom)

    @property
    def cutoff(self) -> float:
        return self.settings.cutoff

    @property
    def max_neighbors(self) -> int | None:
        return self.settings.max_neighbors

    @property
    def strict(self) -> bool:
        return self.settings.strict

    @property
    def max_edges_per_atom(self) -> float | None:
        return self.settings.max_edges_per_atom

    def forward(self, data: Data) -> Data:
        edge_index, cell_offsets, neighbors = self.settings.edges_of(data)
        data.edge_index = edge_index
        data.cell_offsets = cell_offsets
        data.neighbors = neighbors
        return data

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cutoff={self.cutoff}, max_neighbors={self.max_neighbors}, "
            f"strict={self.strict})"
        )


def edge_vectors(pos: torch.Tensor, edge_index: torch.Tensor, cell_offsets: torch.Tensor,
                 cell: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
    """Edge vectors [E,3] = pos[j] - pos[i] + cell_offsets @ cell[graph of i] (differentiable), in
    the dtype of ``pos`` also under autocast (geometry stays in full precision)."""
    source, target = edge_index
    vectors = pos[source] - pos[target]
    if cell_offsets is not None and cell is not None:
        graph = batch[target] if batch is not None else torch.zeros_like(target)
        with full_precision():
            vectors = vectors + torch.einsum("ek,ekl->el", cell_offsets.to(pos.dtype), cell.to(pos.dtype)[graph])
    return vectors


class VerletList:
    """Neighbour list with a skin, for one structure whose atoms move a little between calls
    (molecular dynamics, relaxations, an ASE calculator).

    Candidate pairs are found at ``cutoff + skin`` and rebuilt only when an atom has moved more
    than ``skin / 2`` since the last build, or the cell, periodicity or number of atoms changed. At
    every call the candidates are filtered to ``d < cutoff`` and ``max_neighbors`` (ties within
    0.01 Å kept unless ``strict``) is applied to the current distances, so the edges equal those of
    a fresh ``neighbor_list`` (same order: by centre, then distance).

    Attributes: ``calls``, ``rebuilds``.
    """

    def __init__(self, cutoff: float, skin: float = 0.5, max_neighbors: int | None = None, strict: bool = False,
                 max_edges_per_atom: float | None = MAX_EDGES_PER_ATOM):
        if cutoff <= 0 or skin < 0:
            raise DataError(f"cutoff must be positive and skin non-negative, got {cutoff} and {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.max_neighbors, self.strict = max_neighbors, strict
        self.max_edges_per_atom = max_edges_per_atom
        self.calls = self.rebuilds = 0
        self._reference = None  # (positions, cell, pbc) of the last build
        self._candidates = None  # (neighbour j, centre i, shifts)

    def edges(self, pos: torch.Tensor, cell: torch.Tensor | None, pbc: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """edge_index [2,E] (row 0 neighbour j, row 1 centre i) and cell_offsets [E,3] at ``pos``."""
        self.calls += 1
        points = pos.detach().cpu().numpy().astype(np.float64)
        periodic = np.zeros(3, dtype=bool) if pbc is None else pbc.detach().cpu().numpy().reshape(3).astype(bool)
        box = np.zeros((3, 3)) if cell is None or not periodic.any() else \
            cell.detach().cpu().numpy().reshape(3, 3).astype(np.float64)
        if self._stale(points, box, periodic):
            self._rebuild(pos, points, box, periodic)
        neighbour, centre, shifts = self._candidates
        vectors = points[neighbour] - points[centre] + shifts @ box
        distance = np.sqrt((vectors * vectors).sum(-1))
        inside = np.flatnonzero(distance < self.cutoff)
        order = inside[np.lexsort((distance[inside], centre[inside]))]
        neighbour, centre, shifts, distance = neighbour[order], centre[order], shifts[order], distance[order]
        if self.max_neighbors is not None:
            keep = _max_neighbors_mask(centre, distance, len(points), self.max_neighbors, self.strict)
            neighbour, centre, shifts = neighbour[keep], centre[keep], shifts[keep]
        edge_index = torch.from_numpy(np.stack([neighbour, centre]).astype(np.int64)).to(pos.device)
        offsets = torch.from_numpy(np.ascontiguousarray(shifts)).to(device=pos.device, dtype=pos.dtype)
        return edge_index, offsets

    def _stale(self, points, box, periodic) -> bool:
        if self._reference is None:
            return True
        old_points, old_box, old_periodic = self._reference
        if old_points.shape != points.shape or not np.array_equal(old_periodic, periodic) \
                or not np.array_equal(old_box, box):
            return True
        moved = np.sqrt(((points - old_points) ** 2).sum(-1)).max() if len(points) else 0.0
        return bool(moved > self.skin / 2)

    def _rebuild(self, pos, points, box, periodic) -> None:
        self.rebuilds += 1
        edge_index, offsets = neighbor_list(
            pos, torch.as_tensor(box, dtype=pos.dtype), torch.as_tensor(periodic), self.cutoff + self.skin,
            max_edges_per_atom=self.max_edges_per_atom)
        self._candidates = (edge_index[0].cpu().numpy(), edge_index[1].cpu().numpy(),
                            offsets.cpu().numpy().astype(np.float64))
        self._reference = (points.copy(), box.copy(), periodic.copy())
