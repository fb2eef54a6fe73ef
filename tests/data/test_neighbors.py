"""Neighbour lists against ``ase.neighborlist.neighbor_list`` on the real periodic data."""

import json

import ase
import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph, edge_vectors, neighbor_list, radius_graph_batch
from frameavg.errors import DataError

CUTOFF = 6.0


def _edge_table(atoms, cutoff, ours: bool):
    """Sorted (centre, neighbour, shift) rows and distances for one structure."""
    if ours:
        data = atoms_to_data(atoms, dtype=torch.float64)
        edge_index, offsets = neighbor_list(data.pos, data.cell[0], data.pbc[0], cutoff)
        vec = edge_vectors(data.pos, edge_index, offsets, data.cell, None)
        i, j = edge_index[1].numpy(), edge_index[0].numpy()
        shifts, dist = offsets.numpy().astype(int), vec.norm(dim=1).numpy()
    else:
        i, j, shifts, dist = ase_neighbor_list("ijSd", atoms, cutoff)
    rows = np.column_stack([i, j, shifts])
    order = np.lexsort(rows.T[::-1])
    return rows[order], dist[order]


def assert_same_edges(atoms, cutoff=CUTOFF):
    rows_ours, d_ours = _edge_table(atoms, cutoff, ours=True)
    rows_ase, d_ase = _edge_table(atoms, cutoff, ours=False)
    assert rows_ours.shape == rows_ase.shape, (rows_ours.shape, rows_ase.shape)
    np.testing.assert_array_equal(rows_ours, rows_ase)
    np.testing.assert_allclose(d_ours, d_ase, atol=1e-6, rtol=0)


def _xu_kitchin_structures(real_data):
    tree = json.loads((real_data / "xu_kitchin_adsorption" / "structures.json").read_text())
    stack = [tree]
    while stack:  # nested metal/adsorbate/site/coverage dicts; missing entries are strings
        node = stack.pop()
        if isinstance(node, dict) and "symbols" in node:
            yield ase.Atoms(node["symbols"], positions=node["pos"], cell=node["cell"], pbc=True)
        elif isinstance(node, dict):
            stack.extend(node.values())


def test_oc20_samples_match_ase(real_data):
    for name in ("is2re_bs3.extxyz", "is2re_bs8.extxyz"):
        for atoms in ase.io.read(real_data / "oc20_is2re_samples" / name, ":"):
            assert_same_edges(atoms)


def test_oc20_s2ef_matches_ase(real_data):
    assert_same_edges(ase.io.read(real_data / "oc20_s2ef_single" / "oc20_single_atoms.json"))


@pytest.mark.slow
def test_oxides_match_ase(real_data):
    with ase.db.connect(real_data / "oxides_eos" / "oxides.db") as db:
        structures = [row.toatoms() for row in db.select()]
    assert len(structures) == 295
    for atoms in structures:
        assert_same_edges(atoms)


@pytest.mark.slow
def test_xu_kitchin_match_ase(real_data):
    structures = list(_xu_kitchin_structures(real_data))
    assert len(structures) > 800
    for atoms in structures:
        assert_same_edges(atoms)


def test_cell_smaller_than_cutoff_gives_many_images():
    atoms = bulk("Cu", "fcc", a=3.6)  # one atom, cell vectors 2.55 Å << cutoff
    assert_same_edges(atoms, cutoff=6.0)
    edge_index, offsets = neighbor_list(
        torch.tensor(atoms.positions), torch.tensor(atoms.cell.array), torch.tensor(atoms.pbc), 6.0
    )
    assert (edge_index == 0).all() and len({tuple(o) for o in offsets.tolist()}) == edge_index.shape[1]
    assert edge_index.shape[1] == 78  # fcc shells within 6 Å: 12+6+24+12+24


def test_mixed_pbc_slab_and_molecule():
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=8.0)
    slab.pbc = [True, True, False]
    assert_same_edges(slab)
    mol = molecule("CH3CH2OH")
    assert_same_edges(mol, cutoff=3.0)


def test_max_neighbors_strict_and_ties():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)  # 12 equidistant nearest neighbours
    data = atoms_to_data(atoms, dtype=torch.float64)
    strict, _ = neighbor_list(data.pos, data.cell[0], data.pbc[0], 6.0, max_neighbors=8, strict=True)
    loose, _ = neighbor_list(data.pos, data.cell[0], data.pbc[0], 6.0, max_neighbors=8, strict=False)
    per_atom = lambda ei: torch.bincount(ei[1], minlength=4).tolist()  # noqa: E731
    assert per_atom(strict) == [8] * 4
    assert per_atom(loose) == [12] * 4  # all 12 ties kept
    # kept neighbours are the nearest ones
    full, off = neighbor_list(data.pos, data.cell[0], data.pbc[0], 6.0)
    d_full = edge_vectors(data.pos, full, off, data.cell, None).norm(dim=1)
    assert torch.isclose(d_full[full[1] == 0].sort().values[:12], torch.full((12,), 3.6 / 2**0.5, dtype=torch.float64)).all()


def test_transform_and_batch_agree(real_data):
    frames = ase.io.read(real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz", ":")
    transform = RadiusGraph(CUTOFF, max_neighbors=40, strict=False)
    singles = [transform(atoms_to_data(a)) for a in frames]
    batch = Batch.from_data_list(singles)
    edge_index, offsets, counts = radius_graph_batch(
        Batch.from_data_list([atoms_to_data(a) for a in frames]), CUTOFF, 40, strict=False
    )
    assert torch.equal(edge_index, batch.edge_index) and torch.equal(offsets, batch.cell_offsets)
    assert counts.tolist() == batch.neighbors.tolist()
    vec = edge_vectors(batch.pos, batch.edge_index, batch.cell_offsets, batch.cell, batch.batch)
    assert vec.norm(dim=1).max() < CUTOFF


def test_isolated_atom_has_no_edges_and_bad_cutoff():
    data = atoms_to_data(ase.Atoms("He", positions=[[0, 0, 0]]))
    data = RadiusGraph(5.0)(data)
    assert data.edge_index.shape == (2, 0) and data.neighbors.tolist() == [0]
    with pytest.raises(DataError, match="cutoff must be positive"):
        RadiusGraph(0.0)
    with pytest.raises(DataError, match="max_neighbors"):
        neighbor_list(data.pos, None, None, 5.0, max_neighbors=0)
