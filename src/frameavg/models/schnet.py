"""SchNet (Schütt et al., 2017) on our periodic edges: PyTorch Geometric's implementation, fed with
``edge_index`` / ``cell_offsets`` / ``cell`` instead of its own (molecule-only) radius graph.

The network is a ``torch_geometric.nn.models.SchNet`` held as ``self.pyg``; its embedding,
Gaussian smearing, interaction blocks and output MLP run unchanged on distances
``|pos[j] - pos[i] + offsets @ cell|``, so a model with the same weights as a PyG SchNet gives PyG's
energies, and periodic slabs work as in OCP's ``SchNetWrap``. Energy = sum (or mean) over atoms of
the per-atom outputs, without PyG's mean/std/atomref rescaling (the training module normalises).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, Sequential, SiLU
from torch_geometric.nn.models import SchNet as PygSchNet

from frameavg.errors import ConfigError
from frameavg.models.base import EnergyModel, GraphInputs
from frameavg.models.blocks import GraphIndex
from frameavg.models.ewald import INV_SQRT_3, build_ewald, ewald_kspace
from frameavg.outputs import DENOISING_POTENTIAL

#: PyG's SchNet embeds Z = 0..99 (row 0 is padding).
PYG_MAX_Z = 99

#: OCP's OC20 IS2RE-all SchNet (ocp configs/is2re/all/schnet/schnet.yml; OCP's neighbour cap of 50,
#: energy only): ``SchNet(**PAPER_CONFIG)``.
PAPER_CONFIG: dict = dict(hidden_channels=384, num_filters=128, num_interactions=4, num_gaussians=100,
                          cutoff=6.0, max_neighbors=50, readout="add", regress_forces=None)

#: The equal-width comparison of issue 6: width 128, 4 interactions, cutoff 6 Å; filters equal to
#: the width and PyG's 50 Gaussians. Forces follow the constructor default (conservative).
EQUAL_WIDTH_CONFIG: dict = dict(hidden_channels=128, num_filters=128, num_interactions=4, num_gaussians=50,
                                cutoff=6.0)

READOUTS = ("add", "sum", "mean")


class SchNet(EnergyModel):
    """SchNet energy [B] eV and conservative forces [N, 3] eV/Å on periodic or molecular graphs.

    Args:
        hidden_channels: atom-state width.
        num_filters: width of the continuous filters.
        num_interactions: interaction blocks.
        num_gaussians: Gaussians over [0, cutoff] expanding the distances.
        cutoff: Å; edges of the batch longer than this are ignored (PyG's cosine cutoff assumes
            none), and the neighbour list built when a batch has none uses it.
        max_neighbors: neighbours per atom when the model builds the neighbour list itself.
        readout: ``"add"`` (sum over atoms, OCP's default) or ``"mean"``.
        regress_forces: ``"from_energy"`` (default) or None.
        max_z: largest atomic number; PyG's table (99) unless larger, then a bigger table is
            initialised as PyG does.
        denoising_head: add a denoising head: an auxiliary per-atom scalar a_i (an MLP of the
            final atom states) whose −∂(Σ a_i)/∂x is the [N, 3] prediction, equivariant because
            SchNet is invariant (Noisy Nodes).
        ewald: Ewald message passing (``frameavg.models.ewald``): None or ``EwaldSettings``
            settings; one block per interaction, update (h + interaction + ewald) / √3. The
            aperiodic variant sees orientations, so a SchNet with it (``variant`` auto or
            aperiodic) is rotation invariant on molecules only under frame averaging.
    """

    denoising_kind = "gradient"

    def __init__(self, hidden_channels: int = 128, num_filters: int = 128, num_interactions: int = 6,
                 num_gaussians: int = 50, cutoff: float = 6.0, max_neighbors: int | None = None,
                 readout: str = "add", regress_forces: str | None = "from_energy", max_z: int = PYG_MAX_Z,
                 denoising_head: bool = False, ewald: dict | None = None):
        super().__init__(cutoff=cutoff, max_neighbors=max_neighbors, regress_forces=regress_forces, max_z=max_z)
        if readout not in READOUTS:
            raise ConfigError(f"SchNet readout must be one of {READOUTS}, got {readout!r}")
        self.readout = "mean" if readout == "mean" else "add"
        self.pyg = PygSchNet(hidden_channels=hidden_channels, num_filters=num_filters,
                             num_interactions=num_interactions, num_gaussians=num_gaussians,
                             cutoff=cutoff, readout=self.readout)
        if self.max_z != PYG_MAX_Z:
            self.pyg.embedding = Embedding(self.max_z + 1, hidden_channels, padding_idx=0)
        self.denoising_head = (Sequential(Linear(hidden_channels, hidden_channels // 2), SiLU(),
                                          Linear(hidden_channels // 2, 1)) if denoising_head else None)
        self.ewald = build_ewald(ewald, hidden_channels, num_interactions, torch.nn.functional.silu)
        if self.ewald is not None and self.ewald.sees_orientation:
            self.invariances = ("translation",)

    def energy(self, inputs: GraphInputs, direct_forces: bool) -> tuple[Tensor, None]:
        net = self.pyg
        edge_index = inputs.edge_index
        dist = torch.linalg.vector_norm(inputs.edge_vectors(), dim=-1)
        within = dist < self.cutoff
        if not bool(within.all()):
            edge_index, dist = edge_index[:, within], dist[within]
        h = net.embedding(inputs.atomic_numbers)
        edge_attr = net.distance_expansion(dist)
        kspace = ewald_kspace(self.ewald, inputs)
        for index, interaction in enumerate(net.interactions):
            if kspace is None:
                h = h + interaction(h, edge_index, dist, edge_attr)
            else:
                h = (h + interaction(h, edge_index, dist, edge_attr) + self.ewald[index](h, kspace)) * INV_SQRT_3
        atom_energy = net.lin2(net.act(net.lin1(h)))
        graphs = GraphIndex.from_batch(inputs.batch, atom_energy.shape[0], inputs.num_graphs, like=atom_energy)
        energy = graphs.mean(atom_energy) if self.readout == "mean" else graphs.sum(atom_energy)
        if inputs.denoising and self.denoising_head is not None:
            return energy.squeeze(-1), None, {DENOISING_POTENTIAL: self.denoising_head(h).squeeze(-1)}
        return energy.squeeze(-1), None
