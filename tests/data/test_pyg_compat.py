"""PyG's non-public API that frameavg relies on (frameavg.data.pyg_compat) still behaves as assumed.

A failure here after a PyG upgrade names the broken assumption: fix ``pyg_compat`` (and only it).
"""

from __future__ import annotations

import inspect

import torch
from ase.build import fcc111, molecule
from torch_geometric.data import Batch, Data

from frameavg.data import atoms_to_data
from frameavg.data import pyg_compat
from frameavg.data.neighbors import RadiusGraph
from frameavg.data.pyg_compat import batch_increments, batch_slices, set_num_graphs


def _structures() -> list[Data]:
    """A slab, a molecule and a slab, each with the fields training sees (neighbour list included)
    plus a per-atom ``*_index`` field (incremented by PyG) and a per-graph vector label."""
    graph = RadiusGraph(cutoff=4.0)
    out = []
    for k, atoms in enumerate([fcc111("Cu", size=(1, 1, 3), vacuum=5.0), molecule("CH3CH2OH"),
                               fcc111("Pt", size=(2, 1, 2), vacuum=5.0)]):
        atoms.set_tags(atoms.get_tags() if atoms.pbc.any() else 2)  # the molecule: an adsorbate
        data = graph(atoms_to_data(atoms, dtype=torch.float64))
        data.anchor_index = torch.arange(data.pos.shape[0])
        data.label = torch.full((1, 2), float(k))
        out.append(data)
    return out


def test_from_data_list_records_slices_and_increments_per_field():
    structures = _structures()
    batch = Batch.from_data_list(structures)
    atoms = torch.tensor([d.pos.shape[0] for d in structures])
    edges = torch.tensor([d.edge_index.shape[1] for d in structures])
    atom_start = torch.cumsum(atoms, 0) - atoms
    slices, increments = batch_slices(batch), batch_increments(batch)
    assert hasattr(batch, "_slice_dict") and hasattr(batch, "_inc_dict"), "PyG no longer keeps _slice_dict/_inc_dict"
    assert slices is batch._slice_dict and increments is batch._inc_dict
    assert set(slices) == set(increments) == set(structures[0].keys()) - {"ptr"}
    # slices: flat {key: LongTensor [B + 1]}, cumulative sizes along the concatenation dimension
    for key, sizes in {"pos": atoms, "atomic_numbers": atoms, "anchor_index": atoms, "edge_index": edges,
                       "cell_offsets": edges, "cell": torch.ones(3, dtype=torch.long),
                       "label": torch.ones(3, dtype=torch.long)}.items():
        assert isinstance(slices[key], torch.Tensor) and slices[key].shape == (4,), key
        assert torch.equal(slices[key].diff(), sizes), key
    # increments: [B] tensors; the atoms of the preceding graphs for *index* keys, zero otherwise
    for key in ("edge_index", "anchor_index"):
        assert torch.equal(increments[key], atom_start), key
    for key in ("pos", "cell_offsets", "cell", "label", "atomic_numbers"):
        assert isinstance(increments[key], torch.Tensor) and increments[key].shape == (3,), key
        assert not bool(increments[key].any()), key
    assert torch.equal(batch.anchor_index, torch.arange(int(atoms.sum())))


def test_hand_built_batches_have_no_bookkeeping_and_num_graphs_can_be_set():
    batch = Batch.from_data_list(_structures())
    assert batch_slices(Batch()) == {} and batch_increments(Batch()) == {}
    assert batch_slices(Data(pos=torch.zeros(2, 3))) == {}
    out = Batch()
    out.pos = batch.pos
    out.batch = batch.batch
    out.ptr = batch.ptr
    assert out.num_graphs == 3  # from ptr
    set_num_graphs(out, 7)
    assert out.num_graphs == 7, "Batch.num_graphs no longer reads _num_graphs"
    assert "_num_graphs" not in out.keys()  # bookkeeping, not a field batched or moved as data


def test_expanded_batch_keeps_the_assumed_layout():
    """frames.averaging.expand_batch, the caller of these wrappers, on a real batch."""
    from frameavg.frames.averaging import expand_batch
    from frameavg.frames.compute import frames_for_batch

    batch = Batch.from_data_list(_structures())
    frames = frames_for_batch(batch, "all", "3D")
    expanded, _ = expand_batch(batch, frames)
    copies = int(frames.num_frames.sum())
    assert expanded.num_graphs == copies
    assert expanded.label.shape == (copies, 2)
    atom_start = (expanded.ptr[:-1])[expanded.batch]
    assert torch.equal(expanded.anchor_index - atom_start, batch.anchor_index[frames.node_index] -
                       batch.ptr[:-1][batch.batch][frames.node_index])


#: The blocks dimenetpp builds, with the positional parameters of ``__init__`` and ``forward`` it
#: passes (frameavg.models.dimenetpp.DimeNetPlusPlusBlocks / SphericalBasis / DimeNetPlusPlus.energy).
DIMENET_BLOCKS = {
    "Envelope": (["exponent"], ["x"]),
    "BesselBasisLayer": (["num_radial", "cutoff", "envelope_exponent"], ["dist"]),
    "EmbeddingBlock": (["num_radial", "hidden_channels", "act"], ["x", "rbf", "i", "j"]),
    "InteractionPPBlock": (["hidden_channels", "int_emb_size", "basis_emb_size", "num_spherical", "num_radial",
                            "num_before_skip", "num_after_skip", "act"], ["x", "rbf", "sbf", "idx_kj", "idx_ji"]),
    "OutputPPBlock": (["num_radial", "hidden_channels", "out_emb_channels", "out_channels", "num_layers", "act",
                       "output_initializer"], ["x", "rbf", "i", "num_nodes"]),
}


def test_dimenet_blocks_exist_with_the_signatures_we_call():
    for name, (init, forward) in DIMENET_BLOCKS.items():
        block = getattr(pyg_compat, name)
        assert list(inspect.signature(block.__init__).parameters)[1:] == init, f"{name}.__init__ changed"
        called = list(inspect.signature(block.forward).parameters)[1:len(forward) + 1]
        assert called == forward, f"{name}.forward changed"
        assert callable(getattr(block, "reset_parameters", None)) or name == "Envelope", name
    assert list(inspect.signature(pyg_compat.Jn).parameters) == ["r", "n"]
    assert list(inspect.signature(pyg_compat.Jn_zeros).parameters) == ["n", "k"]
    zeros = pyg_compat.Jn_zeros(3, 2)
    assert zeros.shape == (3, 2) and zeros.dtype.name == "float32"  # SphericalBasis relies on PyG's float32 zeros
    act = pyg_compat.activation_resolver("swish")
    x = torch.linspace(-2, 2, 5)
    assert torch.allclose(act(x), x * torch.sigmoid(x))
    emb = pyg_compat.EmbeddingBlock(6, 8, act)
    assert isinstance(emb.emb, torch.nn.Embedding) and emb.emb.num_embeddings == 95  # dimenetpp swaps emb.emb
