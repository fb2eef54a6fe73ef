"""Real structures, reference pieces and a short training run shared by the baseline model tests."""

from __future__ import annotations

import csv
from pathlib import Path

import ase.db
import ase.io
import torch
from ase.build import make_supercell
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph
from frameavg.evaluation.symmetry import model_inputs
from frameavg.training.config import load_config
from frameavg.training.run import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def molecules(real_data, dtype: torch.dtype) -> list:
    """4 QM9 molecules and 2 rMD17 ethanol frames as input-only ``Data``."""
    atoms = (ase.io.read(real_data / "qm9_subset" / "qm9_random2000_seed0.extxyz", ":4")
             + ase.io.read(real_data / "rmd17_ethanol" / "train.xyz", ":2"))
    return [model_inputs(atoms_to_data(a, dtype=dtype)) for a in atoms]


def slabs(real_data, dtype: torch.dtype, count: int = 3) -> list:
    """The first ``count`` OC20 IS2RE slabs (65, 172, 24 atoms; periodic in x, y and z)."""
    atoms = ase.io.read(real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz", f":{count}")
    return [model_inputs(atoms_to_data(a, dtype=dtype)) for a in atoms]


def small_oxide(real_data):
    """A bulk rutile-type BO2 cell (6 atoms, edges 3.1-4.5 Å): within 5 Å every atom sees several
    images of the same atoms, itself included."""
    return next(ase.db.connect(real_data / "oxides_eos" / "oxides.db").select(limit=1)).toatoms()


def as_batch(structures, cutoff: float, max_neighbors: int | None = None) -> Batch:
    graph = RadiusGraph(cutoff, max_neighbors)
    return Batch.from_data_list([graph(d.clone()) for d in structures])


def all_pairs_within(pos: torch.Tensor, batch: torch.Tensor, cutoff: float) -> torch.Tensor:
    """[2, E] edges j -> i of all pairs of a graph closer than ``cutoff`` (PyG's ``radius_graph``
    without a neighbour cap, by brute force)."""
    close = (torch.cdist(pos, pos) < cutoff) & (batch[:, None] == batch[None, :])
    close.fill_diagonal_(False)
    return close.nonzero().T.contiguous()


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Perturb every parameter so no block is left at an initial zero or identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


def train_epoch_losses(config_name: str, overrides: list[str], tmp_path, epochs: int = 4) -> tuple[dict, list[float]]:
    """Train ``configs/<config_name>.yaml`` on 40 shipped ethanol frames (``overrides`` last, e.g. a
    tiny model) for ``epochs`` epochs; the run's result and its per-epoch training losses."""
    config = load_config(CONFIGS / f"{config_name}.yaml", [
        "data.test=null", "data.max_train=40", "data.batch_size=8", "data.val_fraction=0.1",
        f"optim.max_epochs={epochs}", "optim.lr=3e-3", "optim.warmup_steps=0", "optim.max_time_minutes=null",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", f"run_dir={tmp_path}", *overrides,
    ])
    result = train(config)
    with open(Path(result["run_dir"]) / "logs" / "metrics.csv") as handle:
        losses = [float(r["train/loss_epoch"]) for r in csv.DictReader(handle) if r.get("train/loss_epoch")]
    return result, losses


def assert_supercell_extensive(model, real_data, atol: float) -> None:
    """The 2x2x2 supercell of ``small_oxide`` has 8 times its energy and the same forces per atom
    (``model`` float64)."""
    oxide = small_oxide(real_data)
    cell = model_inputs(atoms_to_data(oxide, dtype=torch.float64))
    supercell = model_inputs(atoms_to_data(make_supercell(oxide, 2 * torch.eye(3).numpy()), dtype=torch.float64))
    one, eight = model(as_batch([cell], 5.0)), model(as_batch([supercell], 5.0))
    torch.testing.assert_close(eight["energy"], 8 * one["energy"], atol=atol, rtol=0)
    torch.testing.assert_close(eight["forces"][: len(oxide)], one["forces"], atol=atol, rtol=0)


def assert_rejects_bad_atoms(model, real_data, max_z: int) -> Batch:
    """A float32 model raises clear DataErrors for an element beyond its table (Z = max_z + 1) and
    for float64 positions; returns the valid float32 batch (2 molecules) it checked them on."""
    import pytest

    from frameavg.errors import DataError

    batch = as_batch(molecules(real_data, torch.float32)[:2], cutoff=5.0)
    heavy = batch.clone()
    heavy.atomic_numbers = heavy.atomic_numbers.clone()
    heavy.atomic_numbers[0] = max_z + 1
    with pytest.raises(DataError, match=rf"atomic number {max_z + 1} \(\w+\): \w+ embeds Z = 1\.\.{max_z}"):
        model(heavy)
    with pytest.raises(DataError, match="float64 but the model is torch.float32"):
        model(as_batch(molecules(real_data, torch.float64)[:1], cutoff=5.0))
    return batch


def assert_frame_averaging_changes_nothing(model, real_data, dtype: torch.dtype, tolerances: dict,
                                           max_neighbors: int | None = None) -> None:
    """FrameAveraging (3D, all frames) around an already invariant model stays invariant (under
    rotations, reflections, translations, with ``tolerances`` for assert_symmetric) and predicts
    the model's own energies, on 3 molecules and the last OC20 slab."""
    from frameavg.evaluation.testing import assert_symmetric
    from frameavg.frames import FrameAveraging

    averaged = FrameAveraging(model, dims="3D", method="all").eval()
    structures = molecules(real_data, dtype)[:3] + slabs(real_data, dtype)[2:]
    assert_symmetric(averaged, structures, cutoff=5.0, max_neighbors=max_neighbors,
                     checks=("rotation", "reflection", "translation"), **tolerances)
    batch = as_batch(structures, cutoff=5.0, max_neighbors=max_neighbors)
    torch.testing.assert_close(averaged(batch)["energy"], model(batch)["energy"],
                               **({"atol": 1e-4, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 0}))
