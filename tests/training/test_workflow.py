"""End-to-end training workflow on real rMD17 ethanol frames (tiny FAENet, a few steps)."""

import ase.io
import numpy as np
import pytest
import torch

from frameavg.cli.main import main
from frameavg.data import read_structures
from frameavg.data.neighbors import RadiusGraph
from frameavg.data.shipped import shipped_path
from frameavg.errors import ConfigError, FrameavgError
from frameavg.training.config import load_config
from tiny import ETHANOL, TINY_MODEL

from frameavg.evaluation.evaluate import evaluate
from frameavg.training.run import load_task, train

TINY = TINY_MODEL + ETHANOL + ["data.max_train=24", "data.val_fraction=0.01", "data.batch_size=8",
                               "optim.max_epochs=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs")
    config = load_config(None, TINY + [f"run_dir={run_dir}", "name=tiny"])
    return train(config), config


def test_train_writes_checkpoint_and_predictions_agree(trained, tmp_path):
    result, config = trained
    task = load_task(result["checkpoint"])
    structures = [RadiusGraph(4.0)(d) for d in read_structures(shipped_path("rmd17_ethanol/test"))[:20]]
    metrics, pred = evaluate(task, structures)
    assert metrics["energy_mae"] > 0 and metrics["forces_mae"] > 0
    # predict CLI (extxyz, ASE-readable) gives the energies of the Python call
    structures_file = tmp_path / "in.extxyz"
    ase.io.write(structures_file, ase.io.read(shipped_path("rmd17_ethanol/test"), ":20"))
    out = tmp_path / "pred.extxyz"
    assert main(["predict", "--checkpoint", result["checkpoint"], "--data", str(structures_file), "--out", str(out)]) == 0
    energies = np.array([a.get_potential_energy() for a in ase.io.read(out, ":")])
    np.testing.assert_allclose(energies, pred["energy"].numpy(), rtol=0, atol=1e-6)
    npz = tmp_path / "pred.npz"
    assert main(["predict", "--checkpoint", result["checkpoint"], "--data", str(structures_file), "--out", str(npz)]) == 0
    np.testing.assert_allclose(np.load(npz)["energy"], pred["energy"].numpy(), atol=1e-9)


def test_test_command_matches_evaluate(trained, tmp_path, capsys):
    result, _ = trained
    data = tmp_path / "in.extxyz"
    ase.io.write(data, ase.io.read(shipped_path("rmd17_ethanol/test"), ":20"))
    assert main(["test", "--checkpoint", result["checkpoint"], "--data", str(data), "--json"]) == 0
    import json

    reported = json.loads(capsys.readouterr().out)
    task = load_task(result["checkpoint"])
    expected, _ = evaluate(task, [RadiusGraph(4.0)(d) for d in read_structures(data)])
    assert reported == pytest.approx(expected)


def test_bad_checkpoints_and_configs(tmp_path, trained):
    corrupted = tmp_path / "bad.ckpt"
    corrupted.write_bytes(b"not a checkpoint")
    with pytest.raises(FrameavgError, match="cannot read checkpoint safely"):
        load_task(corrupted)
    truncated = tmp_path / "trunc.ckpt"
    truncated.write_bytes(open(trained[0]["checkpoint"], "rb").read()[:1000])
    with pytest.raises(FrameavgError, match="cannot read checkpoint"):
        load_task(truncated)
    other = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(FrameavgError, match="not a frameavg training checkpoint"):
        load_task(other)
    with pytest.raises(ConfigError, match="unknown model"):
        train(load_config(None, TINY + ["model.name=fanet", f"run_dir={tmp_path}"]))
    assert main(["train", "/nonexistent.yaml"]) == 1


def test_missing_labels_for_loss(tmp_path):
    data = tmp_path / "no_forces.extxyz"
    frames = ase.io.read(shipped_path("rmd17_ethanol/train"), ":10")
    for atoms in frames:
        atoms.calc = None
    ase.io.write(data, frames)
    with pytest.raises(FrameavgError, match="missing required label"):
        train(load_config(None, TINY + [f"data.train={data}", f"run_dir={tmp_path}"]))


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, capsys):
    config_file = tmp_path / "diverge.yaml"
    import yaml

    config = load_config(None, TINY + [f"run_dir={tmp_path}", "name=diverge", "optim.lr=1e12", "optim.clip_grad=null",
                                       "optim.max_epochs=5", "trainer.checkpoint_every_n_steps=1"])
    config_file.write_text(yaml.safe_dump(config))
    assert main(["train", str(config_file)]) == 1
    message = capsys.readouterr().err
    assert "non-finite training loss" in message and "Traceback" not in message
    checkpoints = sorted((tmp_path / "diverge" / "checkpoints").glob("step-*.ckpt"))
    assert checkpoints, "no checkpoint was kept"
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


