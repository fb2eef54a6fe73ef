"""PaiNN (Schütt, Unke & Gastegger, ICML 2021): equivariant message passing on scalar and vector
atom features, as the OC20 baseline of the Open Catalyst Project.

Every atom carries scalar features s [N, F] and vector features v [N, 3, F] (v starts at zero).
Each of ``num_interactions`` layers applies

* a message block (paper eq. 7-8): with φ(s_j) = Linear(F, F) -> SiLU -> Linear(F, 3F) and the
  filter W(r_ij) = Linear(RBF(|r_ij|), 3F) · f_cut(|r_ij|), the elementwise product φ ∘ W splits into
  (Δs_ij, g_vv, g_vs) and
  Δs_i = Σ_j Δs_ij,  Δv_i = Σ_j v_j ∘ g_vv + g_vs ∘ r_ij/|r_ij|;
* an update block (paper eq. 9-11): with U v and V v (bias-free linear maps over features) and
  a = MLP([s, |V v|]) split into (a_ss, a_sv, a_vv):
  Δs = a_ss + a_sv ∘ <U v, V v>,  Δv = a_vv ∘ U v.

The energy is the sum over atoms of an MLP of the final scalar features; direct forces come from
two gated equivariant blocks (paper eq. 12 and Fig. 3) that reduce v to one vector per atom.

Conventions taken from OCP's PaiNN (``ocpmodels/models/painn/painn.py``), where the paper leaves
them open: LayerNorm on s before φ, the scaled SiLU (SiLU/0.6), the variance-preserving factors
1/√2 (scalar residuals), 1/√3 and 1/√F (vector messages), 1/√F on <U v, V v>, |V v| computed as
sqrt(Σ v² + 1e-8) (finite gradient at v = 0), the embedding rows indexed by Z − 1 (``max_z``
rows), Xavier-uniform weights with zero biases, and the force head (F -> F/2 -> 1 gated blocks).

Deliberate differences from OCP:

* The radial basis defaults to the paper's: sinc functions sin(nπd/r_c)/d (n = 1..num_rbf) times
  the cosine cutoff ½(cos(πd/r_c) + 1). OCP's Gaussian basis on d/r_c with the degree-5
  polynomial envelope is available as ``rbf="gaussian", envelope="polynomial"``.
* The envelope multiplies the filter *after* its bias (the paper's W · f_cut); OCP multiplies the
  basis before the linear layer, so its bias survives beyond the cutoff and the energy jumps when
  an atom crosses it.
* OCP's per-layer ``ScaleFactor`` (fitted on OC20 batches, 1 when unfitted) is left out, and
  conservative forces are the gradient of the energy (OCP's non-direct branch differentiates the
  atom features instead).

Edges come from ``GraphInputs``: row 0 neighbour j, row 1 centre i, r_ij = pos[j] − pos[i] +
offsets @ cell, so periodic images of the same pair are separate edges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frameavg.errors import ConfigError, DataError
from frameavg.models.base import EnergyModel, GraphInputs
from frameavg.outputs import DENOISING, DIRECT_MODES
from frameavg.models.blocks import GaussianSmearing, cosine_cutoff, polynomial_envelope, scatter_sum
from frameavg.models.ewald import INV_SQRT_3, build_ewald, ewald_kspace

#: OCP's OC20 S2EF-All PaiNN (configs/s2ef/all/painn/painn_h512.yml), 83 elements, Gaussian RBF,
#: polynomial envelope and direct forces as there. 20,073,475 parameters (OCP's ``num_params``:
#: 20,073,481, counting its six untrained per-layer ScaleFactor scalars).
S2EF_CONFIG = dict(hidden_channels=512, num_interactions=6, num_rbf=128, cutoff=12.0, max_neighbors=50,
                   max_z=83, rbf="gaussian", envelope="polynomial", regress_forces="direct")

#: OCP's OC20 IS2RE-All PaiNN (hidden 1024, 6 layers, 128 RBF, 12 Å, 50 neighbours),
#: energy only: the configuration of the ``paper`` comparison of ``frameavg bench``.
PAPER_CONFIG = dict(S2EF_CONFIG, hidden_channels=1024, regress_forces=None)

#: The equal-width comparison of issue 6 (same width, depth and cutoff as FAENet's default).
EQUAL_WIDTH_CONFIG = dict(hidden_channels=128, num_interactions=4, cutoff=6.0)

RADIAL_BASES = ("sinc", "gaussian")
ENVELOPES = ("cosine", "polynomial")  # PaiNN always has one (blocks.ENVELOPES adds "none")
#: Edges shorter than this (Å) mean overlapping atoms: no direction, and a meaningless structure.
MIN_DISTANCE = 1e-4


def scaled_silu(x: Tensor) -> Tensor:
    """SiLU(x) / 0.6 (OCP's ScaledSiLU: roughly unit variance for unit-variance inputs)."""
    return F.silu(x) * (1.0 / 0.6)


class ScaledSiLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return scaled_silu(x)


def mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Linear -> scaled SiLU -> Linear, Xavier-uniform weights, zero biases."""
    net = nn.Sequential(nn.Linear(in_features, hidden), ScaledSiLU(), nn.Linear(hidden, out_features))
    for layer in (net[0], net[2]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return net


def vector_norm(v: Tensor) -> Tensor:
    """|v| over the Cartesian axis: [N, 3, F] -> [N, F], as sqrt(Σ v² + 1e-8) (differentiable at 0)."""
    return torch.sqrt(v.square().sum(dim=1) + 1e-8)


class SincBasis(nn.Module):
    """sin(nπd/cutoff)/d for n = 1..num_rbf: distances [E] Å -> [E, num_rbf] (1/Å)."""

    def __init__(self, cutoff: float, num_rbf: int):
        super().__init__()
        self.register_buffer("frequencies", torch.arange(1, num_rbf + 1) * (math.pi / cutoff))

    def forward(self, dist: Tensor) -> Tensor:
        d = dist.unsqueeze(-1)
        return torch.sin(d * self.frequencies.to(dist.dtype)) / d


class PaiNNMessage(nn.Module):
    """Message block: scalar and vector updates [N, F], [N, 3, F] summed over incoming edges."""

    def __init__(self, hidden_channels: int, num_rbf: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.norm = nn.LayerNorm(hidden_channels)
        self.scalar_net = mlp(hidden_channels, hidden_channels, 3 * hidden_channels)  # φ
        self.filter = nn.Linear(num_rbf, 3 * hidden_channels)  # W before the envelope
        nn.init.xavier_uniform_(self.filter.weight)
        nn.init.zeros_(self.filter.bias)
        self.vector_scale = 1.0 / math.sqrt(hidden_channels)
        self.inv_sqrt_3 = 1.0 / math.sqrt(3.0)

    def forward(self, s: Tensor, v: Tensor | None, source: Tensor, target: Tensor, edge_basis: Tensor,
                unit: Tensor) -> tuple[Tensor, Tensor]:
        """``edge_basis`` [E, num_rbf + 1] = [RBF, 1] · envelope, so one matrix product gives
        W(r) · f_cut including the bias; ``unit`` [E, 3] r_ij/|r_ij|; ``v`` None means zero."""
        weight = torch.cat([self.filter.weight, self.filter.bias.unsqueeze(1)], dim=1)
        filters = F.linear(edge_basis, weight)  # [E, 3F]
        x = self.scalar_net(self.norm(s)).index_select(0, source) * filters
        ds, gate_v, gate_r = x.split(self.hidden_channels, dim=-1)
        dv = (gate_r * self.vector_scale).unsqueeze(1) * unit.unsqueeze(2)  # [E, 3, F]
        if v is not None:
            # in place: the product above saves its inputs, not its output, for backward
            dv.addcmul_(v.index_select(0, source), (gate_v * (self.inv_sqrt_3 * self.vector_scale)).unsqueeze(1))
        num_nodes = s.shape[0]
        return scatter_sum(ds, target, num_nodes), scatter_sum(dv, target, num_nodes)


class PaiNNUpdate(nn.Module):
    """Update block: atom-wise mixing of s [N, F] with the invariants of v [N, 3, F]."""

    def __init__(self, hidden_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.vector_proj = nn.Linear(hidden_channels, 2 * hidden_channels, bias=False)  # [U; V]
        nn.init.xavier_uniform_(self.vector_proj.weight)
        self.net = mlp(2 * hidden_channels, hidden_channels, 3 * hidden_channels)
        self.dot_scale = 1.0 / math.sqrt(hidden_channels)
        self.inv_sqrt_2 = 1.0 / math.sqrt(2.0)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        uv, vv = self.vector_proj(v).split(self.hidden_channels, dim=-1)
        a_ss, a_sv, a_vv = self.net(torch.cat([s, vector_norm(vv)], dim=-1)).split(self.hidden_channels, dim=-1)
        dot = (uv * vv).sum(dim=1) * self.dot_scale
        ds = torch.addcmul(a_ss, a_sv, dot) * self.inv_sqrt_2
        return ds, a_vv.unsqueeze(1) * uv


class GatedEquivariantBlock(nn.Module):
    """Paper Fig. 3: (s [N, F_in], v [N, 3, F_in]) -> (s [N, F_out], v [N, 3, F_out])."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.out_channels = out_channels
        self.vector_in = nn.Linear(in_channels, in_channels, bias=False)
        self.vector_out = nn.Linear(in_channels, out_channels, bias=False)
        nn.init.xavier_uniform_(self.vector_in.weight)
        nn.init.xavier_uniform_(self.vector_out.weight)
        self.net = mlp(2 * in_channels, in_channels, 2 * out_channels)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        scalar, gate = self.net(torch.cat([s, vector_norm(self.vector_in(v))], dim=-1)).split(self.out_channels, dim=-1)
        return scaled_silu(scalar), gate.unsqueeze(1) * self.vector_out(v)


class PaiNN(EnergyModel):
    """PaiNN energy [B] eV and forces [N, 3] eV/Å (conservative or from gated equivariant blocks).

    Args:
        hidden_channels: F, width of scalar and vector features.
        num_interactions: number of PaiNN layers (message + update block each).
        num_rbf: radial basis functions.
        cutoff: Å, radius of the envelope (and of the neighbour list built when a batch has none).
        max_neighbors: neighbours kept per atom when the model builds the graph.
        regress_forces: ``"from_energy"`` (default), ``"direct"``, ``"direct_with_gradient_target"`` or None.
        max_z: largest atomic number (embedding rows are Z − 1).
        rbf: ``"sinc"`` (paper) or ``"gaussian"`` (OCP: Gaussians on d/cutoff).
        envelope: ``"cosine"`` (paper) or ``"polynomial"`` (OCP).
        envelope_exponent: degree p of the polynomial envelope.
        denoising_head: add a denoising head: gated equivariant blocks on the final scalar and
            vector features, as the force head, predicting [N, 3] (Noisy Nodes).
        ewald: Ewald message passing on the scalar features (``frameavg.models.ewald``): None or
            ``EwaldSettings`` settings; the message step becomes s ← (s + Δs + ewald(s)) / √3.
            The periodic variant keeps PaiNN equivariant (k rotates with the cell); the aperiodic
            one (``variant`` auto or aperiodic, on molecules) needs frame averaging for rotations.
    """

    has_direct_forces = True
    denoising_kind = "vector"

    def __init__(self, hidden_channels: int = 128, num_interactions: int = 4, num_rbf: int = 20, cutoff: float = 6.0,
                 max_neighbors: int | None = None, regress_forces: str | None = "from_energy", max_z: int = 100,
                 rbf: str = "sinc", envelope: str = "cosine", envelope_exponent: int = 5,
                 denoising_head: bool = False, ewald: dict | None = None):
        super().__init__(cutoff, max_neighbors, regress_forces, max_z)
        if hidden_channels < 2 or num_interactions < 1 or num_rbf < 1:
            raise ConfigError(f"PaiNN needs hidden_channels >= 2, num_interactions >= 1 and num_rbf >= 1, got "
                              f"{hidden_channels}, {num_interactions}, {num_rbf}")
        if rbf not in RADIAL_BASES:
            raise ConfigError(f"rbf must be one of {RADIAL_BASES}, got {rbf!r}")
        if envelope not in ENVELOPES:
            raise ConfigError(f"envelope must be one of {ENVELOPES}, got {envelope!r}")
        self.hidden_channels = hidden_channels
        self.num_interactions = num_interactions
        self.num_rbf = num_rbf
        self.envelope = envelope
        self.envelope_exponent = int(envelope_exponent)
        self.embedding = nn.Embedding(self.max_z, hidden_channels)
        nn.init.uniform_(self.embedding.weight, -math.sqrt(3), math.sqrt(3))
        if rbf == "sinc":
            self.radial_basis = SincBasis(self.cutoff, num_rbf)
        elif num_rbf < 2:
            raise ConfigError("rbf='gaussian' needs num_rbf >= 2")
        else:
            self.radial_basis = GaussianSmearing(0.0, self.cutoff, num_rbf)
        self.messages = nn.ModuleList(PaiNNMessage(hidden_channels, num_rbf) for _ in range(num_interactions))
        self.updates = nn.ModuleList(PaiNNUpdate(hidden_channels) for _ in range(num_interactions))
        self.energy_head = mlp(hidden_channels, hidden_channels // 2, 1)
        self.force_head = (
            nn.ModuleList([GatedEquivariantBlock(hidden_channels, hidden_channels // 2),
                           GatedEquivariantBlock(hidden_channels // 2, 1)])
            if self.regress_forces in DIRECT_MODES else None
        )
        self.denoising_head = (
            nn.ModuleList([GatedEquivariantBlock(hidden_channels, hidden_channels // 2),
                           GatedEquivariantBlock(hidden_channels // 2, 1)])
            if denoising_head else None
        )
        self.inv_sqrt_2 = 1.0 / math.sqrt(2.0)
        self.ewald = build_ewald(ewald, hidden_channels, num_interactions, scaled_silu)
        if self.ewald is not None and self.ewald.sees_orientation:
            self.invariances = ("translation",)

    def edge_envelope(self, dist: Tensor) -> Tensor:
        if self.envelope == "cosine":
            return cosine_cutoff(dist, self.cutoff)
        return polynomial_envelope(dist, self.cutoff, self.envelope_exponent)

    def check_distances(self, dist: Tensor, inputs: GraphInputs) -> None:
        """DataError naming the graph and atoms when two atoms (or periodic images) overlap."""
        if dist.numel() == 0 or torch.compiler.is_compiling():
            return
        dist = dist.detach()
        shortest = int(torch.argmin(dist))
        if float(dist[shortest]) < MIN_DISTANCE:
            j, i = (int(k) for k in inputs.edge_index[:, shortest])
            graph = int(inputs.batch[i])
            raise DataError(f"structure {graph} of the batch: atoms {i} and {j} (or a periodic image) are "
                            f"{float(dist[shortest]):.2e} Å apart; PaiNN needs distinct atom positions")

    def energy(self, inputs: GraphInputs, direct_forces: bool) -> tuple[Tensor, Tensor | None]:
        """Energy [B] eV and, when ``direct_forces``, forces [N, 3] eV/Å from the gated blocks."""
        vectors = inputs.edge_vectors()  # [E, 3]
        dist = torch.linalg.vector_norm(vectors, dim=-1)
        self.check_distances(dist, inputs)
        unit = vectors / dist.unsqueeze(-1)
        # [RBF, 1] · envelope: each layer's filter (bias included) is then one matrix product
        basis = torch.cat([self.radial_basis(dist), torch.ones_like(dist).unsqueeze(-1)], dim=-1)
        edge_basis = basis * self.edge_envelope(dist).unsqueeze(-1)
        source, target = inputs.edge_index
        s = self.embedding(inputs.atomic_numbers - 1)
        v = None
        kspace = ewald_kspace(self.ewald, inputs)
        for index, (message, update) in enumerate(zip(self.messages, self.updates)):
            ds, dv = message(s, v, source, target, edge_basis, unit)
            if kspace is None:
                s = (s + ds) * self.inv_sqrt_2
            else:
                s = (s + ds + self.ewald[index](s, kspace)) * INV_SQRT_3
            v = dv if v is None else v + dv
            ds, dv = update(s, v)
            s = s + ds
            v = v + dv
        atom_energy = self.energy_head(s).squeeze(-1)
        energy = scatter_sum(atom_energy, inputs.batch, inputs.num_graphs)
        forces = self._vector_head(self.force_head, s, v) if direct_forces else None
        if direct_forces and forces is None:
            raise ConfigError("this PaiNN was built without a force head (regress_forces='direct' at construction)")
        if inputs.denoising and self.denoising_head is not None:
            return energy, forces, {DENOISING: self._vector_head(self.denoising_head, s, v)}
        return energy, forces

    @staticmethod
    def _vector_head(head: nn.ModuleList | None, s: Tensor, v: Tensor) -> Tensor | None:
        """[N, 3] of gated equivariant blocks on scalars s [N, H] and vectors v [N, 3, H]."""
        if head is None:
            return None
        for block in head:
            s, v = block(s, v)
        return v.squeeze(-1)

    def extra_repr(self) -> str:
        return (f"hidden_channels={self.hidden_channels}, num_interactions={self.num_interactions}, "
                f"num_rbf={self.num_rbf}, cutoff={self.cutoff}, max_neighbors={self.max_neighbors}, "
                f"regress_forces={self.regress_forces!r}")


__all__ = ["EQUAL_WIDTH_CONFIG", "PAPER_CONFIG", "S2EF_CONFIG", "PaiNN"]
