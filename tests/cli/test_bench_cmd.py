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

RECORD_KEYS = {"model", "config", "dataset", "mode", "precision", "graphs_per_s", "params"}


@pytest.mark.slow
def test_json_records_for_faenet_with_and_without_all_frames(capsys):
    """Interleaved rounds, ratios as medians of per-round ratios with their spread, a bf16 column
    (on a CPU without bf16 instructions it runs as float32, and says so)."""
    from frameavg.precision import cpu_has_bf16

    code = main(["bench", "--models", "faenet,faenet-fa", "--configs", "equal-width", "--min-seconds", "0",
                 "--max-steps", "2", "--rounds", "2", "--threads", "1", "--precision", "32-true,bf16-mixed",
                 "--no-memory", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    records = json.loads(out)
    assert all(RECORD_KEYS <= set(r) for r in records)
    keys = {(r["model"], r["dataset"], r["mode"], r["precision"]) for r in records}
    assert keys == {("faenet", d, m, p) for d in ("qm9", "ethanol") for m in ("inference", "train")
                    for p in ("32-true", "bf16-mixed")} | {
        ("faenet-fa", d, "inference", p) for d in ("qm9", "ethanol") for p in ("32-true", "bf16-mixed")}
    for r in records:
        assert r["config"] == "equal-width" and r["graphs_per_s"] > 0 and "peak_mem_mb" not in r
        assert r["params"] == records[0]["params"] > 100_000
        assert len(r["round_seconds"]) == 2
        low, high = r["ratio_to_faenet_spread"]
        assert low <= r["ratio_to_faenet"] <= high
        if r["model"] == "faenet":
            assert r["ratio_to_faenet"] == 1.0
        else:  # eight frames cost more than one random frame
            assert r["ratio_to_faenet"] < 1.0
        if r["precision"] == "bf16-mixed":
            assert r["precision_used"] == ("bf16-mixed" if cpu_has_bf16() else "32-true")
            assert r["ratio_to_32"] > 0
        else:
            assert "ratio_to_32" not in r


def test_memory_pass_measures_one_case():
    """The memory pass's measurement (run here in-process; the CLI runs it in a fresh one)."""
    from frameavg.evaluation.benchmark import BenchCase, run_case

    threads = torch.get_num_threads()  # run_case sets the thread count of its (normally fresh) process
    try:
        record = run_case(BenchCase("faenet", "equal-width", "qm9", min_seconds=0.0, max_steps=1, threads=1))
    finally:
        torch.set_num_threads(threads)
    assert RECORD_KEYS <= set(record) and record["peak_mem_mb"] >= 0 and record["graphs_per_s"] > 0
    assert record["precision_used"] == "32-true"


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
    assert {key: config["frames"][key] for key in ("dims", "train", "eval")} == {
        "dims": "3D", "train": "stochastic", "eval": "all"}
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


@pytest.mark.slow
def test_extension_models_bench_beside_faenet(capsys):
    """Ewald and learned-frame variants run in the same interleaved rounds as FAENet (paper batch:
    periodic Ewald on the OC20 slabs) and carry their extension in the model they build."""
    code = main(["bench", "--models", "faenet,faenet-ewald,faenet-learned", "--configs", "paper", "--min-seconds",
                 "0", "--max-steps", "1", "--rounds", "1", "--threads", "1", "--inference-only", "--no-memory",
                 "--json"])
    assert code == 0
    records = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(records) == {"faenet", "faenet-ewald", "faenet-learned"}
    assert records["faenet-ewald"]["params"] > records["faenet"]["params"]  # the Ewald blocks
    assert records["faenet-learned"]["params"] > records["faenet"]["params"]  # the canonicaliser
    assert all(r["graphs_per_s"] > 0 and r["ratio_to_faenet"] > 0 for r in records.values())
    _, kwargs, frames = model_setup("schnet-ewald", "equal-width")
    assert kwargs["ewald"] == {} and frames is None
    _, _, frames = model_setup("faenet-learned", "equal-width")
    assert (frames["train"], frames["eval"]) == ("learned", "learned")
