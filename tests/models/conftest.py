"""Fixtures for model tests: real structures as graphs, and the original ``faenet`` 0.1.3 package
(made importable by ``original_faenet.py``; see its docstring)."""

from __future__ import annotations

import ase.io
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph
from frameavg.models.faenet import PAPER_CONFIGS as FAENET_PAPER_CONFIGS

from .original_faenet import import_original_faenet, patch_local_env  # noqa: F401 (re-exported)

# The paper configurations of docs/faenet.md with their parameter counts in faenet 0.1.3.
PAPER_CONFIGS = {
    "default": ({}, 394_593),
    **{name: ({k: v for k, v in FAENET_PAPER_CONFIGS[name].items() if k not in ("cutoff", "max_num_neighbors")}, count)
       for name, count in {"qm9": 6_494_673, "is2re": 4_147_731, "s2ef": 5_742_485}.items()},
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
def oc20_atoms(real_data):
    return ase.io.read(real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz", ":")


@pytest.fixture(scope="session")
def qm9_atoms(real_data):
    return ase.io.read(real_data / "qm9_subset" / "qm9_random2000_seed0.extxyz", ":6")


@pytest.fixture(scope="session")
def original_faenet():
    """The ``faenet`` 0.1.3 package, importable on the current stack."""
    try:
        return import_original_faenet()
    except ImportError as exc:
        pytest.skip(f"original faenet unavailable: {exc}")
