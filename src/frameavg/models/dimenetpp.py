"""DimeNet++ (Gasteiger et al., 2020) on our periodic edges: PyTorch Geometric's blocks with
triplets enumerated in pure PyTorch.

The network, ``self.pyg``, holds PyTorch Geometric's DimeNet++ blocks under PyG's names (its
``state_dict`` is that of ``torch_geometric.nn.models.DimeNetPlusPlus``): radial Bessel basis,
embedding, interaction and output blocks run unchanged. The spherical basis computes PyG's
functions (same Bessel zeros and normalisers, same spherical harmonics) with recurrences in torch
instead of sympy expressions, whose symbolic simplification takes ~15 s per model built.

What PyG's ``forward`` does with ``radius_graph`` and ``torch_sparse`` (molecules only) is replaced
here: edges come from the batch, edge vectors include ``cell_offsets @ cell``, and :func:`triplets`
enumerates the k -> j -> i edge pairs by sorting edges by target, which also handles periodic
images (the same atom may be a neighbour through several images; only the true backtrack, k the
same atom *and* the same image as i, is dropped, as in OCP). Angles are taken from the periodic edge
vectors and stay differentiable (OCP detached them), so forces are the exact ``-dE/dpos``.
Energy = sum over atoms of the output blocks (PyG and OCP); the output layers start at zero
(``output_initializer="zeros"``, PyG's and OCP's default), so an untrained model predicts 0 eV.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import Embedding

from frameavg.data.pyg_compat import (
    BesselBasisLayer,
    EmbeddingBlock,
    Envelope,
    InteractionPPBlock,
    Jn,
    Jn_zeros,
    OutputPPBlock,
    activation_resolver,
)
from frameavg.models.base import EnergyModel, GraphInputs
from frameavg.models.blocks import GraphIndex

#: PyG's DimeNet embeds Z = 0..94.
PYG_MAX_Z = 94

#: OCP's OC20 IS2RE-all DimeNet++ (ocp configs/is2re/all/dimenet_plus_plus/dpp.yml with the model's
#: defaults int_emb_size 64, basis_emb_size 8, envelope_exponent 5 and OCP's neighbour cap of 50,
#: energy only): ``DimeNetPlusPlus(**PAPER_CONFIG)``.
PAPER_CONFIG: dict = dict(hidden_channels=256, out_emb_channels=192, num_interactions=3, int_emb_size=64,
                          basis_emb_size=8, num_spherical=7, num_radial=6, cutoff=6.0, envelope_exponent=5,
                          num_before_skip=1, num_after_skip=2, num_output_layers=3, max_neighbors=50,
                          regress_forces=None)

#: The equal-width comparison of issue 6: width 128, 4 blocks, cutoff 6 Å; the other sizes are the
#: DimeNet++ paper's (QM9) at this width: out_emb 256, int_emb 64, basis_emb 8, 7 spherical, 6 radial.
EQUAL_WIDTH_CONFIG: dict = dict(hidden_channels=128, out_emb_channels=256, num_interactions=4, int_emb_size=64,
                                basis_emb_size=8, num_spherical=7, num_radial=6, cutoff=6.0)


def triplets(edge_index: Tensor, cell_offsets: Tensor | None, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Edge pairs (k -> j, j -> i) of every triplet k -> j -> i, without backtracking.

    Args:
        edge_index: [2, E]; row 0 source j, row 1 target i.
        cell_offsets: [E, 3] image shifts of the edges, or None for molecules.
        num_nodes: N.

    Returns:
        ``idx_kj`` [T] and ``idx_ji`` [T], edge indices. A pair is dropped when k is i in the same
        image (``source[kj] == target[ji]`` and ``offsets[kj] + offsets[ji] == 0``); for molecules
        when k is i.
    """
    source, target = edge_index
    num_edges = source.numel()
    by_target = torch.argsort(target, stable=True)
    incoming = torch.bincount(target, minlength=num_nodes)
    first_incoming = torch.cumsum(incoming, 0) - incoming
    per_edge = incoming[source]  # edges k -> j feeding each edge j -> i
    total = int(per_edge.sum())
    edges = torch.arange(num_edges, device=source.device)
    idx_ji = torch.repeat_interleave(edges, per_edge, output_size=total)
    start = torch.cumsum(per_edge, 0) - per_edge
    rank = torch.arange(total, device=source.device) - start[idx_ji]
    idx_kj = by_target[first_incoming[source[idx_ji]] + rank]
    backtrack = source[idx_kj] == target[idx_ji]
    if cell_offsets is not None:  # k is atom i: a backtrack only in the same image
        same_atom = backtrack.nonzero().squeeze(1)
        backtrack[same_atom] = (cell_offsets[idx_kj[same_atom]] + cell_offsets[idx_ji[same_atom]] == 0).all(dim=-1)
    keep = ~backtrack
    return idx_kj[keep], idx_ji[keep]


