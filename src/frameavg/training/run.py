"""Fit and load: the training workflow behind ``frameavg train`` (the test-set evaluation behind
``frameavg test/predict`` and the end-of-training test is ``frameavg.training.inference``)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.trainer.states import RunningStage
from torch_geometric.data import Batch

from frameavg.errors import ConfigError, DataError, FrameavgError
from frameavg.precision import device_of_accelerator, normalize_name as normalize_precision, resolve as resolve_precision
# read_checkpoint: also imported from here (its old place)
from frameavg.training.checkpoint_io import instantiate, read_checkpoint, read_config, restore
from frameavg.training.config import save_config
from frameavg.training.config_sections import RunConfig, TrainerConfig
from frameavg.training.data_module import AtomisticDataModule
from frameavg.training.module import AtomisticTask
from frameavg.training.normalization import EnergyNormalizer


def fit_normalizer(config: RunConfig | dict, batch: Batch) -> EnergyNormalizer:
    """The energy normaliser of a config fitted on the training structures (one ``Batch``)."""
    config = RunConfig.of(config)
    cfg = config.normalize
    if not config.targets.energy or not cfg.energy:
        return EnergyNormalizer()
    given = cfg.element_references
    references = None
    if isinstance(given, str):  # a file of isolated-atom energies
        from frameavg.training.normalization import isolated_atom_references

        references, given_z = isolated_atom_references(given)
        missing = sorted(set(batch.atomic_numbers.unique().tolist()) - given_z)
        if missing:
            raise DataError(f"no isolated-atom energy for Z = {', '.join(map(str, missing))}", source=given)
    fitted = EnergyNormalizer.fit(batch.atomic_numbers, batch.batch, batch.energy,
                                  use_element_references=bool(given), references=references)
    mean = fitted.mean.item() if cfg.mean is None else cfg.mean
    std = cfg.std
    if std is None:  # with forces, one scale for both: the force RMS (energy std is far smaller)
        std = batch.forces.double().pow(2).mean().sqrt().item() if config.targets.forces else fitted.std.item()
    return EnergyNormalizer(mean, std, fitted.element_references)


class BudgetValidationCadence(L.Callback):
    """Under a time budget, validate every n epochs with n = ceil(t_val / (fraction · t_train)), so
    validation takes at most ``fraction`` of the training time (t_val: the last validation pass,
    t_train: the last epoch's training batches). Only for schedules that do not read validation
    metrics (cosine, constant). ``clock``: seconds, the budget's clock (``BudgetTimer``)."""

    def __init__(self, fraction: float, clock=time.monotonic):
        self.fraction, self.clock = fraction, clock
        self.epoch_start = self.last_batch_end = self.val_start = self.val_s = None

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epoch_start = self.clock()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.last_batch_end = self.clock()

    def on_validation_epoch_start(self, trainer, module) -> None:
        self.val_start = self.clock()

    def on_validation_epoch_end(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self.val_s = self.clock() - self.val_start

    def on_train_epoch_end(self, trainer, module) -> None:
        # Lightning has already run (or skipped) this epoch's validation: set the cadence for the next
        train_s = (self.last_batch_end or self.epoch_start) - self.epoch_start
        if self.val_s is not None and train_s > 0:
            trainer.check_val_every_n_epoch = max(1, math.ceil(self.val_s / (self.fraction * train_s)))


class BudgetTimer(Timer):
    """Lightning's ``Timer`` (stops the run when ``minutes`` of training have elapsed, checked after
    every step; validation counts, the elapsed time is saved in checkpoints and resumed) reading
    ``clock`` (seconds) instead of ``time.monotonic``. The schedule follows the same clock
    (``AtomisticTask.training_seconds``). Its checkpoint state keeps the key ``Timer``."""

    def __init__(self, minutes: float, clock=time.monotonic):
        super().__init__(duration={"minutes": minutes}, interval="step")
        self.clock = clock

    @property
    def state_key(self) -> str:
        return "Timer"  # the key of the plain Timer, so checkpoints resume either way

    def time_elapsed(self, stage=RunningStage.TRAINING) -> float:
        stage = RunningStage(stage)
        start, end = self._start_time[stage], self._end_time[stage]
        offset = self._offset if stage == RunningStage.TRAINING else 0
        if start is None:
            return offset
        return (self.clock() if end is None else end) - start + offset

    def on_train_start(self, trainer, module) -> None:
        self._start_time[RunningStage.TRAINING] = self.clock()

    def on_train_end(self, trainer, module) -> None:
        self._end_time[RunningStage.TRAINING] = self.clock()

    def on_validation_start(self, trainer, module) -> None:
        self._start_time[RunningStage.VALIDATING] = self.clock()

    def on_validation_end(self, trainer, module) -> None:
        self._end_time[RunningStage.VALIDATING] = self.clock()

    def on_test_start(self, trainer, module) -> None:
        self._start_time[RunningStage.TESTING] = self.clock()

    def on_test_end(self, trainer, module) -> None:
        self._end_time[RunningStage.TESTING] = self.clock()

def build_trainer(config: RunConfig, run_dir: Path, callbacks_extra=(), precision: str | None = None,
                  clock=time.monotonic) -> L.Trainer:
    """Lightning's trainer for ``config`` (``precision``: the resolved precision, which may differ
    from the config's after a fallback; see ``frameavg.precision``)."""
    from lightning.pytorch.callbacks import (EarlyStopping, EMAWeightAveraging, LearningRateMonitor,
                                             ModelCheckpoint)
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    optim, trainer_cfg = config.optim, config.trainer.to_dict()
    every_n = trainer_cfg.pop("checkpoint_every_n_steps", None)
    trainer_cfg.pop("threads", None)  # applied by train() (torch.set_num_threads)
    trainer_cfg["precision"] = normalize_precision(precision or trainer_cfg["precision"])
    callbacks = [
        # no "-v1" copies: a fresh run gets a fresh run_dir, a resumed one continues its own files
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=optim.monitor,
                        save_last=True, mode="min", enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        *callbacks_extra,
    ]
    if trainer_cfg["enable_progress_bar"]:
        from frameavg.training.progress import progress_bar

        callbacks.append(progress_bar())  # validation figures labelled by epoch; per epoch in a log
    if every_n:
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step-{step}",
                                         auto_insert_metric_name=False, every_n_train_steps=int(every_n),
                                         save_top_k=-1, save_last=True, enable_version_counter=False))
    if optim.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=optim.monitor, patience=optim.early_stopping_patience))
    if optim.ema_decay:
        callbacks.append(EMAWeightAveraging(decay=optim.ema_decay))
    if optim.max_time_minutes:
        callbacks.append(BudgetTimer(optim.max_time_minutes, clock))
        if optim.scheduler != "plateau" and "check_val_every_n_epoch" not in trainer_cfg:
            callbacks.append(BudgetValidationCadence(optim.max_val_time_fraction, clock))
    try:
        return L.Trainer(
            default_root_dir=run_dir, max_epochs=optim.max_epochs,
            gradient_clip_val=optim.clip_grad, callbacks=callbacks, inference_mode=False,
            use_distributed_sampler=False, deterministic=False,
            logger=[CSVLogger(run_dir, name="logs", version=""), TensorBoardLogger(run_dir, name="tensorboard", version="")],
            **trainer_cfg,
        )
    except TypeError as exc:
        raise ConfigError(f"invalid trainer option: {exc}") from None


