"""Training progress that says when its validation figures were taken.

Validation may run only every n epochs (``optim.max_val_time_fraction`` under a time budget), so
figures on the bar are labelled with their epoch (``val@3/energy_mae_meV``) and hidden until the
first validation. On a terminal: Lightning's tqdm bar. In a log file (stderr not a terminal): one
line per epoch, and within an epoch at most one line every ``interval`` seconds, never one per
step.
"""

from __future__ import annotations

import sys
import time

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

#: Seconds between two progress lines of one epoch in a log file.
LOG_INTERVAL_S = 30.0


def label_validation(metrics: dict, epoch: int | None) -> dict:
    """Bar items with ``val/x`` renamed ``val@{epoch}/x`` (the epoch the figures were taken at),
    or left out when no validation has run (``epoch`` None); Lightning's version number dropped."""
    items = {}
    for key, value in metrics.items():
        if key == "v_num":
            continue
        if key.startswith("val/"):
            if epoch is None:
                continue
            key = f"val@{epoch}/{key[4:]}"
        items[key] = value
    return items


class _ValidationEpoch:
    """Records the epoch of the last validation outside the sanity check (``val_epoch``)."""

    val_epoch: int | None = None

    def on_validation_end(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self.val_epoch = trainer.current_epoch
        super().on_validation_end(trainer, module)

    def get_metrics(self, trainer, module) -> dict:
        return label_validation(super().get_metrics(trainer, module), self.val_epoch)


class EpochLabelledBar(_ValidationEpoch, TQDMProgressBar):
    """Lightning's tqdm bar (a terminal) with the validation figures labelled by their epoch."""


class LogProgress(_ValidationEpoch, ProgressBar):
    """Progress for a log file: a line at the end of every epoch and at most one every
    ``interval`` seconds (on ``clock``) within an epoch, on stderr."""

    def __init__(self, interval: float = LOG_INTERVAL_S, clock=time.monotonic):
        super().__init__()
        self.interval, self.clock = interval, clock
        self.enabled = True
        self.last_line: float | None = None

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_epoch_start(self, trainer, module) -> None:
        if self.last_line is None:
            self.last_line = self.clock()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.clock() - self.last_line >= self.interval:
            self._line(trainer, module, f"{batch_idx + 1}/{self.total_train_batches} batches")

    def on_train_epoch_end(self, trainer, module) -> None:
        self._line(trainer, module, "done")

    def _line(self, trainer, module, where: str) -> None:
        self.last_line = self.clock()
        if not self.enabled:
            return
        shown = ", ".join(f"{k} {_format(v)}" for k, v in self.get_metrics(trainer, module).items())
        print(f"Epoch {trainer.current_epoch} {where}, step {trainer.global_step}" + (f": {shown}" if shown else ""),
              file=sys.stderr, flush=True)


def _format(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_bar(stream=None) -> ProgressBar:
    """The bar for ``stream`` (default stderr): tqdm on a terminal, ``LogProgress`` otherwise."""
    stream = sys.stderr if stream is None else stream
    return EpochLabelledBar() if getattr(stream, "isatty", lambda: False)() else LogProgress()
