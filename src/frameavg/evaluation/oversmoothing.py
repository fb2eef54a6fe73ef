"""Oversmoothing: the mean average distance (MAD) of node embeddings after every layer.

MAD (Chen et al., 2020; the measure of Godwin et al., 2022) of one graph is the mean over its
ordered pairs of distinct atoms of the cosine distance ``1 − h_i·h_j / (|h_i| |h_j|)`` of their
states; MAD of a layer is its mean over the graphs. A value falling towards 0 with depth means the
atom states become alike (oversmoothing). Measured on FAENet's atom states h [N, H]: after the
embedding (layer 0) and after each interaction block (``h + block(h)``), under frame averaging on
the canonical copies (the cosine distance of two atoms does not depend on the frame).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from frameavg.errors import ConfigError, DataError


def graph_mad(h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """MAD [B] of atom states h [N, H] per graph (``batch`` [N]); NaN for one-atom graphs.

    With unit vectors uᵢ, Σ_{i≠j} uᵢ·uⱼ = |Σᵢ uᵢ|² − Σᵢ |uᵢ|², so MAD needs only per-graph sums."""
    unit = torch.nn.functional.normalize(h.double(), dim=-1)
    sums = unit.new_zeros(num_graphs, unit.shape[1]).index_add_(0, batch, unit)
    norms = unit.new_zeros(num_graphs).index_add_(0, batch, unit.pow(2).sum(-1))
    count = torch.bincount(batch, minlength=num_graphs).to(unit.dtype)
    pairs = count * (count - 1)
    similarity = (sums.pow(2).sum(-1) - norms) / torch.where(pairs > 0, pairs, torch.ones_like(pairs))
    return torch.where(pairs > 0, 1.0 - similarity, torch.full_like(pairs, float("nan")))


def _faenet_of(model: nn.Module):
    from frameavg.models.faenet import FAENet

    found = [m for m in model.modules() if isinstance(m, FAENet)]
    if not found:
        raise ConfigError(f"MAD per layer is measured on FAENet's atom states; {type(model).__name__} has no FAENet")
    return found[0]


@torch.no_grad()
def mad_per_layer(model: nn.Module, structures: list, *, batch_size: int = 32, budget=None,
                  source: str | None = None) -> list[float]:
    """MAD of every layer [num_interactions + 1] (0: the embedding) averaged over the graphs of
    ``structures`` (``Data`` with neighbour lists), with ``model`` (a FAENet, possibly inside
    ``FrameAveraging`` or a training task) in eval mode. Batches: at most ``batch_size``
    structures within ``budget`` (``data.budget``; default: the model's, half the available memory)."""
    from frameavg.data.budget import MemoryBudget, batches_by_budget

    if not structures:
        raise DataError("no structures to measure")
    faenet = _faenet_of(model)
    if faenet.ewald is not None:
        raise ConfigError("MAD per layer reads FAENet's updates h + interaction; a FAENet with Ewald blocks "
                          "updates h differently and is not measured")
    per_layer: list[list[Tensor]] = [[] for _ in range(len(faenet.interaction_blocks) + 1)]
    graphs: dict[str, object] = {}

    def remember_graphs(module, args):  # the atoms' graphs of the (frame-expanded) batch FAENet sees
        inputs = args[0]
        graphs["batch"], graphs["count"] = inputs.batch, int(inputs.num_graphs)

    def after_block(index):
        def record(module, inputs, output):
            h = inputs[0]
            if index == 1:  # the first block's input: the embedding
                per_layer[0].append(graph_mad(h, graphs["batch"], graphs["count"]))
            per_layer[index].append(graph_mad(h + output, graphs["batch"], graphs["count"]))
        return record

    handles = [faenet.register_forward_pre_hook(remember_graphs)]
    for index, block in enumerate(faenet.interaction_blocks, start=1):
        handles.append(block.register_forward_hook(after_block(index)))
    if budget is None:
        budget = MemoryBudget.for_network(model, cutoff=float(faenet.cutoff))
    chunks = list(batches_by_budget(structures, budget, batch_size, source=source))
    was_training = model.training
    model.eval()
    try:
        for chunk in chunks:
            batch = Batch.from_data_list([structures[i] for i in chunk])
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [float(torch.cat(values).nanmean()) for values in per_layer]
