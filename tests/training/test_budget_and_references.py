"""Budget-aware schedules and isolated-atom energy references: with optim.max_time_minutes the
warm-up (optim.warmup_fraction) and the cosine follow the elapsed fraction of the budget (the
clock passed to train, here a fake one), so a run ends at its final learning rate within the budget;
trainer.threads is applied and recorded."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import torch

from frameavg.training.config import load_config
from frameavg.training.config_sections import TrainerConfig
from frameavg.training.run import default_threads, read_checkpoint, train
from tiny import ETHANOL, TINY_MODEL

BUDGET_MINUTES = 0.5


class FakeClock(L.Callback):
    """A clock that advances ``step_s`` seconds per training step and stands still otherwise."""

    def __init__(self, step_s: float):
        self.now, self.step_s = 1000.0, step_s

    def __call__(self) -> float:
        return self.now

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.now += self.step_s  # the step takes step_s: the schedule and the timer read the clock after it


def test_a_half_minute_budget_ends_at_the_final_learning_rate(tmp_path):
    lr, floor, warmup = 2e-3, 0.01, 0.1
    clock = FakeClock(step_s=1.0)  # 30 steps fill the 30 s budget, whatever the machine's speed
    config = load_config(None, TINY_MODEL + ETHANOL + [
        "data.max_train=64", "data.val_fraction=0.05", "data.batch_size=8", "optim.max_epochs=100000",
        f"optim.max_time_minutes={BUDGET_MINUTES}", "optim.scheduler=cosine", f"optim.warmup_fraction={warmup}",
        f"optim.lr={lr}", f"optim.min_lr_ratio={floor}", "trainer.log_every_n_steps=1",
        f"run_dir={tmp_path}", "name=budget"])
    result = train(config, clock=clock, callbacks=[clock])
    checkpoint = read_checkpoint(result["checkpoint"])
    with open(tmp_path / "budget" / "logs" / "metrics.csv") as handle:
        rates = [float(row["lr-AdamW"]) for row in csv.DictReader(handle) if row.get("lr-AdamW")]
    # the run stops after the step that reaches the budget (30 one-second steps), not one step
    # later or earlier, in the 4th epoch of 8 steps
    assert len(rates) == 60 * BUDGET_MINUTES and clock.now == 1000.0 + 60 * BUDGET_MINUTES
    assert result["epochs"] == 4
    # step k runs at the rate of the budget fraction k/30: linear warm-up from 0 over the first
    # 10 %, then the cosine down to the floor (max_epochs is far off: the budget leads)
    expected = []
    for k in range(int(60 * BUDGET_MINUTES)):
        progress = k / (60 * BUDGET_MINUTES)
        if progress < warmup:
            expected.append(lr * progress / warmup)
        else:
            cosine = 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))
            expected.append(lr * (floor + (1 - floor) * cosine))
    assert rates == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert checkpoint["frameavg"]["threads"] == 1 and result["threads"] == 1


def test_max_epochs_reached_before_the_budget_still_ends_at_the_final_learning_rate(tmp_path):
    # the shipped *_small configs set both limits; on a fast CPU max_epochs comes first
    lr, floor = 2e-3, 0.01
    config = load_config(None, TINY_MODEL + ETHANOL + [
        "data.max_train=32", "data.val_fraction=0.05", "data.batch_size=8", "optim.max_epochs=6",
        "optim.max_time_minutes=30", "optim.scheduler=cosine", f"optim.lr={lr}", f"optim.min_lr_ratio={floor}",
        "trainer.log_every_n_steps=1", f"run_dir={tmp_path}", "name=epochs_first"])
    result = train(config)
    assert result["epochs"] == 6
    with open(tmp_path / "epochs_first" / "logs" / "metrics.csv") as handle:
        rates = [float(row["lr-AdamW"]) for row in csv.DictReader(handle) if row.get("lr-AdamW")]
    assert len(rates) >= 20 and rates[0] > 0.95 * lr
    assert rates[-1] < lr * (floor + 0.05), rates[-5:]


def test_warmup_in_steps_or_as_a_fraction_not_both():
    import pytest

    from frameavg.errors import ConfigError

    with pytest.raises(ConfigError, match="one of 'optim.warmup_steps' and 'optim.warmup_fraction'"):
        load_config(None, ["optim.warmup_steps=10", "optim.warmup_fraction=0.1"])
    with pytest.raises(ConfigError, match="warmup_fraction"):
        load_config(None, ["optim.warmup_fraction=1.5"])


@pytest.mark.parametrize("cores, load, trainer, threads", [
    (8, 0.0, {"devices": 1, "accelerator": "cpu"}, 8),  # an idle machine: every allowed core
    (8, 2.4, {"devices": 1, "accelerator": "cpu"}, 6),  # less the load average, rounded
    (8, 2.6, {"devices": 1, "accelerator": "cpu"}, 5),
    (8, 2.0, {"devices": 2, "accelerator": "cpu"}, 3),  # the free cores shared by the CPU processes
    (8, 1.0, {"devices": 3, "accelerator": "cpu"}, 2),  # (floor division)
    (8, 2.0, {"devices": 4, "accelerator": "gpu"}, 6),  # GPU processes do not share the CPU count
    (8, 0.0, {"devices": "auto", "accelerator": "cpu"}, 8),  # devices not a number: one process
    (2, 5.0, {"devices": 1, "accelerator": "cpu"}, 1),  # overloaded: at least one thread
    (4, 0.0, {"devices": 64, "accelerator": "cpu"}, 1),
])
def test_default_threads_are_the_free_cores(monkeypatch, cores, load, trainer, threads):
    """The rule of default_threads: (cores in this process's affinity - round(1-minute load)) //
    CPU processes of this node, at least 1."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert default_threads(TrainerConfig.from_dict(trainer)) == threads


def test_isolated_atom_references_from_a_file(tmp_path, real_data):
    """normalize.element_references: FILE takes rMD17's isolated-atom DFT energies as references;
    the residual mean and scale are fitted on what is left."""
    import ase.io
    import pytest

    from frameavg.errors import DataError
    from frameavg.training.normalization import isolated_atom_references

    path = real_data / "rmd17_ethanol" / "isolated_atoms.xyz"
    refs, given = isolated_atom_references(path)
    atoms = {a.numbers[0]: a.get_potential_energy() for a in ase.io.read(path, ":")}
    assert given == set(atoms) >= {1, 6, 8}
    assert all(refs[z] == pytest.approx(e, abs=1e-9) for z, e in atoms.items())
    config = load_config(None, TINY_MODEL + ETHANOL + [
        "data.max_train=16", "data.val_fraction=0.01", "optim.max_epochs=1", f"run_dir={tmp_path}", "name=refs",
        f"normalize.element_references={path}"])
    result = train(config)
    state = read_checkpoint(result["checkpoint"])["state_dict"]
    torch.testing.assert_close(state["normalizer.element_references"][[1, 6, 8]], refs[[1, 6, 8]])
    only_h = tmp_path / "h.xyz"
    ase.io.write(only_h, [a for a in ase.io.read(path, ":") if a.numbers[0] == 1])
    with pytest.raises(DataError, match="no isolated-atom energy for Z = 6, 8"):
        train(load_config(None, TINY_MODEL + ETHANOL + ["data.max_train=16", "data.val_fraction=0.01",
                                                          f"run_dir={tmp_path}", "name=missing",
                                                          f"normalize.element_references={only_h}"]))


def test_train_reports_splits_normaliser_and_precision_without_lightning_chatter(tmp_path, capfd):
    from frameavg.cli.main import main

    overrides = TINY_MODEL + ETHANOL + ["data.max_train=16", "data.val_fraction=0.05", "optim.max_epochs=1",
                                        f"run_dir={tmp_path}", "name=talk"]
    assert main(["train", str(_config_file(tmp_path)), *overrides]) == 0
    out, err = capfd.readouterr()
    assert "frameavg: data: 16 train, 50 val structures (read in" in err
    assert "frameavg: precision 32-true, 1 thread" in err
    assert "frameavg: energy normaliser: mean" in err and "references (eV/atom): H " in err
    for chatter in ("Tip:", "GPU available", "TPU available", "LeafSpec", "Trainer.fit` stopped"):
        assert chatter not in out + err, chatter


def _config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\n")
    return path


def test_train_json_is_one_document_on_stdout_with_the_progress_bar_on(tmp_path, capsys):
    import json

    from frameavg.cli.main import main

    overrides = TINY_MODEL + ETHANOL + ["data.max_train=16", "data.val_fraction=0.05", "optim.max_epochs=1",
                                        "trainer.enable_progress_bar=true", f"run_dir={tmp_path}", "name=json"]
    assert main(["train", str(_config_file(tmp_path)), *overrides, "--json"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["epochs"] == 1 and "Epoch 0" in captured.err  # the bar went to stderr


@pytest.mark.slow
def test_validation_cadence_keeps_validation_under_its_share_of_the_budget(tmp_path):
    """A validation pass as long as the training epoch, and a 10 % share: validation runs every
    ~10 epochs after the first, and never on every epoch."""
    config = load_config(None, TINY_MODEL + ETHANOL + [
        "data.max_train=48", "data.val_fraction=0.5", "data.batch_size=8", "optim.max_epochs=100000",
        "optim.max_time_minutes=0.25", "optim.scheduler=cosine", "optim.max_val_time_fraction=0.1",
        f"run_dir={tmp_path}", "name=cadence"])
    result = train(config)
    with open(tmp_path / "cadence" / "logs" / "metrics.csv") as handle:
        validated = {int(row["epoch"]) for row in csv.DictReader(handle) if row.get("val/loss")}
    epochs = result["epochs"]
    assert epochs >= 8 and 0 in validated
    assert 1 <= len(validated) <= epochs / 3, (sorted(validated), epochs)


def test_validation_cadence_rule():
    from frameavg.training.run import BudgetValidationCadence

    class Trainer:
        check_val_every_n_epoch = 1

    cadence, trainer = BudgetValidationCadence(0.1), Trainer()
    cadence.epoch_start, cadence.last_batch_end, cadence.val_s = 10.0, 12.0, 1.0  # 2 s training, 1 s validation
    cadence.on_train_epoch_end(trainer, None)
    assert trainer.check_val_every_n_epoch == 5  # 1 s of validation per 10 s of training
    cadence.val_s = 0.01
    cadence.on_train_epoch_end(trainer, None)
    assert trainer.check_val_every_n_epoch == 1


def test_init_from_loads_every_matching_tensor_and_reports_the_rest(tmp_path):
    """Fine-tuning a 2-block FAENet from a 1-block run: the shared tensors start at the old values
    (lr ~0 keeps them there), the second block is new, and the record says which is which."""
    base = TINY_MODEL + ETHANOL + ["data.max_train=16", "data.batch_size=8", "optim.max_epochs=1", f"run_dir={tmp_path}"]
    first = train(load_config(None, base + ["name=first"]))
    second = train(load_config(None, base + ["name=second", "model.num_interactions=2", "optim.lr=1e-12",
                                             f"model.init_from={first['checkpoint']}"]))
    record = second["init_from"]
    assert record["loaded"] and record["new"]
    assert all(".interaction_blocks.1." in name for name in record["new"])
    old = read_checkpoint(first["checkpoint"])["state_dict"]
    new = read_checkpoint(second["checkpoint"])["state_dict"]
    # the skip-connection MLP reads every block's output: its shape grows with the depth
    assert record["skipped"] == ["model.mlp_skip_co.weight"]
    assert old["net.model.mlp_skip_co.weight"].shape != new["net.model.mlp_skip_co.weight"].shape
    for name in record["loaded"]:
        if "running_" in name or "num_batches_tracked" in name:  # batch-norm statistics move without a learning rate
            continue
        torch.testing.assert_close(new[f"net.{name}"], old[f"net.{name}"], rtol=0, atol=1e-6, msg=name)
    assert read_checkpoint(second["checkpoint"])["frameavg"]["init_from"]["path"] == first["checkpoint"]


def test_init_from_a_missing_checkpoint_fails_before_the_run(tmp_path):
    import pytest

    from frameavg.errors import ConfigError

    with pytest.raises(ConfigError, match="init_from: checkpoint not found"):
        train(load_config(None, TINY_MODEL + ETHANOL + [f"run_dir={tmp_path}", "model.init_from=nowhere.ckpt"]))
    assert not any(tmp_path.iterdir())


class SleepingSteps(L.Callback):
    """Each training step waits ``seconds`` without using the CPU; counts the steps run."""

    def __init__(self, seconds: float):
        self.seconds, self.steps = seconds, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        import time

        time.sleep(self.seconds)
        self.steps += 1


@pytest.mark.parametrize("budget_clock", ["wall", "cpu"])
def test_the_budget_clock_cpu_counts_only_this_process_s_compute(tmp_path, budget_clock):
    # 2.4 s of budget, steps that each sleep 1 s: the wall clock stops the run by the 3rd step;
    # the CPU clock does not count sleeping (or another process's turn on a shared core), so all
    # 8 steps of the one epoch run (8 tiny steps, the first one's set-up included, cost well under
    # 2.4 s of CPU; 0.6 s, the budget this test had first, was not always enough in a full suite)
    sleeper = SleepingSteps(1.0)
    config = load_config(None, TINY_MODEL + ETHANOL + [
        "data.max_train=64", "data.val_fraction=0.05", "data.batch_size=8", "optim.max_epochs=1",
        "optim.max_time_minutes=0.04", f"optim.budget_clock={budget_clock}", "trainer.threads=1",
        f"run_dir={tmp_path}", "name=clock"])
    train(config, callbacks=[sleeper])
    if budget_clock == "wall":
        assert 1 <= sleeper.steps <= 3
    else:
        assert sleeper.steps == 8