@pytest.mark.parametrize("extra", [
    ["model.regress_forces=direct_with_gradient_target", "loss.gradient_weight=10"],  # FAENet's own gradient
    ["model.regress_forces=direct", "loss.gradient_weight=10", "loss.conservation_weight=1"],  # ours
])
def test_gradient_and_conservation_losses_train(tmp_path, extra):
    result = train(load_config(None, TINY + [f"run_dir={tmp_path}", *extra]))
    import csv

    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")))
    gradient = [float(r["train/gradient_step"]) for r in rows if r.get("train/gradient_step")]
    assert gradient and all(np.isfinite(gradient)) and gradient[0] > 0
    if "loss.conservation_weight=1" in extra:
        assert any(r.get("train/conservation_step") for r in rows)
    assert load_task(result["checkpoint"]) is not None


def test_ema_plateau_and_early_stopping_run(tmp_path):
    """The optimisation options the paper configs use (EMA, reduce-on-plateau, early stopping)."""
    config = load_config(None, TINY + [f"run_dir={tmp_path}", "optim.ema_decay=0.9", "optim.scheduler=plateau",
                                       "optim.early_stopping_patience=1", "optim.max_epochs=2"])
    result = train(config)
    checkpoint = torch.load(result["checkpoint"], map_location="cpu", weights_only=True)
    assert any("EMAWeightAveraging" in name or "WeightAveraging" in name for name in checkpoint["callbacks"])
    assert any("EarlyStopping" in name for name in checkpoint["callbacks"])
    assert checkpoint["lr_schedulers"][0]["mode"] == "min"  # ReduceLROnPlateau state
    assert load_task(result["checkpoint"]) is not None


def test_test_takes_several_files_and_predict_reports_metrics(trained, tmp_path, capsys):
    """One model load for several --data files (a metrics table per file, {"files": ...} in JSON,
    each equal to that file on its own); predict prints metrics when the data holds labels."""
    import json

    result, _ = trained
    frames = ase.io.read(shipped_path("rmd17_ethanol/test"), ":12")
    first, second = tmp_path / "a.extxyz", tmp_path / "b.extxyz"
    ase.io.write(first, frames[:5])
    ase.io.write(second, frames[5:])
    assert main(["test", "--checkpoint", result["checkpoint"], "--data", str(first), str(second), "--json"]) == 0
    both = json.loads(capsys.readouterr().out)["files"]
    assert set(both) == {str(first), str(second)}
    for path in (first, second):
        assert main(["test", "--checkpoint", result["checkpoint"], "--data", str(path), "--json"]) == 0
        alone = json.loads(capsys.readouterr().out)
        assert alone["energy_mae"] == pytest.approx(both[str(path)]["energy_mae"], rel=1e-6)
        assert alone["forces_rmse_meV_per_A"] == pytest.approx(both[str(path)]["forces_rmse_meV_per_A"], rel=1e-6)
    assert main(["predict", "--checkpoint", result["checkpoint"], "--data", str(first),
                 "--out", str(tmp_path / "p.extxyz")]) == 0
    out = capsys.readouterr().out
    assert "metrics against the labels" in out and "energy_mae" in out


def test_learning_curve_has_loss_and_physical_mae_panels(trained):
    """The learning curve keeps normalised losses and validation MAE in meV / meV/Å on separate
    axes (both series logged in metrics.csv)."""
    import csv
    from pathlib import Path

    import matplotlib.image

    from frameavg.training.plots import learning_curve

    result, _ = trained
    plot = learning_curve(Path(result["run_dir"]))
    height, width = matplotlib.image.imread(plot).shape[:2]
    assert width > 1.8 * height  # two panels side by side
    with open(Path(result["run_dir"]) / "logs" / "metrics.csv") as handle:
        columns = set(next(csv.reader(handle)))
    assert {"val/loss", "val/energy_mae_meV", "val/forces_mae_meV_per_A"} <= columns
