"""A message-passing network on raw Cartesian coordinates: NOT rotation invariant by design.

It is the kind of unconstrained model frame averaging is for (and what FAENet is, with more
parts): its inputs are the x, y, z components of edge vectors and, for non-periodic graphs, of the
atom positions themselves, so rotating, reflecting or (for molecules) translating the input
changes its outputs. Wrapped in ``frameavg.frames.FrameAveraging`` it becomes exactly invariant
(energies) and equivariant (forces). Used by the symmetry tests, ``frameavg symmetry --model
raw-mpnn`` and as a quick baseline.

Periodic graphs never see absolute positions, only edge vectors ``pos[j] − pos[i] + offsets @
cell``, so the model is invariant to moving an atom to another periodic image on its own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from frameavg.data.neighbors import edge_vectors
from frameavg.errors import DataError
from frameavg.frames.cloud import cosine_envelope, periodic_graphs
from frameavg.models.blocks import scatter_sum
from frameavg.outputs import ENERGY, FORCES
from frameavg.precision import full


class RawCoordinateMPNN(nn.Module):
    """Energy (and direct forces) from raw coordinates.

    Args:
        hidden: width of atom states.
        num_layers: message-passing layers.
        cutoff: radius of the smooth envelope on messages, Å (edges must come from a neighbour
            list with at least this cutoff, e.g. ``RadiusGraph(cutoff)``).
        max_z: largest atomic number embedded.
        direct_forces: also output ``forces`` [N,3] from a linear head on atom states (not
            conservative, not equivariant without frames).

    Input batch fields: ``atomic_numbers`` [N], ``pos`` [N,3] Å, ``batch`` [N], ``edge_index``
    [2,E], and for periodic graphs ``cell`` [B,3,3], ``pbc`` [B,3], ``cell_offsets`` [E,3].
    Returns ``{"energy": [B] eV, "forces": [N,3] eV/Å}`` (forces only with ``direct_forces``).
    """

    def __init__(self, hidden: int = 64, num_layers: int = 3, cutoff: float = 6.0, max_z: int = 118,
                 direct_forces: bool = True):
        super().__init__()
        self.cutoff = cutoff
        self.embedding = nn.Embedding(max_z + 1, hidden)
        self.position_input = nn.Linear(3, hidden, bias=False)
        self.messages = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * hidden + 4, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(num_layers)
        )
        self.updates = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(num_layers)
        )
        self.energy_head = nn.Sequential(nn.Linear(hidden, hidden // 2), nn.SiLU(), nn.Linear(hidden // 2, 1))
        self.force_head = nn.Linear(hidden, 3) if direct_forces else None

    def forward(self, batch) -> dict:
        if getattr(batch, "edge_index", None) is None:
            raise DataError("RawCoordinateMPNN needs a neighbour list (edge_index); add RadiusGraph(cutoff) to the data")
        pos = batch.pos
        graph = getattr(batch, "batch", None)
        if graph is None:
            graph = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        num_graphs = int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1
        cell = getattr(batch, "cell", None)
        periodic = periodic_graphs(cell, getattr(batch, "pbc", None), num_graphs, pos.device)

        h = self.embedding(batch.atomic_numbers)
        h = h + self.position_input(pos * (~periodic[graph]).to(pos.dtype).unsqueeze(-1))
        source, target = batch.edge_index
        vec = edge_vectors(pos, batch.edge_index, getattr(batch, "cell_offsets", None), cell, graph)
        dist = torch.linalg.vector_norm(vec, dim=-1, keepdim=True)
        envelope = cosine_envelope(dist, self.cutoff)
        edge_features = torch.cat([vec, dist], dim=-1) / math.sqrt(self.cutoff)
        for message, update in zip(self.messages, self.updates):
            m = message(torch.cat([h[source], h[target], edge_features], dim=-1)) * envelope
            h = h + update(scatter_sum(m, target, h.shape[0]))
        atom_energy = self.energy_head(h).squeeze(-1)
        out = {ENERGY: scatter_sum(atom_energy, graph, num_graphs)}
        if self.force_head is not None:
            out[FORCES] = full(self.force_head(h))
        return out
