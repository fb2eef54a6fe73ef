"""The edge-filtered message sum at the heart of FAENet's ``base`` / ``updownscale_base`` blocks:

    agg[i] = sum over edges (j -> i) of value[j] * act(p_source[j] + p_target[i]
                                                       [+ pair_term[pair(j, i)]] + e_ij @ w_edge.T)
                                        [* edge_weight[ij]]

``p_source`` / ``p_target`` are per-atom products (the filter's h_j / h_i terms plus bias), so
the per-edge work is one [E, Fe] x [Fe, C] product instead of [E, Fe + 2H] x [Fe + 2H, C].
``pair_term`` (optional) is a term shared by the two directions of an edge (the distance part
of the edge state), computed once per atom pair (see :func:`edge_pairs`). ``edge_weight``
(optional, [E]) scales each edge's message: FAENet's cutoff envelope, so that an edge enters and
leaves the sum at 0; its gradient (through the distances) is exact on every path.

For swish (SiLU) a custom autograd function computes forward and backward with a few reused
buffers and recomputes cheap intermediates instead of storing them: it saves only the
pre-activation [E, C] besides its inputs, and needs about half the [E, C] memory passes and
allocations of the autograd graph of the same expression. When its backward is itself recorded
(``create_graph=True``, e.g. training on forces = -dE/dpos), the backward recomputes the plain
expression from the saved inputs and differentiates it, so second derivatives are exact too.
All paths compute the same expression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from frameavg.models.blocks import inplace_activation, scatter_sum, swish
from frameavg.precision import autocast_dtype, full_precision


@dataclass
class EdgePass:
    """Per-forward settings shared by the blocks: ``double_backward`` (the outputs will be
    differentiated twice) and ``workspace`` (scratch buffers for passes without autograd)."""

    double_backward: bool = False
    workspace: "EdgeWorkspace | None" = None


class EdgeWorkspace:
    """Scratch buffers reused by every block of one inference forward pass (no autograd): large
    fresh tensors cost page faults on every allocation, reused ones do not."""

    def __init__(self):
        self._buffers: dict[str, Tensor] = {}

    def buffer(self, name: str, shape: tuple[int, int], like: Tensor) -> Tensor:
        current = self._buffers.get(name)
        if current is None or tuple(current.shape) != tuple(shape) or current.dtype != like.dtype:
            current = like.new_empty(shape)
            self._buffers[name] = current
        return current

    def buffers(self, shape: tuple[int, int], like: Tensor) -> tuple[Tensor, Tensor]:
        return self.buffer("pre", shape, like), self.buffer("scratch", shape, like)


def edge_pairs(edge_index: Tensor, cell_offsets: Tensor | None, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Group each edge (j -> i, offset o) with its reverse (i -> j, -o).

    Returns (pair_index [E] in 0..P-1, representative [P]: one edge of each pair). Edges whose
    reverse is absent (max-neighbour truncation) form a pair of one. The two directions have the
    same length as the same function of the positions, so a distance-only term computed once per
    pair is exact in value and in gradient.
    """
    source, target = edge_index[0], edge_index[1]
    if cell_offsets is not None and cell_offsets.numel():
        offsets = cell_offsets.detach().round().long()
        radius = int(offsets.abs().max()) + 1
        base = 2 * radius + 1
        code = ((offsets[:, 0] + radius) * base + offsets[:, 1] + radius) * base + offsets[:, 2] + radius
        centre = (base**3 - 1) // 2  # the code of offset (0, 0, 0); -o has code 2 * centre - code
    else:
        code, base, centre = torch.zeros_like(source), 1, 0
    flip = (source > target) | ((source == target) & (code < centre))
    low = torch.where(flip, target, source)
    high = torch.where(flip, source, target)
    code = torch.where(flip, 2 * centre - code, code)
    key = (low * num_nodes + high) * (base**3) + code
    unique, pair_index = torch.unique(key, return_inverse=True)
    positions = torch.arange(source.shape[0], device=source.device)
    representative = torch.full((unique.shape[0],), source.shape[0], dtype=torch.long, device=source.device)
    representative.scatter_reduce_(0, pair_index, positions, reduce="amin")
    return pair_index, representative