#: The clocks ``optim.budget_clock`` names, seconds.
BUDGET_CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}


def train(config: RunConfig | dict, resume: str | None = None, report=None, *, clock=None, callbacks=()) -> dict:
    """Train per ``config``. Returns {"run_dir", "checkpoint", "epochs", "test", "baseline", "plots"}
    on rank 0 ("test" is None without a test set) and None on the other ranks of a DDP run.

    Everything that can be checked is checked before the run folder is touched: the config (at
    load), the model section, the resume checkpoint (readable, a frameavg checkpoint of the same
    model) and the data. ``report``: called with one line each for the split sizes and reading
    time, the fitted normaliser and the precision and threads (the CLI prints them to stderr).
    ``clock``: the clock of the time budget (``optim.max_time_minutes``), seconds (None: the one
    ``optim.budget_clock`` names); ``callbacks``:
    extra Lightning callbacks (the tests drive a fake clock with one).
    Lightning's start-up banners, tips and known deprecation chatter are silenced."""
    config = RunConfig.of(config)
    config.check_model()
    clock = clock or BUDGET_CLOCKS[config.optim.budget_clock]
    checkpoint = None if resume is None else _resume_checkpoint(resume, config)
    requested = config.trainer.precision
    precision = resolve_precision(requested, device_of_accelerator(config.trainer.accelerator))
    threads = config.trainer.threads or default_threads(config.trainer)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # restored when the run ends
    try:
        with _quiet_lightning():
            return _fit(config, checkpoint, resume, precision, requested, threads, report or (lambda line: None),
                        clock, callbacks)
    finally:
        torch.set_num_threads(previous_threads)


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's INFO banners ("GPU available", tips, "Trainer.fit stopped") and the warnings it
    emits about itself, off for the run (its model summary and real warnings stay)."""
    import logging
    import warnings

    banners = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = banners.level
    banners.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
            warnings.filterwarnings("ignore", message=r"The number of training batches .* is smaller than the logging")
            yield
    finally:
        banners.setLevel(level)


def _fit(config: RunConfig, checkpoint: dict | None, resume: str | None, precision, requested: str, threads: int,
         report, clock, callbacks):
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = AtomisticDataModule(config.data, config.targets, seed=config.seed, dtype=precision.dtype)
    start = time.perf_counter()
    data.setup("fit")
    sizes = {name: len(split) for name, split in (("train", data.train_set), ("val", data.val_set),
                                                  ("test", data.test_set)) if split is not None}
    report(f"data: {', '.join(f'{n} {name}' for name, n in sizes.items())} structures "
           f"(read in {time.perf_counter() - start:.1f} s)")
    report(f"precision {precision.name}" + (f" (asked {requested}: {precision.fallback})" if precision.fallback else "")
           + f", {threads} thread{'s' if threads > 1 else ''}")
    task = AtomisticTask(config)
    task.precision_record = precision.record(requested)
    task.threads = threads
    if checkpoint is None:
        train_batch = Batch.from_data_list([data.train_set[i] for i in range(len(data.train_set))])
        task.normalizer = fit_normalizer(config, train_batch)
        task.training_elements = train_batch.atomic_numbers.unique().tolist()
        report(describe_normalizer(task.normalizer, task.training_elements))
        if config.model.init_from:
            task.init_record = init_weights(task, config.model.init_from)
            report(describe_init(task.init_record))
    else:
        data.resume_loader_state = _loader_state(checkpoint)
    data.check_budgets(task.net)
    run_dir = _run_dir(config, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config.to_dict(), run_dir / "config.yaml")
    trainer = build_trainer(config, run_dir, callbacks, precision=precision.name, clock=clock)
    trainer.fit(task, datamodule=data, ckpt_path=resume)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if trainer.global_rank != 0:
        return None
    result = {"run_dir": str(run_dir), "checkpoint": str(checkpoint), "epochs": trainer.current_epoch, "test": None,
              "threads": threads, "test_weights": None, "init_from": task.init_record}
    if data.test_set:
        # the weights in memory when fit ends (saved as last.ckpt), not best.ckpt
        result["test_weights"] = "last"
        from frameavg.training.inference import baseline_metrics, evaluate, paper_unit_metrics

        metrics, pred = evaluate(task, data.test_set, config.data.eval_batch_size)
        result["test"] = metrics | paper_unit_metrics(config.data.keys.get("energy"), metrics)
        result["baseline"] = baseline_metrics(task, data.test_set)
        (run_dir / "test_metrics.json").write_text(json.dumps(
            {"model": metrics, "baseline": result["baseline"]}, indent=2))
        from frameavg.training.plots import write_plots

        result["plots"] = [str(p) for p in write_plots(run_dir, data.test_set, pred)]
    return result


def init_weights(task, path) -> dict:
    """Load into ``task.net`` every tensor of checkpoint ``path`` with the same name and shape
    (fine-tuning; the normaliser is fitted on the new data). Returns the path and the names
    ``loaded``, ``skipped`` (in the checkpoint, absent here or of another shape) and ``new``
    (here only: freshly initialised)."""
    # tensors only: a module's extra state (the frame generator's stream) is not a weight
    source = {key[len("net."):]: value for key, value in read_checkpoint(path)["state_dict"].items()
              if key.startswith("net.") and isinstance(value, torch.Tensor)}
    own = {name: value for name, value in task.net.state_dict().items() if isinstance(value, torch.Tensor)}
    loaded = [name for name, value in source.items() if name in own and own[name].shape == value.shape]
    with torch.no_grad():
        for name in loaded:
            own[name].copy_(source[name].to(own[name].dtype))
    return {"path": str(path), "loaded": loaded, "skipped": [name for name in source if name not in set(loaded)],
            "new": [name for name in own if name not in source]}


def describe_init(record: dict) -> str:
    """One line: how many tensors ``init_weights`` loaded, skipped and left new (first names)."""
    def names(key):
        items = record[key]
        return f"{len(items)}" + (f" ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})" if items else "")

    return (f"init_from {record['path']}: loaded {len(record['loaded'])} tensors, skipped {names('skipped')}, "
            f"new {names('new')}")


def describe_normalizer(normalizer: EnergyNormalizer, elements) -> str:
    """One line: the energy normaliser's mean, scale and element references of ``elements``."""
    from ase.data import chemical_symbols

    refs = ", ".join(f"{chemical_symbols[z]} {float(normalizer.element_references[z]):.6g}" for z in sorted(elements))
    return (f"energy normaliser: mean {float(normalizer.mean):.6g} eV, scale {float(normalizer.std):.6g}"
            + (f", references (eV/atom): {refs}" if bool(normalizer.element_references.any()) else ""))


