"""trainer.precision: bf16-mixed trains under autocast (or falls back to 32-true, with a warning,
on a CPU without bf16 instructions), 64-true trains in float64, and checkpoints record it; the
predict/test/relax commands take --precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frameavg import precision as precision_module
from frameavg.cli.main import main
from frameavg.data.shipped import shipped_path
from frameavg.errors import ConfigError
from frameavg.training.config import load_config
from frameavg.training.run import load_task, read_checkpoint, train
from tiny import ETHANOL, TINY_MODEL

TINY = TINY_MODEL + ETHANOL + ["data.max_train=16", "data.val_fraction=0.01", "data.batch_size=8",
                               "optim.max_epochs=1", "data.test=shipped:rmd17_ethanol/test", "data.max_train=16"]


def _train(tmp_path, name, precision):
    config = load_config(None, TINY + [f"run_dir={tmp_path}", f"name={name}", f"trainer.precision={precision}"])
    return train(config)


def test_resolve_names_aliases_and_the_cpu_fallback(monkeypatch):
    resolve = precision_module.resolve
    assert resolve("64").dtype == torch.float64 and resolve("32-true").autocast is None
    with pytest.raises(ConfigError, match="CUDA"):
        resolve("16-mixed", "cpu")
    with pytest.raises(ConfigError, match="not supported"):
        resolve("bf16-true")
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve("half")
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="falls back to 32-true"):
        fallen = resolve("bf16-mixed", "cpu")
    assert (fallen.name, fallen.autocast, fallen.fallback is not None) == ("32-true", None, True)
    assert resolve("bf16-mixed", "cpu", allow_emulated=True).autocast == torch.bfloat16
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    used = resolve("bf16-mixed", "cpu")
    assert (used.name, used.autocast, used.fallback) == ("bf16-mixed", torch.bfloat16, None)
    assert used.record("bf16") == {"requested": "bf16-mixed", "used": "bf16-mixed", "fallback": None}


def test_bf16_training_runs_and_the_checkpoint_records_it(tmp_path, monkeypatch):
    """Forced onto the bf16 path (emulated here when the CPU lacks bf16), a training run is finite
    and its checkpoint says which precision it used."""
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    result = _train(tmp_path, "bf16", "bf16-mixed")
    record = read_checkpoint(result["checkpoint"])["frameavg"]["precision"]
    assert record == {"requested": "bf16-mixed", "used": "bf16-mixed", "fallback": None}
    assert np.isfinite(result["test"]["energy_mae"]) and np.isfinite(result["test"]["forces_mae"])
    assert load_task(result["checkpoint"]).precision_record == record


def test_bf16_falls_back_with_a_warning_without_bf16_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    with pytest.warns(UserWarning, match="falls back to 32-true"):
        result = _train(tmp_path, "fallback", "bf16-mixed")
    record = read_checkpoint(result["checkpoint"])["frameavg"]["precision"]
    assert record["requested"] == "bf16-mixed" and record["used"] == "32-true" and "bfloat16" in record["fallback"]
    assert result["test_weights"] == "last"  # the end-of-training test says which weights it used


def test_64_true_trains_in_float64_and_predict_takes_precision(tmp_path, capsys):
    result = _train(tmp_path, "f64", "64-true")
    task = load_task(result["checkpoint"])
    assert next(task.net.parameters()).dtype == torch.float64
    assert read_checkpoint(result["checkpoint"])["frameavg"]["precision"]["used"] == "64-true"
    data = str(shipped_path("rmd17_ethanol/test"))
    energies = {}
    for precision in ("64-true", "32-true"):
        out = tmp_path / f"pred-{precision}.extxyz"
        assert main(["predict", "--checkpoint", result["checkpoint"], "--data", data, "--out", str(out),
                     "--precision", precision, "--batch-size", "200"]) == 0
        import ase.io

        energies[precision] = np.array([a.get_potential_energy() for a in ase.io.read(out, ":")])
    difference = np.abs(energies["64-true"] - energies["32-true"]).max()
    assert 0 < difference < 1e-3  # float32 rounding of the same weights, eV
    assert main(["predict", "--checkpoint", result["checkpoint"], "--data", data, "--out", str(tmp_path / "x.extxyz"),
                 "--precision", "16-mixed"]) == 1
    assert "needs a CUDA device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["predict", "--checkpoint", result["checkpoint"], "--data", data, "--out",
                     str(tmp_path / "x.extxyz"), "--device", "cuda"]) == 1
        err = capsys.readouterr().err
        assert "no CUDA device is available" in err and "Traceback" not in err