def filtered_message_sum(
    p_source: Tensor,
    p_target: Tensor,
    value: Tensor,
    e: Tensor,
    w_edge: Tensor,
    source: Tensor,
    target: Tensor,
    act: Callable[[Tensor], Tensor],
    double_backward: bool = False,
    workspace: EdgeWorkspace | None = None,
    pair_term: Tensor | None = None,
    pair_index: Tensor | None = None,
    edge_weight: Tensor | None = None,
) -> Tensor:
    """agg [N, C] (see module docstring). p_source, p_target, value: [N, C]; e: [E, Fe];
    w_edge: [C, Fe]; source, target: [E] (j, i); pair_term [P, C] with pair_index [E], or None;
    edge_weight [E] (multiplies each message) or None.
    ``double_backward``: the result will be differentiated twice (use the plain autograd path).
    ``workspace``: reusable [E, C] buffers for the no-autograd path."""
    low = autocast_dtype(e)
    if low is not None:  # autocast: every operand in its dtype, the fused kernels run as they are
        with full_precision():
            cast = [t.to(low) if t is not None else None
                    for t in (p_source, p_target, value, e, w_edge, pair_term, edge_weight)]
            return filtered_message_sum(*cast[:5], source, target, act, double_backward, workspace,
                                        cast[5], pair_index, cast[6])
    tensors = tuple(t for t in (p_source, p_target, value, e, w_edge, pair_term, edge_weight) if t is not None)
    needs_graph = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    num_nodes = p_target.shape[0]
    if not needs_graph:
        shape = (source.shape[0], p_target.shape[1])
        pre, scratch = workspace.buffers(shape, e) if workspace is not None else (e.new_empty(shape), e.new_empty(shape))
        torch.index_select(p_target, 0, target, out=pre)
        pre += torch.index_select(p_source, 0, source, out=scratch)
        if pair_term is not None:
            pre += torch.index_select(pair_term, 0, pair_index, out=scratch)
        pre.addmm_(e, w_edge.t())
        message = inplace_activation(act)(pre).mul_(torch.index_select(value, 0, source, out=scratch))
        if edge_weight is not None:
            message.mul_(edge_weight.unsqueeze(1))
        return scatter_sum(message, target, num_nodes)
    if act in (swish, F.silu) and not double_backward:
        if pair_term is None:
            pair_term, pair_index = p_target.new_zeros(1, p_target.shape[1]), None
        return _FilteredSiluMessageSum.apply(
            p_source, p_target, value, e, w_edge, pair_term, edge_weight, source, target, pair_index
        )
    pre = p_target.index_select(0, target) + p_source.index_select(0, source)
    if pair_term is not None:
        pre = pre + pair_term.index_select(0, pair_index)
    pre = torch.addmm(pre, e, w_edge.t())
    message = act(pre) * value.index_select(0, source)
    if edge_weight is not None:
        message = message * edge_weight.unsqueeze(1)
    return scatter_sum(message, target, num_nodes)


