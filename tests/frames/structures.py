"""Real structures from tests/data/real for the frame tests, as model-input ``Data`` objects, and a
small raw-coordinate model."""

from __future__ import annotations

import itertools

import torch
from ase.build import bulk, molecule
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph
from frameavg.data.readers import iter_structures
from frameavg.evaluation.symmetry import model_inputs
from frameavg.models.raw_mpnn import RawCoordinateMPNN

CUTOFF = 5.0

# (file or folder under tests/data/real, frame dimension, how many structures, stride)
DATASETS = {
    "qm9": ("qm9_subset/qm9_random2000_seed0.extxyz", "3D", 8, 1),
    "qm7": ("qm7/qm7_first300.extxyz", "3D", 8, 1),
    "rmd17_ethanol": ("rmd17_ethanol/train.xyz", "3D", 6, 1),
    "schnetpack_iso17": ("fixtures/schnetpack/test_iso.db", "3D", 4, 1),
    "schnetpack_ani1": ("fixtures/schnetpack/test_ani1.db", "3D", 4, 1),
    "nequip_aspirin": ("fixtures/nequip/aspirin.xyz", "3D", 3, 1),
    "oc20_is2re": ("oc20_is2re_samples/is2re_bs8.extxyz", "2D", 3, 3),
    "oc20_s2ef": ("oc20_s2ef_single/oc20_single_atoms.json", "2D", 1, 1),
    "xu_kitchin": ("xu_kitchin_adsorption", "2D", 6, 97),
    "oxides_bulk": ("oxides_eos/oxides.db", "3D", 6, 37),
}


def load(real_data, name: str, dtype=torch.float64) -> tuple[list, str]:
    """(structures, frame dimension) of one of DATASETS (model inputs only)."""
    path, dim, count, stride = DATASETS[name]
    stream = iter_structures(real_data / path, dtype=dtype)
    return [model_inputs(d) for d in itertools.islice(stream, 0, count * stride, stride)], dim


def qm7(real_data, index: int, dtype=torch.float64):
    """One QM7 molecule (0 methane, 1 ethane, 3 acetylene, 65 neopentane, 238 benzene)."""
    stream = iter_structures(real_data / "qm7" / "qm7_first300.extxyz", dtype=dtype)
    return model_inputs(next(itertools.islice(stream, index, None)))


def reference(name: str, dtype=torch.float64):
    """ASE reference geometries: exactly symmetric G2 molecules and ideal crystals."""
    crystals = {"Cu": lambda: bulk("Cu"), "NaCl": lambda: bulk("NaCl", "rocksalt", a=5.64),
                "Cu_cubic": lambda: bulk("Cu", cubic=True)}
    atoms = crystals[name]() if name in crystals else molecule(name)
    return atoms_to_data(atoms, dtype=dtype)


def graphs(structures, cutoff: float = CUTOFF) -> Batch:
    transform = RadiusGraph(cutoff)
    return Batch.from_data_list([transform(d.clone()) for d in structures])


def raw_model(dtype=torch.float64, seed: int = 0, direct_forces: bool = True) -> RawCoordinateMPNN:
    torch.manual_seed(seed)
    return RawCoordinateMPNN(hidden=16, num_layers=2, cutoff=CUTOFF, direct_forces=direct_forces).to(dtype).eval()


def small_faenet(dim: str = "3D", *, cutoff: float = 6.0, periodic: str = "cloud", continuous: bool = False,
                 forces=None, smooth: bool = True, dtype=torch.float64):
    """A small random FAENet (hidden 32, 2 blocks; seed 0) in frame averaging with all frames;
    ``smooth``: polynomial envelope and LayerNorm (the new-run defaults), else the original's."""
    from frameavg.frames import FrameAveraging
    from frameavg.models import FAENet

    torch.manual_seed(0)
    model = FAENet(cutoff=cutoff, hidden_channels=32, num_filters=32, num_interactions=2, num_gaussians=20,
                   tag_hidden_channels=8, pg_hidden_channels=8, phys_embeds=False, max_atomic_number=100,
                   regress_forces=None, envelope="polynomial" if smooth else "none", norm="layer" if smooth else "graph")
    fa = FrameAveraging(model, dims=dim, method="all", forces=forces, cutoff=cutoff, periodic=periodic,
                        continuous=continuous)
    return fa.to(dtype).eval()