class SphericalBasis(nn.Module):
    """PyG's ``SphericalBasisLayer`` without sympy: for orders l < ``num_spherical`` and roots
    n < ``num_radial``, ``norm_ln * j_l(z_ln * d / cutoff) * envelope(d / cutoff) * Y_l0(angle)``
    with PyG's (float32-rounded) zeros z_ln of j_l and normalisers; j_l by upward recurrence in
    float64, Y_l0 = sqrt((2l + 1) / 4 pi) P_l(cos angle) by Legendre's recurrence.
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float = 5.0, envelope_exponent: int = 5):
        super().__init__()
        self.num_spherical, self.num_radial, self.cutoff = num_spherical, num_radial, cutoff
        self.envelope = Envelope(envelope_exponent)
        zeros = Jn_zeros(num_spherical, num_radial)  # [L, K] float32, as PyG's sympy expressions use
        norms = np.array([[1.0 / np.sqrt(0.5 * Jn(zeros[l, n], l + 1) ** 2) for n in range(num_radial)]
                          for l in range(num_spherical)])
        prefactors = np.sqrt((2 * np.arange(num_spherical) + 1) / (4 * np.pi))
        # not in the state dict: PyG's layer has none
        self.register_buffer("zeros", torch.tensor(zeros.astype(np.float64)), persistent=False)
        self.register_buffer("norms", torch.tensor(norms), persistent=False)
        self.register_buffer("prefactors", torch.tensor(prefactors), persistent=False)

    def radial(self, dist: Tensor) -> Tensor:
        """[E, L, K]: ``norm_ln j_l(z_ln x) envelope(x)`` at x = dist / cutoff."""
        x = (dist / self.cutoff).unsqueeze(-1).unsqueeze(-1)
        r = x * self.zeros.to(x.dtype)  # [E, L, K]
        sin, cos = torch.sin(r), torch.cos(r)
        previous, current = sin / r, sin / r.square() - cos / r  # j_0, j_1
        orders = [previous, current]
        for l in range(1, self.num_spherical - 1):
            previous, current = current, (2 * l + 1) / r * current - previous
            orders.append(current)
        # j_l at the zeros of order l: the diagonal of the [order, row l] table
        bessel = torch.stack([orders[l][:, l] for l in range(self.num_spherical)], dim=1)
        return self.envelope(x) * self.norms.to(x.dtype) * bessel

    def angular(self, angle: Tensor) -> Tensor:
        """[T, L]: ``Y_l0(angle)``."""
        c = torch.cos(angle)
        previous, current = torch.ones_like(c), c
        legendre = [previous, current]
        for l in range(1, self.num_spherical - 1):
            previous, current = current, ((2 * l + 1) * c * current - l * previous) / (l + 1)
            legendre.append(current)
        return torch.stack(legendre[: self.num_spherical], dim=1) * self.prefactors.to(angle.dtype)

    def forward(self, dist: Tensor, angle: Tensor, idx_kj: Tensor) -> Tensor:
        """[T, L * K] basis of triplets from edge distances [E] Å, angles [T] and ``idx_kj`` [T]."""
        # float64 whatever the model's dtype: the upward recurrence (as PyG's closed forms) loses
        # about (2l + 1)!! / x^(2l + 1) relative accuracy at small arguments x.
        rbf = self.radial(dist.double()).to(dist.dtype)
        return (rbf[idx_kj] * self.angular(angle).unsqueeze(-1)).flatten(1)


class DimeNetPlusPlusBlocks(nn.Module):
    """PyG's DimeNet++ modules under PyG's attribute names (``rbf``, ``sbf``, ``emb``,
    ``output_blocks``, ``interaction_blocks``), initialised as PyG does, with ``out_channels=1``."""

    def __init__(self, hidden_channels: int, num_blocks: int, int_emb_size: int, basis_emb_size: int,
                 out_emb_channels: int, num_spherical: int, num_radial: int, cutoff: float,
                 envelope_exponent: int, num_before_skip: int, num_after_skip: int, num_output_layers: int,
                 output_initializer: str, act: str = "swish"):
        super().__init__()
        act = activation_resolver(act)
        self.rbf = BesselBasisLayer(num_radial, cutoff, envelope_exponent)
        self.sbf = SphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.emb = EmbeddingBlock(num_radial, hidden_channels, act)
        self.output_blocks = nn.ModuleList(
            OutputPPBlock(num_radial, hidden_channels, out_emb_channels, 1, num_output_layers, act, output_initializer)
            for _ in range(num_blocks + 1))
        self.interaction_blocks = nn.ModuleList(
            InteractionPPBlock(hidden_channels, int_emb_size, basis_emb_size, num_spherical, num_radial,
                               num_before_skip, num_after_skip, act)
            for _ in range(num_blocks))

    def reset_parameters(self) -> None:
        """Redraw all parameters as PyG's ``DimeNet.reset_parameters``."""
        self.rbf.reset_parameters()
        self.emb.reset_parameters()
        for block in (*self.output_blocks, *self.interaction_blocks):
            block.reset_parameters()


