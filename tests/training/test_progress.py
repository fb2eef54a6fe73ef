"""Training progress: validation figures labelled by their epoch, bounded lines in a log file."""

import re
from types import SimpleNamespace

from frameavg.training.config import load_config
from frameavg.training.progress import EpochLabelledBar, LogProgress, label_validation, progress_bar
from tiny import ETHANOL, TINY_MODEL


def test_validation_figures_are_labelled_by_epoch_or_hidden():
    metrics = {"train/loss_step": 1.0, "val/energy_mae_meV": 5.0, "v_num": 0}
    assert label_validation(metrics, None) == {"train/loss_step": 1.0}
    assert label_validation(metrics, 3) == {"train/loss_step": 1.0, "val@3/energy_mae_meV": 5.0}


def test_a_log_gets_one_line_per_interval_within_an_epoch(capsys):
    now = [0.0]
    bar = LogProgress(interval=10.0, clock=lambda: now[0])
    trainer = SimpleNamespace(current_epoch=0, global_step=0, progress_bar_metrics={"train/loss_step": 0.5},
                              loggers=[], num_training_batches=1000, sanity_checking=False,
                              max_epochs=1, max_steps=-1)
    bar._trainer = trainer
    bar.on_train_epoch_start(trainer, None)
    for step in range(1000):  # one step per 0.1 s: 100 s
        now[0] += 0.1
        trainer.global_step = step + 1
        bar.on_train_batch_end(trainer, None, None, None, step)
    bar.on_train_epoch_end(trainer, None)
    lines = capsys.readouterr().err.splitlines()
    assert 10 <= len(lines) <= 11
    assert lines[-1] == "Epoch 0 done, step 1000: train/loss_step 0.5"


def test_the_bar_is_tqdm_on_a_terminal_and_lines_in_a_log():
    terminal = SimpleNamespace(isatty=lambda: True)
    assert isinstance(progress_bar(terminal), EpochLabelledBar)
    assert isinstance(progress_bar(SimpleNamespace(isatty=lambda: False)), LogProgress)


def test_a_training_log_has_a_line_per_epoch_naming_the_validation_epoch(tmp_path, capsys):
    from frameavg.training.run import train

    overrides = [o for o in ETHANOL if not o.startswith("trainer.enable_progress_bar")]
    config = load_config(None, TINY_MODEL + overrides + [
        f"run_dir={tmp_path / 'run'}", "data.max_train=60", "data.batch_size=2", "optim.max_epochs=3",
        "trainer.check_val_every_n_epoch=2", "trainer.enable_progress_bar=true"])
    train(config)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("Epoch ")]
    assert len(lines) == 3, err  # 30 steps per epoch, one line each: the epochs take < 30 s
    assert "val@" not in lines[0]  # no validation yet: no figures
    assert re.search(r"val@1/energy_mae_meV \d", lines[1]) and re.search(r"val@1/energy_mae_meV \d", lines[2])
    assert len(err) < 5000
