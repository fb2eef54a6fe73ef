"""The fused swish edge-filter message sum against the plain autograd expression."""

from __future__ import annotations

import torch

from frameavg.models.blocks import swish
from frameavg.models.edge_filter import filtered_message_sum

from .conftest import to_graph


def test_fused_backward_equals_autograd(qm9_atoms):
    graph = to_graph(qm9_atoms[0])
    source, target = graph.edge_index
    n, e_count, channels, edge_width = graph.num_nodes, source.shape[0], 12, 10
    generator = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(True)

    inputs = [leaf(n, channels), leaf(n, channels), leaf(n, channels), leaf(e_count, edge_width),
              leaf(channels, edge_width)]
    grad_out = torch.randn(n, channels, generator=generator, dtype=torch.float64)
    fused = filtered_message_sum(*inputs, source, target, swish)
    plain = filtered_message_sum(*inputs, source, target, swish, double_backward=True)
    assert fused.grad_fn is not plain.grad_fn
    torch.testing.assert_close(fused, plain, rtol=1e-13, atol=1e-13)
    grads_fused = torch.autograd.grad(fused, inputs, grad_out)
    grads_plain = torch.autograd.grad(plain, inputs, grad_out)
    for a, b in zip(grads_fused, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda *x: filtered_message_sum(*x, source[:40], target[:40], swish),
        [t.detach()[: max(int(source[:40].max()), int(target[:40].max())) + 1].requires_grad_(True)
         if i < 3 else t.detach()[:40].requires_grad_(True) if i == 3 else t.detach().requires_grad_(True)
         for i, t in enumerate(inputs)],
    )


def test_no_graph_path_is_in_place_and_equal(qm9_atoms):
    graph = to_graph(qm9_atoms[1])
    source, target = graph.edge_index
    generator = torch.Generator().manual_seed(1)
    n, e_count = graph.num_nodes, source.shape[0]
    args = [torch.randn(n, 8, generator=generator), torch.randn(n, 8, generator=generator),
            torch.randn(n, 8, generator=generator), torch.randn(e_count, 6, generator=generator),
            torch.randn(8, 6, generator=generator)]
    with torch.no_grad():
        fast = filtered_message_sum(*args, source, target, swish)
    reference = filtered_message_sum(*[a.requires_grad_(True) for a in args], source, target, swish,
                                     double_backward=True)
    torch.testing.assert_close(fast, reference.detach(), rtol=1e-6, atol=1e-6)


def test_edge_pairs_group_opposite_edges(oc20_atoms, qm9_atoms):
    from frameavg.data.neighbors import edge_vectors
    from frameavg.models.edge_filter import edge_pairs

    for atoms, max_neighbors in ((oc20_atoms[0], None), (oc20_atoms[1], 12), (qm9_atoms[2], None)):
        graph = to_graph(atoms, max_neighbors=max_neighbors)
        pair_index, representative = edge_pairs(graph.edge_index, graph.cell_offsets, graph.num_nodes)
        vectors = edge_vectors(graph.pos, graph.edge_index, graph.cell_offsets, graph.cell, None)
        sizes = torch.bincount(pair_index)
        assert sizes.max() <= 2 and torch.equal(pair_index[representative], torch.arange(len(representative)))
        # within a pair: opposite vectors, equal lengths bit for bit
        first = representative[pair_index]
        torch.testing.assert_close(vectors, torch.where((first == torch.arange(len(first))).unsqueeze(1),
                                                        vectors[first], -vectors[first]), rtol=0, atol=1e-5)
        assert torch.equal(vectors.norm(dim=1), vectors[first].norm(dim=1))
        if max_neighbors is None:  # full neighbour lists are symmetric: every edge has its reverse
            assert (sizes == 2).all()
        else:
            assert (sizes == 1).any() and (sizes == 2).any()
