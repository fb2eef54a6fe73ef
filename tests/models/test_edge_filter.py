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


def test_fused_function_has_exact_second_derivatives(qm9_atoms):
    """Training on forces = -dE/dpos differentiates the backward: gradgradcheck in float64."""
    graph = to_graph(qm9_atoms[5])
    source, target = graph.edge_index[:, :30]
    n, edges = int(torch.maximum(source.max(), target.max())) + 1, source.shape[0]
    assert edges == 30
    generator = torch.Generator().manual_seed(2)
    pairs = torch.arange(edges) % 17

    def leaf(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(True)

    inputs = [leaf(n, 5), leaf(n, 5), leaf(n, 5), leaf(edges, 4), leaf(5, 4), leaf(17, 5)]

    def fused(*x):
        return filtered_message_sum(*x[:5], source, target, swish, pair_term=x[5], pair_index=pairs)

    assert torch.autograd.gradcheck(fused, inputs)
    assert torch.autograd.gradgradcheck(fused, inputs)


def test_energy_gradient_training_through_the_model(qm9_atoms):
    """An outer trainer taking forces = -dE/dpos with create_graph (regress_forces=None model):
    parameter gradients of a force loss equal those of the plain autograd path."""
    from frameavg.models import FAENet

    torch.manual_seed(0)
    model = FAENet(hidden_channels=96, num_filters=64, num_interactions=2, tag_hidden_channels=16,
                   pg_hidden_channels=16, second_layer_MLP=False, mp_type="base").double().train()
    graph = to_graph(qm9_atoms[3], dtype=torch.float64)
    gradients = []
    for plain in (False, True):
        model.zero_grad()
        pos = graph.pos.clone().requires_grad_(True)
        batch = graph.clone()
        batch.pos = pos
        if plain:  # force the plain autograd path everywhere
            from frameavg.models import faenet as faenet_module

            original = faenet_module.filtered_message_sum
            faenet_module.filtered_message_sum = lambda *a: original(*a[:8], True, *a[9:])
        try:
            energy = model(batch)["energy"].sum()
            (grad,) = torch.autograd.grad(energy, pos, create_graph=True)
            (grad.square().sum() + energy).backward()
        finally:
            if plain:
                faenet_module.filtered_message_sum = original
        gradients.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*gradients):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


class _Probe(torch.autograd.Function):
    """y = a * b; its backward records what the private engine query says of each input."""

    answers: list = []

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        _Probe.answers.append([torch._C._will_engine_execute_node(node) for node, _ in ctx.next_functions])
        return grad * b, grad * a


def test_private_engine_query_keeps_its_meaning():
    """The fused backward skips inputs the running backward does not need by asking the engine
    (``torch._C._will_engine_execute_node``, private). If a PyTorch release changes what it
    answers, this fails loudly; the next test covers the path without it."""
    a = torch.randn(4, requires_grad=True) * 1.0  # non-leaf: next_functions are real nodes
    b = torch.randn(4, requires_grad=True) * 1.0
    _Probe.answers.clear()
    torch.autograd.grad(_Probe.apply(a, b).sum(), [a])
    torch.autograd.grad(_Probe.apply(a, b).sum(), [a, b])
    assert _Probe.answers == [[True, False], [True, True]]


def test_fused_backward_without_the_private_query(qm9_atoms, monkeypatch):
    """Without the engine query (a PyTorch that drops it), every input that requires grad gets
    its gradient computed, and the gradients asked for are unchanged."""
    graph = to_graph(qm9_atoms[0])
    source, target = graph.edge_index
    generator = torch.Generator().manual_seed(0)
    n, e_count = graph.num_nodes, source.shape[0]
    inputs = [(torch.randn(*shape, generator=generator, dtype=torch.float64) * 1.0).requires_grad_(True)
              for shape in ((n, 8), (n, 8), (n, 8), (e_count, 6), (8, 6))]
    grad_out = torch.randn(n, 8, generator=generator, dtype=torch.float64)
    with_query = torch.autograd.grad(filtered_message_sum(*inputs, source, target, swish), [inputs[3]], grad_out)
    monkeypatch.delattr(torch._C, "_will_engine_execute_node")
    without = torch.autograd.grad(filtered_message_sum(*inputs, source, target, swish), [inputs[3]], grad_out)
    torch.testing.assert_close(without[0], with_query[0], rtol=1e-13, atol=1e-13)
    from frameavg.models import edge_filter

    class Context:  # what _needed_gradients reads of an autograd ctx
        needs_input_grad = (True, False, True)
        next_functions = ((None, 0),) * 3

    assert edge_filter._needed_gradients(Context, 3) == [True, False, True]