class DimeNetPlusPlus(EnergyModel):
    """DimeNet++ energy [B] eV and conservative forces [N, 3] eV/Å on periodic or molecular graphs.

    Args:
        hidden_channels: edge-message width.
        num_interactions: interaction blocks (PyG/OCP ``num_blocks``).
        cutoff: Å; longer edges of the batch are ignored, and the neighbour list built when a batch
            has none uses it.
        max_neighbors: neighbours per atom when the model builds the neighbour list itself.
        int_emb_size, basis_emb_size, out_emb_channels, num_spherical, num_radial,
        envelope_exponent, num_before_skip, num_after_skip, num_output_layers: as in PyG / OCP.
        output_initializer: ``"zeros"`` (PyG and OCP: the model starts at energy 0) or
            ``"glorot_orthogonal"``.
        regress_forces: ``"from_energy"`` (default) or None.
        max_z: largest atomic number; PyG's table (94) unless larger, then a bigger table is
            initialised as PyG does.
    """

    def __init__(self, hidden_channels: int = 128, num_interactions: int = 4, cutoff: float = 6.0,
                 max_neighbors: int | None = None, int_emb_size: int = 64, basis_emb_size: int = 8,
                 out_emb_channels: int = 256, num_spherical: int = 7, num_radial: int = 6,
                 envelope_exponent: int = 5, num_before_skip: int = 1, num_after_skip: int = 2,
                 num_output_layers: int = 3, output_initializer: str = "zeros",
                 regress_forces: str | None = "from_energy", max_z: int = PYG_MAX_Z):
        super().__init__(cutoff=cutoff, max_neighbors=max_neighbors, regress_forces=regress_forces, max_z=max_z)
        self.pyg = DimeNetPlusPlusBlocks(
            hidden_channels=hidden_channels, num_blocks=num_interactions,
            int_emb_size=int_emb_size, basis_emb_size=basis_emb_size, out_emb_channels=out_emb_channels,
            num_spherical=num_spherical, num_radial=num_radial, cutoff=cutoff,
            envelope_exponent=envelope_exponent, num_before_skip=num_before_skip,
            num_after_skip=num_after_skip, num_output_layers=num_output_layers,
            output_initializer=output_initializer,
        )
        if self.max_z != PYG_MAX_Z:
            self.pyg.emb.emb = Embedding(self.max_z + 1, hidden_channels)
            self.pyg.emb.reset_parameters()  # PyG's uniform(-sqrt 3, sqrt 3) on the new table

    def energy(self, inputs: GraphInputs, direct_forces: bool) -> tuple[Tensor, None]:
        net = self.pyg
        edge_index, offsets = inputs.edge_index, inputs.cell_offsets
        vectors = inputs.edge_vectors()
        dist = torch.linalg.vector_norm(vectors, dim=-1)
        within = dist < self.cutoff
        if not bool(within.all()):
            edge_index, vectors, dist = edge_index[:, within], vectors[within], dist[within]
            offsets = None if offsets is None else offsets[within]
        num_nodes = inputs.atomic_numbers.shape[0]
        idx_kj, idx_ji = triplets(edge_index, offsets, num_nodes)
        # PyG's DimeNet++ angle: between pos_i - pos_j and pos_j - pos_k, i.e. between the edge
        # vectors j -> i and k -> j of our convention (both point from centre to neighbour).
        v_ji, v_kj = vectors[idx_ji], vectors[idx_kj]
        angle = torch.atan2(torch.linalg.vector_norm(torch.linalg.cross(v_ji, v_kj), dim=-1), (v_ji * v_kj).sum(-1))
        rbf = net.rbf(dist)
        sbf = net.sbf(dist, angle, idx_kj)
        j, i = edge_index
        x = net.emb(inputs.atomic_numbers, rbf, i, j)
        atom_energy = net.output_blocks[0](x, rbf, i, num_nodes=num_nodes)
        for interaction_block, output_block in zip(net.interaction_blocks, net.output_blocks[1:]):
            x = interaction_block(x, rbf, sbf, idx_kj, idx_ji)
            atom_energy = atom_energy + output_block(x, rbf, i, num_nodes=num_nodes)
        graphs = GraphIndex.from_batch(inputs.batch, num_nodes, inputs.num_graphs, like=atom_energy)
        return graphs.sum(atom_energy).squeeze(-1), None
