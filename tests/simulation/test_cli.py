"""`frameavg relax` and `frameavg md` end to end with trained checkpoints on shipped data: IS2RS
metrics on the OC20 samples, MD summaries, sharding over two processes, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import ase.io
import numpy as np
import pytest
from ase import Atoms

from frameavg.cli.main import main
from frameavg.data.shipped import shipped_path
from frameavg.training.config import load_config
from frameavg.training.run import train
from tiny import ETHANOL, TINY_MODEL

OC20 = ["model.name=faenet", "model.hidden_channels=32", "model.num_filters=16", "model.num_gaussians=8",
        "model.num_interactions=1", "model.tag_hidden_channels=8", "model.pg_hidden_channels=8",
        "model.phys_embeds=false", "model.regress_forces=null", "model.cutoff=5.0", "frames.dims=2D",
        "data.train=shipped:oc20_is2re/bs8", "data.val=shipped:oc20_is2re/bs3", "data.keys={energy: y_init, forces: force_init}", "data.cutoff=5.0", "data.max_neighbors=20", "data.batch_size=4",
        "targets.forces=true", "optim.max_epochs=2", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def oc20_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs")
    return train(load_config(None, OC20 + [f"run_dir={run_dir}"]))["checkpoint"]


@pytest.fixture(scope="module")
def ethanol_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs")
    overrides = [o for o in TINY_MODEL if "regress_forces" not in o] + ["model.regress_forces=null"] + ETHANOL + [
        "data.max_train=64", "data.val_fraction=0.05", "optim.max_epochs=2", f"run_dir={run_dir}"]
    return train(load_config(None, overrides))["checkpoint"]


def test_relax_oc20_samples_reports_is2rs_metrics(oc20_checkpoint, tmp_path, capsys):
    out = tmp_path / "relaxed.extxyz"
    assert main(["relax", "--checkpoint", oc20_checkpoint, "--data", str(shipped_path("oc20_is2re/bs3")),
                 "--out", str(out), "--optimizer", "lbfgs", "--steps", "15", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["structures"] == 3 and summary["converged"] + summary["not_converged"] == 3
    metrics = summary["is2rs"]
    assert metrics["structures"] == 3 and metrics["energy_reference"] == "y_relaxed"
    assert 0.0 <= metrics["average_distance_within_threshold"] <= 1.0 and metrics["mean_distance"] > 0
    assert np.isfinite(metrics["relaxed_energy_mae"])
    relaxed = ase.io.read(out, ":")
    assert len(relaxed) == 3 and all(a.info["status"] in ("converged", "not converged") for a in relaxed)
    assert all(np.isfinite(a.get_potential_energy()) for a in relaxed)


@pytest.mark.slow
def test_relax_sharded_over_two_processes_equals_one(oc20_checkpoint, tmp_path):
    """--devices 2 (Lightning's DDP launcher, gloo on CPU): each rank relaxes its shard; the merged
    output, in input order, equals a single-process run."""
    outputs = {}
    for devices in (1, 2):
        out = tmp_path / f"relaxed{devices}.extxyz"
        command = [sys.executable, "-m", "frameavg.cli.main", "relax", "--checkpoint", oc20_checkpoint,
                   "--data", str(shipped_path("oc20_is2re/bs8")), "--out", str(out), "--steps", "4",
                   "--devices", str(devices), "--json"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        assert json.loads(done.stdout)["processes"] == devices
        outputs[devices] = ase.io.read(out, ":")
    assert len(outputs[1]) == len(outputs[2]) == 8
    for a, b in zip(outputs[1], outputs[2]):
        assert a.get_chemical_formula() == b.get_chemical_formula()
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
        assert a.info["steps"] == b.info["steps"]


@pytest.mark.slow
def test_md_nve_reports_drift_and_stability(ethanol_checkpoint, tmp_path, capsys):
    out = tmp_path / "md.extxyz"
    assert main(["md", "--checkpoint", ethanol_checkpoint, "--data", str(shipped_path("rmd17_ethanol/test")),
                 "--index", "3", "--ensemble", "nve", "--temperature", "300", "--timestep", "0.25", "--steps", "100",
                 "--every", "10", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 100 and summary["recorded_snapshots"] == 11 and summary["steps_per_s"] > 0
    assert summary["drift_meV_per_atom_per_ps"] is not None and summary["stability_fs"] is None
    assert 1 <= summary["neighbor_rebuilds"] <= summary["calculator_calls"]
    frames = ase.io.read(out, ":")
    assert [f.info["step"] for f in frames] == list(range(0, 101, 10))
    # every step counts: the range bounds the recorded excursion, the jumps bound the range
    n = len(frames[0])
    assert summary["energy_range_meV_per_atom"] >= summary["max_excursion_meV_per_atom"]
    assert summary["max_step_jump_meV"] * summary["steps"] >= summary["energy_range_meV_per_atom"] * n > 0
    assert main(["md", "--checkpoint", ethanol_checkpoint, "--data", str(shipped_path("rmd17_ethanol/test")),
                 "--steps", "10", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "NVE drift" in text and "largest one-step jump" in text and "meV/atom)" in text


@pytest.mark.parametrize("ensemble", ["langevin", "bussi"])
def test_md_thermostats_run(ethanol_checkpoint, tmp_path, capsys, ensemble):
    assert main(["md", "--checkpoint", ethanol_checkpoint, "--data", str(shipped_path("rmd17_ethanol/test")),
                 "--ensemble", ensemble, "--steps", "20", "--every", "5", "--out", str(tmp_path / "md.extxyz"),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ensemble"] == ensemble and summary["drift_meV_per_atom_per_ps"] is None


def _one_line(capsys, code):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_bad_inputs_of_relax_and_md(ethanol_checkpoint, tmp_path, capsys):
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    code = main(["relax", "--checkpoint", ethanol_checkpoint, "--data", str(empty), "--out", str(tmp_path / "o.extxyz")])
    assert "empty.extxyz: file is empty" in _one_line(capsys, code)
    no_cell = tmp_path / "no_cell.extxyz"
    no_cell.write_text('2\nProperties=species:S:1:pos:R:3 pbc="T T T"\nC 0 0 0\nO 0 0 1.2\n')
    code = main(["relax", "--checkpoint", ethanol_checkpoint, "--data", str(no_cell), "--out", str(tmp_path / "o.extxyz")])
    assert "no_cell.extxyz, structure 0: singular cell for periodic axes" in _one_line(capsys, code)
    code = main(["md", "--checkpoint", ethanol_checkpoint, "--data", str(shipped_path("rmd17_ethanol/isolated_atoms")),
                 "--index", "9", "--out", str(tmp_path / "md.extxyz")])
    assert "--index 9: the file has" in _one_line(capsys, code)


def test_relax_cell_on_molecules_and_unseen_elements(ethanol_checkpoint, tmp_path, capsys):
    """--relax-cell on a molecule is a per-structure status; an element outside the training set
    (N: ethanol has H, C, O) warns once, naming it."""
    data = tmp_path / "mixed.extxyz"
    ase.io.write(data, [ase.io.read(shipped_path("rmd17_ethanol/test"), 0), Atoms("NH3", positions=[
        [0, 0, 0], [0.94, 0, -0.38], [-0.47, 0.81, -0.38], [-0.47, -0.81, -0.38]])])
    assert main(["relax", "--checkpoint", ethanol_checkpoint, "--data", str(data), "--out", str(tmp_path / "o.extxyz"),
                 "--relax-cell", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["failed"] == 2
    assert "structure 0: failed: relax_cell needs a structure periodic" in captured.err
    assert main(["relax", "--checkpoint", ethanol_checkpoint, "--data", str(data), "--out", str(tmp_path / "o.extxyz"),
                 "--steps", "2"]) == 0
    err = capsys.readouterr().err
    assert "frameavg: warning: structure 1: element(s) N never appear in this model's training data" in err
