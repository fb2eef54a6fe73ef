"""The one place frameavg touches PyTorch Geometric's non-public API.

Everything here relies on PyG internals that its docs do not promise: a PyG upgrade that changes
them breaks only this module, and tests/data/test_pyg_compat.py says which assumption failed.
Checked on PyG 2.8.1 (``pyproject.toml`` requires >= 2.5).

* ``Batch`` bookkeeping written by ``Batch.from_data_list`` (``torch_geometric/data/batch.py``):
  ``_num_graphs``, ``_slice_dict``, ``_inc_dict``; wrapped by :func:`set_num_graphs`,
  :func:`batch_slices`, :func:`batch_increments`.
* DimeNet++ building blocks of ``torch_geometric.nn.models.dimenet`` and ``dimenet_utils`` (PyG
  exports only the whole ``DimeNet``/``DimeNetPlusPlus`` models; no public path to the blocks
  exists as of 2.8) and ``torch_geometric.nn.resolver.activation_resolver`` (in no ``__all__``).
"""

from __future__ import annotations

import torch
from torch_geometric.data import Batch
from torch_geometric.nn.models.dimenet import (
    BesselBasisLayer,
    EmbeddingBlock,
    Envelope,
    InteractionPPBlock,
    OutputPPBlock,
)
from torch_geometric.nn.models.dimenet_utils import Jn, Jn_zeros
from torch_geometric.nn.resolver import activation_resolver


def set_num_graphs(batch: Batch, num_graphs: int) -> None:
    """Make ``batch.num_graphs`` return ``num_graphs`` (for a ``Batch`` assembled by hand).

    Relies on: ``Batch.num_graphs`` (a read-only property) returns ``batch._num_graphs`` when set,
    before falling back to ``ptr`` / ``batch``.
    """
    batch._num_graphs = int(num_graphs)


def batch_slices(batch) -> dict[str, torch.Tensor]:
    """Per-field slices of a ``Batch`` made by ``Batch.from_data_list``: ``{key: [B + 1]}``, the
    cumulative sizes of each graph's field along its concatenation dimension ({} otherwise, e.g.
    for a hand-built ``Batch`` or a ``Data``).

    Relies on: ``from_data_list`` stores ``collate``'s slice dict as ``batch._slice_dict``, flat
    ``{key: LongTensor [B + 1]}`` for homogeneous ``Data`` (nested per node/edge type for
    ``HeteroData``, which frameavg does not use).
    """
    return getattr(batch, "_slice_dict", None) or {}


def batch_increments(batch) -> dict[str, torch.Tensor | None]:
    """Per-field increments of a ``Batch`` made by ``Batch.from_data_list``: ``{key: [B] or None}``,
    the offset PyG added to each graph's copy of the field (``Data.__inc__``: the atoms of the
    preceding graphs for keys containing ``index``, else 0; None for non-tensor fields) ({} when
    the batch has none).

    Relies on: ``from_data_list`` stores ``collate``'s increment dict as ``batch._inc_dict``, with
    the same keys as ``_slice_dict``.
    """
    return getattr(batch, "_inc_dict", None) or {}


__all__ = [
    "BesselBasisLayer", "EmbeddingBlock", "Envelope", "InteractionPPBlock", "Jn", "Jn_zeros", "OutputPPBlock",
    "activation_resolver", "batch_increments", "batch_slices", "set_num_graphs",
]


def replace_edges(batch: Batch, edge_index: torch.Tensor, cell_offsets: torch.Tensor, neighbors: torch.Tensor) -> Batch:
    """A shallow copy of ``batch`` with a new neighbour list: ``edge_index`` [2, E] (batch-global
    atom indices, grouped by graph), ``cell_offsets`` [E, 3] and ``neighbors`` [B] (edges per
    graph), its bookkeeping updated so that per-edge fields still read as per edge.

    Relies on: ``_slice_dict[key]`` holds the cumulative per-graph sizes [B + 1] of each field
    (edges for ``edge_index``/``cell_offsets``), and ``_inc_dict`` the per-graph offsets, which a
    new neighbour list on the same atoms does not change.
    """
    out = batch.__copy__()
    out.edge_index, out.cell_offsets, out.neighbors = edge_index, cell_offsets, neighbors
    slices = dict(batch_slices(batch))
    if slices:
        cumulative = torch.cat([neighbors.new_zeros(1), torch.cumsum(neighbors.to(torch.long), 0)]).cpu()
        for key in ("edge_index", "cell_offsets"):
            if key in slices:
                slices[key] = cumulative.to(slices[key].dtype)
        out._slice_dict = slices
    return out