class _FilteredSiluMessageSum(torch.autograd.Function):
    """Fused forward/backward of the swish case (see module docstring)."""

    @staticmethod
    def forward(ctx, p_source, p_target, value, e, w_edge, pair_term, edge_weight, source, target, pair_index):
        num_nodes = p_target.shape[0]
        pre = p_target.index_select(0, target)
        scratch = p_source.index_select(0, source)
        pre += scratch
        if pair_index is not None:
            pre += torch.index_select(pair_term, 0, pair_index, out=scratch)
        pre.addmm_(e, w_edge.t())
        torch.index_select(value, 0, source, out=scratch)
        gate = torch.sigmoid(pre)
        scratch.mul_(gate.mul_(pre))  # value[j] * silu(pre)
        del gate
        if edge_weight is not None:
            scratch.mul_(edge_weight.unsqueeze(1))
        out = scatter_sum(scratch, target, num_nodes)
        ctx.num_pairs = pair_term.shape[0]
        ctx.save_for_backward(pre, p_source, p_target, value, e, w_edge, pair_term, edge_weight, source, target,
                              pair_index)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return _recorded_backward(ctx, grad_out)
        pre, _, _, value, e, w_edge, _, edge_weight, source, target, pair_index = ctx.saved_tensors
        num_nodes = value.shape[0]
        need_source, need_target, need_value, need_e, need_w, need_pair, need_weight = _needed_gradients(ctx, 7)
        grad_message = grad_out.index_select(0, target)  # [E, C]
        derivative = torch.sigmoid(pre)  # s, turned into d silu / d pre = s + silu - silu s
        silu = pre * derivative
        scratch = torch.mul(grad_message, silu)
        grad_weight = None
        if edge_weight is not None:  # message = weight * value[j] * silu(pre)
            if need_weight:
                grad_weight = (scratch * value.index_select(0, source)).sum(dim=1)
            grad_message.mul_(edge_weight.unsqueeze(1))
            scratch.mul_(edge_weight.unsqueeze(1))
        grad_value = scatter_sum(scratch, source, num_nodes) if need_value else None
        torch.mul(silu, derivative, out=scratch)
        derivative.add_(silu).sub_(scratch)
        grad_pre = derivative.mul_(grad_message).mul_(torch.index_select(value, 0, source, out=silu))
        del grad_message, silu, scratch
        grad_p_source = scatter_sum(grad_pre, source, num_nodes) if need_source else None
        grad_p_target = scatter_sum(grad_pre, target, num_nodes) if need_target else None
        grad_pair = None
        if need_pair and pair_index is not None:
            grad_pair = scatter_sum(grad_pre, pair_index, ctx.num_pairs)
        grad_e = grad_pre @ w_edge if need_e else None
        grad_w = grad_pre.t() @ e if need_w else None
        return grad_p_source, grad_p_target, grad_value, grad_e, grad_w, grad_pair, grad_weight, None, None, None


def _recorded_backward(ctx, grad_out):
    """Backward of the fused function as autograd ops on its saved inputs (for create_graph)."""
    _, p_source, p_target, value, e, w_edge, pair_term, edge_weight, source, target, pair_index = ctx.saved_tensors
    inputs = (p_source, p_target, value, e, w_edge, pair_term, edge_weight)
    wanted = [k for k, need in enumerate(_needed_gradients(ctx, 7)) if need and inputs[k] is not None]
    pre = p_target.index_select(0, target) + p_source.index_select(0, source)
    if pair_index is not None:
        pre = pre + pair_term.index_select(0, pair_index)
    pre = torch.addmm(pre, e, w_edge.t())
    message = F.silu(pre) * value.index_select(0, source)
    if edge_weight is not None:
        message = message * edge_weight.unsqueeze(1)
    out = scatter_sum(message, target, p_target.shape[0])
    grads = torch.autograd.grad(out, [inputs[k] for k in wanted], grad_out, create_graph=True, allow_unused=True)
    result = [None] * 10
    for k, grad in zip(wanted, grads):
        result[k] = grad
    return tuple(result)


def _needed_gradients(ctx, count: int) -> list[bool]:
    """Which of the first ``count`` inputs need a gradient in the running backward pass.

    ``needs_input_grad`` says which inputs require grad; when only some are asked for (e.g.
    ``autograd.grad(energy, pos)`` for a gradient target), built-in ops skip the others, and so do
    we, using the engine's execution plan (a private query; all inputs if it is unavailable)."""
    needed = list(ctx.needs_input_grad[:count])
    try:
        for k, (node, _) in enumerate(ctx.next_functions[:count]):
            if needed[k] and node is not None:
                needed[k] = torch._C._will_engine_execute_node(node)
    except (AttributeError, RuntimeError):
        return list(ctx.needs_input_grad[:count])
    return needed
