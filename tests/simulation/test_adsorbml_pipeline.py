"""The AdsorbML pipeline on the shipped EMT dense folder: with EMT itself as the "model" it must
find every ground-truth minimum; with a trained FAENet it runs end to end from the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from frameavg.data.lmdb_store import write_lmdb
from frameavg.data.readers import read_structures
from frameavg.data.shipped import shipped_path
from frameavg.errors import DataError
from frameavg.simulation.adsorbml import run_adsorbml

FOLDER = shipped_path("emt_dense")


@pytest.mark.slow
def test_emt_as_the_model_recovers_the_ground_truth():
    """The ML relaxations are the ground-truth ones (same engine, optimiser and fmax), so every
    strategy succeeds, the relaxed-energy MAE is ~0 and ML-only costs one call per system."""
    from ase.calculators.emt import EMT

    from frameavg.data.adsorption import read_manifest

    report = run_adsorbml(EMT(), FOLDER, splits=["ood_both", "id"], ks=(1, 3), steps=500)  # as the ground truth
    manifest = {s["system"]: s for s in read_manifest(FOLDER)["systems"]}
    for split in ("ood_both", "id"):
        info = report["splits"][split]
        assert info["relaxed_energy_mae"] < 5e-3 and info["adwt"] > 0.95, info
        rates = info["success"]
        for strategy in ("ml_only", "sp@1", "sp@3", "rx@1", "rx@3"):
            assert rates[strategy]["success_rate"] == 1.0, (split, strategy, rates[strategy])
        systems = [s for s in report["systems"] if s["split"] == split]
        brute_force = sum(manifest[s["system"]]["ground_truth_calls"] for s in systems)
        assert rates["ml_only"]["gt_calls"] == len(systems)
        assert rates["ml_only"]["speedup"] == pytest.approx(brute_force / len(systems))
        assert rates["sp@3"]["gt_calls"] == 3 * len(systems)
        for s in systems:
            assert s["ml_best"] == pytest.approx(s["gt_min"], abs=5e-3)


def _copy_with(tmp_path, split, keep):
    folder = tmp_path / "dense_copy"
    shutil.copytree(FOLDER, folder)
    datas = read_structures(FOLDER / "dense" / f"{split}.lmdb")
    write_lmdb([keep(d) for d in datas if keep(d) is not None], folder / "dense" / f"{split}.lmdb")
    return folder


def test_a_system_with_one_placement_is_refused(tmp_path):
    folder = _copy_with(tmp_path, "ood_both", lambda d: d if int(d.placement) == 0 else None)
    from ase.calculators.emt import EMT

    with pytest.raises(DataError, match="fewer than 2 placements"):
        run_adsorbml(EMT(), folder, splits=["ood_both"])


def test_placements_without_tags_are_refused(tmp_path):
    def untagged(data):
        data = data.clone()
        del data.tags
        return data

    folder = _copy_with(tmp_path, "ood_both", untagged)
    from ase.calculators.emt import EMT

    with pytest.raises(DataError, match="lacks tags"):
        run_adsorbml(EMT(), folder, splits=["ood_both"])


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A small FAENet trained for 20 epochs on the shipped training frames (Cu and Ag only): a
    count of epochs, not seconds, so that the model, and the screening, do not depend on the
    machine's speed or load."""
    from frameavg.training.config import load_config
    from frameavg.training.run import train

    run_dir = tmp_path_factory.mktemp("emt_dense_run")
    config = load_config("configs/emt_dense.yaml", [
        "model.hidden_channels=64", "model.num_filters=32", "model.num_interactions=2", "model.num_gaussians=16",
        "optim.max_time_minutes=null", "optim.max_epochs=20", "data.test=null", "trainer.enable_progress_bar=false", "trainer.threads=1",
        f"run_dir={run_dir}", "name=tiny"])
    return train(config)["checkpoint"]


@pytest.mark.slow
def test_the_shipped_demo_runs_from_the_cli_and_warns_about_unseen_elements(trained_checkpoint):
    """`frameavg adsorbml` on every split of the shipped folder: the table, --json, and a warning
    for Pt, which the training systems (Cu, Ag) never contain."""
    result = subprocess.run([sys.executable, "-m", "frameavg.cli.main", "adsorbml", "--checkpoint", trained_checkpoint,
                             "--data", "shipped:emt_dense", "--k", "1,2", "--steps", "60", "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert "Pt never appear" in result.stderr
    assert set(report["splits"]) == {"id", "ood_ads", "ood_cat", "ood_both"}
    for info in report["splits"].values():
        assert info["placements"] == 7 * info["systems"]
        for strategy in ("ml_only", "sp@1", "sp@2", "rx@1", "rx@2"):
            figures = info["success"][strategy]
            assert 0.0 <= figures["success_rate"] <= 1.0 and figures["systems"] == info["systems"]
            assert figures["gt_calls"] > 0 and figures["speedup"] > 0
        assert info["success"]["sp@2"]["successes"] >= info["success"]["sp@1"]["successes"]
        assert info["success"]["rx@2"]["successes"] >= info["success"]["rx@1"]["successes"]
        assert info["relaxed_energy_mae"] >= 0 and 0 <= info["adwt"] <= 1
    assert report["all"]["ml_only"]["systems"] == 8  # every non-training system
