"""Fixtures for model tests: real structures as graphs, and the original ``faenet`` 0.1.3 package
(made importable by ``original_faenet.py``; see its docstring)."""

from __future__ import annotations

import ase.io
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph

from .original_faenet import import_original_faenet, patch_local_env  # noqa: F401 (re-exported)

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


@pytest.fixture(scope="session")
def original_faenet():
    """The ``faenet`` 0.1.3 package, importable on the current stack."""
    try:
        return import_original_faenet()
    except ImportError as exc:
        pytest.skip(f"original faenet unavailable: {exc}")
