"""FAENet's cutoff envelope on real structures (float64): an edge crossing the cutoff changes the
energy no more than the smooth steps around it (and, without envelope, visibly more), forces equal
finite differences with a neighbour just inside the cutoff, and every mp_type runs with each
envelope; the envelope-weighted fused filter has exact first and second derivatives."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import read_structures
from frameavg.data.neighbors import RadiusGraph
from frameavg.models import FAENet
from frameavg.models.blocks import swish
from frameavg.models.edge_filter import filtered_message_sum
from frameavg.models.faenet import MP_TYPES

STEP = 1e-4  # Å per step along the path
STEPS = 12


@pytest.fixture(scope="module")
def ethanol():
    """The first shipped rMD17 ethanol frame (9 atoms), float64."""
    return read_structures("shipped:rmd17_ethanol/train", dtype=torch.float64)[0]


def crossing_pair(pos: torch.Tensor) -> tuple[int, int, float]:
    """(a, b, d_ab): a pair at 2.5–4.5 Å whose distance is ≥ 0.01 Å from every other pair's."""
    dist = torch.cdist(pos, pos)
    i, j = torch.triu_indices(len(pos), len(pos), 1)
    d = dist[i, j]
    for k in torch.argsort(d).tolist():
        others = torch.cat([d[:k], d[k + 1:]])
        if 2.5 < d[k] < 4.5 and (others - d[k]).abs().min() > 0.01:
            return int(i[k]), int(j[k]), float(d[k])
    raise AssertionError("no isolated pair distance")


def model(cutoff: float, envelope: str, mp_type: str = "updownscale_base", **kw) -> FAENet:
    torch.manual_seed(0)
    return FAENet(cutoff=cutoff, hidden_channels=32, num_filters=16, num_gaussians=12, num_interactions=2,
                  tag_hidden_channels=0, pg_hidden_channels=8, phys_embeds=False, mp_type=mp_type,
                  envelope=envelope, regress_forces="from_energy", **kw).double().eval()


def graph(data, pos: torch.Tensor, cutoff: float) -> Batch:
    moved = data.clone()
    moved.pos = pos
    return Batch.from_data_list([RadiusGraph(cutoff, None)(moved)])


def energies_along_path(net: FAENet, data, a: int, b: int, start: float, cutoff: float):
    """Energies [STEPS + 1] moving atom a away from b, starting at distance ``start``, and the
    number of edges at each point."""
    direction = (data.pos[a] - data.pos[b]) / (data.pos[a] - data.pos[b]).norm()
    base = data.pos.clone()
    base[a] = data.pos[b] + direction * start
    energies, edges = [], []
    with torch.no_grad():
        for k in range(STEPS + 1):
            pos = base.clone()
            pos[a] += k * STEP * direction
            batch = graph(data, pos, cutoff)
            energies.append(float(net(batch)["energy"]))
            edges.append(batch.edge_index.shape[1])
    return torch.tensor(energies, dtype=torch.float64), edges


@pytest.mark.parametrize("mp_type", MP_TYPES)
def test_an_edge_crossing_the_cutoff_is_smooth_with_an_envelope_and_jumps_without(ethanol, mp_type):
    a, b, d = crossing_pair(ethanol.pos)
    cutoff = round(d, 2) + 0.005  # the pair leaves the cutoff half-way along the path
    start = cutoff - STEPS // 2 * STEP - 0.5 * STEP
    for envelope in ("polynomial", "cosine", "none"):
        energies, edges = energies_along_path(model(cutoff, envelope, mp_type), ethanol, a, b, start, cutoff)
        crossing = [k for k in range(STEPS) if edges[k + 1] != edges[k]]
        assert crossing == [STEPS // 2 - 1] or crossing == [STEPS // 2], (crossing, edges)
        c = crossing[0]
        steps = energies.diff().abs()
        smooth = torch.cat([steps[c - 3:c], steps[c + 1:c + 4]])
        assert torch.isfinite(energies).all()
        if envelope == "none":  # the defect: the edge leaves with a finite message
            assert steps[c] > 50 * smooth.max(), (envelope, steps)
        else:  # no larger than twice the largest neighbouring smooth step
            assert steps[c] <= 2 * smooth.max() + 1e-12, (envelope, steps)


@pytest.mark.parametrize("mp_type, second_layer_MLP, envelope",
                         [(m, s, e) for m, s in [*((m, True) for m in MP_TYPES), ("base", False),
                                                 ("updownscale_base", False)]  # False: pair edge states
                          for e in ("polynomial", "cosine")])
def test_forces_are_minus_the_energy_gradient_with_a_neighbour_just_inside_the_cutoff(
        ethanol, mp_type, second_layer_MLP, envelope):
    a, b, d = crossing_pair(ethanol.pos)
    cutoff = d + 0.002  # x = d / cutoff ≈ 0.9995: the envelope's steep end
    net = model(cutoff, envelope, mp_type, second_layer_MLP=second_layer_MLP)
    batch = graph(ethanol, ethanol.pos, cutoff)
    forces = net(batch)["forces"].detach()
    h = 1e-5
    numeric = torch.zeros(2, 3, dtype=torch.float64)
    with torch.no_grad():
        for row, atom in enumerate((a, b)):
            for axis in range(3):
                energy = []
                for sign in (1, -1):
                    moved = batch.clone()
                    moved.pos = batch.pos.clone()
                    moved.pos[atom, axis] += sign * h
                    energy.append(float(net(moved)["energy"]))
                numeric[row, axis] = -(energy[0] - energy[1]) / (2 * h)
    torch.testing.assert_close(forces[[a, b]], numeric, rtol=1e-6, atol=1e-7)


def test_envelope_none_keeps_the_model_without_envelope(ethanol):
    """envelope="none" is the class default: same parameters and outputs as before the option."""
    batch = graph(ethanol, ethanol.pos, 4.0)
    default = model(4.0, "none")
    torch.manual_seed(0)
    plain = FAENet(cutoff=4.0, hidden_channels=32, num_filters=16, num_gaussians=12, num_interactions=2,
                   tag_hidden_channels=0, pg_hidden_channels=8, phys_embeds=False,
                   regress_forces="from_energy").double().eval()
    assert plain.envelope == "none" and plain.norm_kind == "graph"
    assert torch.equal(plain(batch)["energy"], default(batch)["energy"])
    assert not torch.equal(model(4.0, "polynomial")(batch)["energy"], default(batch)["energy"])


def test_fused_filter_with_edge_weights_has_exact_first_and_second_derivatives():
    torch.manual_seed(0)
    nodes, edges, width, edge_width = 4, 7, 3, 2
    source = torch.randint(0, nodes, (edges,))
    target = torch.randint(0, nodes, (edges,))
    inputs = [torch.randn(*shape, dtype=torch.float64, requires_grad=True)
              for shape in ((nodes, width), (nodes, width), (nodes, width), (edges, edge_width), (width, edge_width))]
    weight = torch.rand(edges, dtype=torch.float64, requires_grad=True)

    def fused(*tensors):
        return filtered_message_sum(*tensors[:5], source, target, swish, edge_weight=tensors[5])

    assert torch.autograd.gradcheck(fused, (*inputs, weight))
    assert torch.autograd.gradgradcheck(fused, (*inputs, weight))
