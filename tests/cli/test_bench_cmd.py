"""`frameavg bench`: records of the documented shape from real batches, ratios, errors; accuracy set-up."""

import json
from pathlib import Path

import pytest
import torch

from frameavg.cli.main import main
from frameavg.evaluation.benchmark import (
    ACCURACY_DATASETS,
    BENCH_MODELS,
    DATASETS,
    accuracy_config,
    load_batch,
    model_setup,
)
from frameavg.models import MODELS

RECORD_KEYS = {"model", "config", "dataset", "mode", "graphs_per_s", "params", "peak_mem_mb"}


def test_json_records_for_faenet_with_and_without_all_frames(capsys):
    code = main(["bench", "--models", "faenet,faenet-fa", "--configs", "equal-width", "--min-seconds", "0",
                 "--max-steps", "1", "--threads", "1", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    records = json.loads(out)
    assert all(RECORD_KEYS <= set(r) for r in records)
    keys = {(r["model"], r["dataset"], r["mode"]) for r in records}
    assert keys == {("faenet", d, m) for d in ("qm9", "ethanol") for m in ("inference", "train")} | {
        ("faenet-fa", d, "inference") for d in ("qm9", "ethanol")}
    for r in records:
        assert r["config"] == "equal-width" and r["graphs_per_s"] > 0 and r["peak_mem_mb"] >= 0
        assert r["params"] == records[0]["params"] > 100_000
        if r["model"] == "faenet":
            assert r["ratio_to_faenet"] == 1.0
        else:  # eight frames cost more than one random frame
            assert r["ratio_to_faenet"] < 1.0


def test_batches_are_the_documented_real_data():
    for name, (_, count, _, forces) in DATASETS.items():
        batch = load_batch(name, 6.0, 40)
        assert batch.num_graphs == count
        assert batch.energy.dtype == torch.float32 and torch.isfinite(batch.energy).all()
        assert batch.edge_index.shape[1] > 0 and ("forces" in batch) == forces
    assert load_batch("oc20", 6.0, 40).cell.abs().sum() > 0  # periodic slabs


@pytest.mark.parametrize("model", [m for m in BENCH_MODELS if m in MODELS and m != "faenet"])
def test_baseline_configs_follow_the_comparisons(model):
    """Equal width means 128 channels, 4 blocks and a 6 Å cutoff for every registered baseline."""
    _, kwargs, frames = model_setup(model, "equal-width")
    assert frames is None
    assert (kwargs["hidden_channels"], kwargs["num_interactions"], kwargs["cutoff"]) == (128, 4, 6.0)
    _, paper, _ = model_setup(model, "paper")
    assert paper != kwargs


def test_unknown_names_are_one_line_errors(capsys):
    assert main(["bench", "--models", "schnett"]) == 1
    assert "unknown model 'schnett'" in capsys.readouterr().err
    assert main(["bench", "--configs", "papers"]) == 1
    assert "unknown configuration papers" in capsys.readouterr().err


@pytest.mark.slow
def test_accuracy_mode_trains_through_the_workflow(tmp_path, capsys):
    assert set(ACCURACY_DATASETS) == {"ethanol", "qm9"}
    config = accuracy_config("faenet", "qm9", 0.1, str(tmp_path))
    assert config["frames"] == {"frames": "3D", "train": "stochastic", "eval": "all"}
    assert config["model"]["hidden_channels"] == 128 and config["optim"]["scheduler"] == "plateau"
    code = main(["bench", "--accuracy", "--models", "faenet", "--datasets", "qm9", "--minutes", "0.1",
                 "--run-dir", str(tmp_path), "--json"])
    assert code == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert record["mode"] == "accuracy" and record["epochs"] >= 1
    # the record is the test evaluation of the run (learning itself is tested in tests/training)
    written = json.loads((Path(record["run_dir"]) / "test_metrics.json").read_text())
    assert record["energy_mae"] == written["model"]["energy_mae"] > 0
    assert record["baseline_energy_mae"] == written["baseline"]["energy_mae"]


def test_a_failing_case_becomes_an_error_record():
    """A case that fails in its process (here a model unknown to the registry) is reported, not raised."""
    from frameavg.evaluation.benchmark import BenchCase, _run_isolated, format_table

    record = _run_isolated(BenchCase("no-such-model", "paper", "oc20"))
    assert record["graphs_per_s"] is None and "unknown model 'no-such-model'" in record["error"]
    assert "failed: ConfigError" in format_table([record])