def default_threads(trainer_cfg: TrainerConfig) -> int:
    """torch threads per process when ``trainer.threads`` is not set: the cores this process may
    use (its CPU affinity) less the 1-minute load average (other work; rounded), shared by the
    processes of this node (``devices`` on CPU), at least 1. Oversubscribed threads cost more than
    they give (measured: an epoch 57 s with 2 threads on a loaded 2-core machine, 24 s with 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    free = cores - round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else cores
    devices = trainer_cfg.devices
    processes = devices if isinstance(devices, int) and str(trainer_cfg.accelerator) == "cpu" else 1
    return max(1, free // max(1, processes))


def _resume_checkpoint(path, config: RunConfig) -> dict:
    """The checkpoint to resume from, checked against ``config`` (same model and targets)."""
    checkpoint = read_checkpoint(path)
    saved = checkpoint["hyper_parameters"]["config"]  # as trained: no defaults of other releases added
    for section in ("model", "targets"):
        kind = RunConfig.SECTIONS[section]
        if kind.from_dict(saved.get(section), str(path)) != getattr(config, section):
            raise FrameavgError(f"{path}: cannot resume: the checkpoint's '{section}' section "
                                f"{saved.get(section)} differs from the config's "
                                f"{getattr(config, section).to_dict()}")
    return checkpoint


def _loader_state(checkpoint: dict) -> dict | None:
    """The train loader's saved position in a Lightning checkpoint (None if it has none)."""
    states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [None]
    return states[0]


