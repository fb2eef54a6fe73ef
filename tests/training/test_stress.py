"""Stress as a training target and a prediction: EMT-labelled strained copper (energies, forces and
stress from ASE's EMT), a tiny FAENet trained on all three, stress predicted in eV/Å³."""

from __future__ import annotations

import csv

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from frameavg.cli.main import main
from frameavg.training.config import load_config
from frameavg.training.run import train
from tiny import TINY_MODEL


@pytest.fixture(scope="module")
def strained_copper(tmp_path_factory):
    """24 rattled Cu supercells (8 atoms) strained by up to ±4 %, labelled by EMT (synthetic)."""
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(24):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        strain = np.eye(3) + rng.uniform(-0.04, 0.04, size=(3, 3)) * np.array([[1, .3, .3], [.3, 1, .3], [.3, .3, 1]])
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        emt = EMT()
        atoms.calc = SinglePointCalculator(atoms, energy=emt.get_potential_energy(atoms), forces=emt.get_forces(atoms),
                                           stress=emt.get_stress(atoms))
        frames.append(atoms)
    path = tmp_path_factory.mktemp("emt") / "strained_cu.extxyz"
    ase.io.write(path, frames)
    return path


def test_training_on_stress_and_predicting_it(strained_copper, tmp_path, capsys):
    model = [o for o in TINY_MODEL if "regress_forces" not in o] + ["model.regress_forces=null"]
    config = load_config(None, model + [
        f"data.train={strained_copper}", "data.cutoff=4.0", "data.val_fraction=0.25", "data.batch_size=6",
        "targets.forces=true", "targets.stress=true", "loss.stress_weight=10", "optim.max_epochs=3",
        "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", f"run_dir={tmp_path}"])
    result = train(config)
    with open(tmp_path / "run" / "logs" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert any(row.get("train/stress_step") for row in rows)
    val = [float(row["val/stress_mae"]) for row in rows if row.get("val/stress_mae")]
    assert len(val) == 3 and all(np.isfinite(val))
    out = tmp_path / "pred.extxyz"
    assert main(["predict", "--checkpoint", result["checkpoint"], "--data", str(strained_copper), "--out", str(out),
                 "--stress"]) == 0
    predicted = ase.io.read(out, ":")
    reference = ase.io.read(strained_copper, ":")
    assert all(p.get_stress().shape == (6,) for p in predicted)
    spread = np.std([r.get_stress() for r in reference])
    assert spread > 1e-3  # the labels carry stress (eV/Å³)
