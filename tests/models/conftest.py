"""Fixtures for model tests: real structures as graphs, and the original ``faenet`` 0.1.3 package.

The original cannot be imported as published on a current stack; the ``original_faenet`` fixture
makes it importable without changing its model code:

* ``torch_scatter`` (undeclared dependency, needs compiling) is replaced by a stand-in module whose
  ``scatter`` is ``torch_geometric.utils.scatter`` (same semantics for the sums FAENet uses);
* its element table comes from mendeleev at runtime, which fails (mendeleev >= 1.0 has no stored
  ``atomic_volume``; ``fetch_ionization_energies`` fails under pandas 3 + SQLAlchemy 2). The stand-in
  ``fetch_table`` / ``fetch_ionization_energies`` return the raw mendeleev 0.14 values that
  frameavg ships, in mendeleev's DataFrame layout, so the original's own normalisation code runs;
* ``mp_type="updown_local_env"`` calls ``propagate(..., local_env=True)``, which PyG >= 2.5 rejects;
  ``patch_local_env`` makes that one call sum the edge states as the original intends.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import math
import sys
import types

import ase.io
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph
from frameavg.models.elements import TABLE_PATH

# The paper configurations of issue 4 / DESIGN.md §3 with their parameter counts in faenet 0.1.3.
PAPER_CONFIGS = {
    "default": ({}, 394_593),
    "is2re": (
        dict(hidden_channels=384, num_filters=480, num_interactions=5, num_gaussians=104, mp_type="base",
             tag_hidden_channels=64, pg_hidden_channels=64, phys_embeds=True,
             energy_head="weighted-av-final-embeds", skip_co="concat", second_layer_MLP=False, complex_mp=True),
        4_147_731,
    ),
    "qm9": (
        dict(hidden_channels=400, num_filters=480, num_interactions=5, num_gaussians=100,
             mp_type="updownscale_base", tag_hidden_channels=0, pg_hidden_channels=32, phys_embeds=False,
             energy_head=None, skip_co=False, second_layer_MLP=True, complex_mp=True),
        6_494_673,
    ),
    "s2ef": (
        dict(hidden_channels=256, num_filters=480, num_interactions=7, num_gaussians=136,
             mp_type="updownscale_base", tag_hidden_channels=32, pg_hidden_channels=64, phys_embeds=False,
             energy_head="weighted-av-final-embeds", skip_co=False, second_layer_MLP=False, complex_mp=True,
             regress_forces="direct_with_gradient_target", force_decoder_type="mlp",
             force_decoder_model_config={"mlp": {"hidden_channels": 256, "norm": "batch1d"}}),
        5_742_485,
    ),
}


def to_graph(atoms, cutoff: float = 6.0, max_neighbors: int = 40, with_tags: bool = True, **kwargs):
    """A one-graph Batch with the radius graph; tags 0 when the structure has none."""
    data = RadiusGraph(cutoff, max_neighbors)(atoms_to_data(atoms, **kwargs))
    if with_tags and getattr(data, "tags", None) is None:
        data.tags = torch.zeros(data.num_nodes, dtype=torch.long)
    if not with_tags and "tags" in data:
        del data.tags
    return Batch.from_data_list([data])


@pytest.fixture(scope="session")
def oc20_atoms(shared_data):
    return ase.io.read(shared_data / "oc20_is2re_samples" / "is2re_bs3.extxyz", ":")


@pytest.fixture(scope="session")
def qm9_atoms(shared_data):
    return ase.io.read(shared_data / "qm9_subset" / "qm9_random2000_seed0.extxyz", ":6")


def _raw_table_rows():
    with open(TABLE_PATH, newline="") as handle:
        return list(csv.DictReader(handle))


def _value(text: str) -> float:
    return float(text) if text.strip() else math.nan


@pytest.fixture(scope="session")
def original_faenet():
    """The ``faenet`` 0.1.3 package, importable on the current stack (see module docstring)."""
    if importlib.util.find_spec("faenet") is None:
        pytest.skip("faenet 0.1.3 is not installed (pip install -e '.[test]')")
    pd = pytest.importorskip("pandas")
    added_scatter = False
    if importlib.util.find_spec("torch_scatter") is None:
        from torch_geometric.utils import scatter

        stand_in = types.ModuleType("torch_scatter")
        stand_in.scatter = scatter
        sys.modules["torch_scatter"] = stand_in
        added_scatter = True
    try:
        embedding = importlib.import_module("faenet.embedding")
        faenet = importlib.import_module("faenet")
    except ImportError as exc:
        pytest.skip(f"faenet not importable: {exc}")
    rows = _raw_table_rows()
    skip = {"Z", "symbol", "period", "group", "IE1", "IE2"}

    def fetch_table(name):
        assert name == "elements"
        return pd.DataFrame([
            {"atomic_number": int(r["Z"]), "period": int(r["period"]), "group_id": _value(r["group"]),
             **{k: _value(v) for k, v in r.items() if k not in skip}}
            for r in rows
        ])

    def fetch_ionization_energies(degree=1):
        return pd.DataFrame(
            [{"atomic_number": int(r["Z"]), "IE1": _value(r["IE1"]), "IE2": _value(r["IE2"])} for r in rows]
        ).set_index("atomic_number")

    saved = embedding.fetch_table, embedding.fetch_ionization_energies
    embedding.fetch_table, embedding.fetch_ionization_energies = fetch_table, fetch_ionization_energies
    yield faenet
    embedding.fetch_table, embedding.fetch_ionization_energies = saved
    if added_scatter:
        sys.modules.pop("torch_scatter", None)


def patch_local_env(model):
    """Let the original's ``updown_local_env`` blocks run on PyG >= 2.5 (see module docstring)."""
    from torch_geometric.utils import scatter

    for block in model.interaction_blocks:
        bound = block.propagate

        def propagate(edge_index, x, W, local_env=None, _bound=bound):
            if local_env:
                return scatter(W, edge_index[1], 0, x.shape[0], reduce="sum")
            return _bound(edge_index, x=x, W=W)

        block.propagate = propagate
    return model