#: File in a run folder naming the process that chose it (how DDP child processes find it).
OWNER_FILE = ".owner_pid"


def _run_dir(config: RunConfig, resume: str | None) -> Path:
    """The run's folder, the same on every process of a distributed run.

    A new run never overwrites an old one (``name-1``, ``name-2``, ... if taken); the process that
    chooses the folder creates it and writes its pid to ``OWNER_FILE``. Processes that Lightning
    launches for DDP (``LOCAL_RANK`` > 0, started by rank 0) take the folder their parent owns;
    under torchrun/SLURM (``RANK`` set from the start) the folder is ``run_dir/name`` as given.
    """
    run_dir = Path(config.run_dir) / config.name
    if "RANK" in os.environ:
        return run_dir
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return _parent_run_dir(run_dir)
    if resume is None:
        run_dir = _fresh_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / OWNER_FILE).write_text(str(os.getpid()))
    return run_dir


def _parent_run_dir(run_dir: Path) -> Path:
    """The folder among ``run_dir``, ``run_dir-1``, ... owned by this process's parent."""
    parent, candidate, n = str(os.getppid()), run_dir, 0
    while candidate.exists():
        owner = candidate / OWNER_FILE
        if owner.is_file() and owner.read_text().strip() == parent:
            return candidate
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
    raise FrameavgError(f"DDP process {os.getpid()}: no run folder {run_dir}[-n] owned by its launcher {parent}")


def _fresh_dir(run_dir: Path) -> Path:
    """``run_dir``, or ``run_dir-1``, ``-2``, ... if taken: a new run never overwrites an old one."""
    candidate, n = run_dir, 0
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
    return candidate


def load_task(path: str | os.PathLike) -> AtomisticTask:
    """Rebuild a trained task from a checkpoint without executing pickles (weights_only=True);
    for inference alone, ``checkpoint_io.load_trained_model`` needs no Lightning."""
    checkpoint = read_checkpoint(path)
    return restore(instantiate(AtomisticTask, read_config(checkpoint, path), path), checkpoint, path)
