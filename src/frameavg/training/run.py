"""Fit, evaluate, load: the training workflow behind ``frameavg train/test/predict``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path

import lightning as L
import torch
from torch_geometric.data import Batch

from frameavg.derivatives import voigt_to_matrix
from frameavg.errors import ConfigError, DataError, FrameavgError
from frameavg.outputs import ENERGY, FORCES, STRESS
from frameavg.precision import device_of_accelerator, normalize_name as normalize_precision, resolve as resolve_precision
from frameavg.training.config import save_config, validate_model_section
from frameavg.training.data_module import AtomisticDataModule
from frameavg.training.metrics import oc20_metrics
from frameavg.training.module import AtomisticTask
from frameavg.training.normalization import EnergyNormalizer


def fit_normalizer(config: dict, batch: Batch) -> EnergyNormalizer:
    """The energy normaliser of a config fitted on the training structures (one ``Batch``)."""
    cfg = config["normalize"]
    if not config["targets"]["energy"] or not cfg["energy"]:
        return EnergyNormalizer()
    given = cfg["element_references"]
    references = None
    if isinstance(given, str):  # a file of isolated-atom energies
        from frameavg.training.normalization import isolated_atom_references

        references, given_z = isolated_atom_references(given)
        missing = sorted(set(batch.atomic_numbers.unique().tolist()) - given_z)
        if missing:
            raise DataError(f"no isolated-atom energy for Z = {', '.join(map(str, missing))}", source=given)
    fitted = EnergyNormalizer.fit(batch.atomic_numbers, batch.batch, batch.energy,
                                  use_element_references=bool(given), references=references)
    mean = fitted.mean.item() if cfg["mean"] is None else cfg["mean"]
    std = cfg["std"]
    if std is None:  # with forces, one scale for both: the force RMS (energy std is far smaller)
        std = batch.forces.double().pow(2).mean().sqrt().item() if config["targets"]["forces"] else fitted.std.item()
    return EnergyNormalizer(mean, std, fitted.element_references)


class BudgetValidationCadence(L.Callback):
    """Under a time budget, validate every n epochs with n = ceil(t_val / (fraction · t_train)), so
    validation takes at most ``fraction`` of the training time (t_val: the last validation pass,
    t_train: the last epoch's training batches). Only for schedules that do not read validation
    metrics (cosine, constant)."""

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.epoch_start = self.last_batch_end = self.val_start = self.val_s = None

    def on_train_epoch_start(self, trainer, module) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.last_batch_end = time.perf_counter()

    def on_validation_epoch_start(self, trainer, module) -> None:
        self.val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, module) -> None:
        if not trainer.sanity_checking:
            self.val_s = time.perf_counter() - self.val_start

    def on_train_epoch_end(self, trainer, module) -> None:
        # Lightning has already run (or skipped) this epoch's validation: set the cadence for the next
        train_s = (self.last_batch_end or self.epoch_start) - self.epoch_start
        if self.val_s is not None and train_s > 0:
            trainer.check_val_every_n_epoch = max(1, math.ceil(self.val_s / (self.fraction * train_s)))


def build_trainer(config: dict, run_dir: Path, callbacks_extra=(), precision: str | None = None) -> L.Trainer:
    """Lightning's trainer for ``config`` (``precision``: the resolved precision, which may differ
    from the config's after a fallback; see ``frameavg.precision``)."""
    from lightning.pytorch.callbacks import (EarlyStopping, EMAWeightAveraging, LearningRateMonitor,
                                             ModelCheckpoint)
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    optim, trainer_cfg = config["optim"], dict(config["trainer"])
    every_n = trainer_cfg.pop("checkpoint_every_n_steps", None)
    trainer_cfg.pop("threads", None)  # applied by train() (torch.set_num_threads)
    trainer_cfg["precision"] = normalize_precision(precision or trainer_cfg["precision"])
    callbacks = [
        # no "-v1" copies: a fresh run gets a fresh run_dir, a resumed one continues its own files
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=optim["monitor"],
                        save_last=True, mode="min", enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        *callbacks_extra,
    ]
    if every_n:
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step-{step}",
                                         auto_insert_metric_name=False, every_n_train_steps=int(every_n),
                                         save_top_k=-1, save_last=True, enable_version_counter=False))
    if optim["early_stopping_patience"]:
        callbacks.append(EarlyStopping(monitor=optim["monitor"], patience=optim["early_stopping_patience"]))
    if optim["ema_decay"]:
        callbacks.append(EMAWeightAveraging(decay=float(optim["ema_decay"])))
    max_time = {"minutes": optim["max_time_minutes"]} if optim["max_time_minutes"] else None
    if max_time and optim["scheduler"] != "plateau" and "check_val_every_n_epoch" not in trainer_cfg:
        callbacks.append(BudgetValidationCadence(optim["max_val_time_fraction"]))
    try:
        return L.Trainer(
            default_root_dir=run_dir, max_epochs=optim["max_epochs"], max_time=max_time,
            gradient_clip_val=optim["clip_grad"], callbacks=callbacks, inference_mode=False,
            use_distributed_sampler=False, deterministic=False,
            logger=[CSVLogger(run_dir, name="logs", version=""), TensorBoardLogger(run_dir, name="tensorboard", version="")],
            **trainer_cfg,
        )
    except TypeError as exc:
        raise ConfigError(f"invalid trainer option: {exc}") from None


def train(config: dict, resume: str | None = None, report=None) -> dict:
    """Train per ``config``. Returns {"run_dir", "checkpoint", "epochs", "test", "baseline", "plots"}
    on rank 0 ("test" is None without a test set) and None on the other ranks of a DDP run.

    Everything that can be checked is checked before the run folder is touched: the config (at
    load), the model section, the resume checkpoint (readable, a frameavg checkpoint of the same
    model) and the data. ``report``: called with one line each for the split sizes and reading
    time, the fitted normaliser and the precision and threads (the CLI prints them to stderr).
    Lightning's start-up banners, tips and known deprecation chatter are silenced."""
    validate_model_section(config)
    checkpoint = None if resume is None else _resume_checkpoint(resume, config)
    requested = config["trainer"]["precision"]
    precision = resolve_precision(requested, device_of_accelerator(config["trainer"]["accelerator"]))
    threads = config["trainer"].get("threads") or default_threads(config["trainer"])
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # restored when the run ends
    try:
        with _quiet_lightning():
            return _fit(config, checkpoint, resume, precision, requested, threads, report or (lambda line: None))
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


def _fit(config: dict, checkpoint: dict | None, resume: str | None, precision, requested: str, threads: int,
         report):
    L.seed_everything(config["seed"], workers=True, verbose=False)
    data = AtomisticDataModule(config["data"], config["targets"], seed=config["seed"], dtype=precision.dtype)
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
        if config["model"].get("init_from"):
            task.init_record = init_weights(task, config["model"]["init_from"])
            report(describe_init(task.init_record))
    else:
        data.resume_loader_state = _loader_state(checkpoint)
    run_dir = _run_dir(config, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    trainer = build_trainer(config, run_dir, precision=precision.name)
    trainer.fit(task, datamodule=data, ckpt_path=resume)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if trainer.global_rank != 0:
        return None
    result = {"run_dir": str(run_dir), "checkpoint": str(checkpoint), "epochs": trainer.current_epoch, "test": None,
              "threads": threads, "test_weights": None, "init_from": task.init_record}
    if data.test_set:
        # the weights in memory when fit ends (saved as last.ckpt), not best.ckpt
        result["test_weights"] = "last"
        metrics, pred = evaluate(task, data.test_set, config["data"]["eval_batch_size"])
        result["test"] = metrics | paper_unit_metrics((config["data"]["keys"] or {}).get("energy"), metrics)
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
    source = {key[len("net."):]: value for key, value in read_checkpoint(path)["state_dict"].items()
              if key.startswith("net.")}
    own = task.net.state_dict()
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


def default_threads(trainer_cfg: dict) -> int:
    """torch threads per process when ``trainer.threads`` is not set: the cores this process may
    use (its CPU affinity) less the 1-minute load average (other work; rounded), shared by the
    processes of this node (``devices`` on CPU), at least 1. Oversubscribed threads cost more than
    they give (measured: an epoch 57 s with 2 threads on a loaded 2-core machine, 24 s with 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    free = cores - round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else cores
    devices = trainer_cfg.get("devices", 1)
    processes = devices if isinstance(devices, int) and str(trainer_cfg.get("accelerator", "cpu")) == "cpu" else 1
    return max(1, free // max(1, processes))


def paper_unit_metrics(target: str | None, metrics: dict) -> dict:
    """The energy MAE as QM9 papers report it (e.g. ``U0_mae_meV``) when ``target``, the key the
    energy was read from, is a QM9 target."""
    from frameavg.data.readers.qm9 import paper_units

    units = paper_units(target) if target and "energy_mae" in metrics else None
    if units is None:
        return {}
    unit, factor = units
    return {f"{target}_mae_{unit}": metrics["energy_mae"] * factor}


def read_checkpoint(path) -> dict:
    """A frameavg training checkpoint, read without executing pickles (``weights_only=True``);
    ``FrameavgError`` for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FrameavgError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted, truncated, or holding objects a safe load refuses
        text = str(exc)
        if "Unsupported global" in text:
            reason = "it holds Python objects beyond tensors and plain data, which frameavg never unpickles"
        else:  # torch's other messages (invalid pickles, broken zip archives) end in advice that does not apply
            reason = "not a PyTorch checkpoint, or a truncated or corrupted one"
        raise FrameavgError(f"{path}: cannot read checkpoint safely ({reason})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or \
            "config" not in (checkpoint.get("hyper_parameters") or {}):
        raise FrameavgError(f"{path}: not a frameavg training checkpoint (no config/state_dict)")
    return checkpoint


def _resume_checkpoint(path, config: dict) -> dict:
    """The checkpoint to resume from, checked against ``config`` (same model and targets)."""
    checkpoint = read_checkpoint(path)
    saved = checkpoint["hyper_parameters"]["config"]
    for section in ("model", "targets"):
        if saved.get(section) != config.get(section):
            raise FrameavgError(f"{path}: cannot resume: the checkpoint's '{section}' section "
                                f"{saved.get(section)} differs from the config's {config.get(section)}")
    return checkpoint


def _loader_state(checkpoint: dict) -> dict | None:
    """The train loader's saved position in a Lightning checkpoint (None if it has none)."""
    states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [None]
    return states[0]


def _run_dir(config: dict, resume: str | None) -> Path:
    """The run's folder, the same on every process of a distributed run.

    A new run never overwrites an old one (``name-1``, ``name-2``, ... if taken). Processes that
    Lightning launches for DDP inherit the choice of rank 0 through ``FRAMEAVG_RUN_DIR``; under
    torchrun/SLURM (``RANK`` set from the start) the folder is ``run_dir/name`` as given.
    """
    run_dir = Path(config["run_dir"]) / config["name"]
    inherited = os.environ.get("FRAMEAVG_RUN_DIR")
    if inherited and os.environ.get("LOCAL_RANK", "0") != "0":
        return Path(inherited)
    if resume is None and "RANK" not in os.environ:
        run_dir = _fresh_dir(run_dir)
    os.environ["FRAMEAVG_RUN_DIR"] = str(run_dir)
    return run_dir


def _fresh_dir(run_dir: Path) -> Path:
    """``run_dir``, or ``run_dir-1``, ``-2``, ... if taken: a new run never overwrites an old one."""
    candidate, n = run_dir, 0
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = run_dir.with_name(f"{run_dir.name}-{n}")
    return candidate


def baseline_metrics(task: AtomisticTask, structures: list) -> dict:
    """Metrics of the per-element-mean baseline: E = sum of element references + mean, F = 0."""
    batch = Batch.from_data_list([structures[i] for i in range(len(structures))])
    zeros = torch.zeros(batch.num_graphs, dtype=torch.float64)
    pred = {"energy": task.normalizer.denormalize_energy(zeros, batch.atomic_numbers, batch.batch)}
    target = {"energy": batch.energy}
    if task.predict_forces:
        pred["forces"], target["forces"] = torch.zeros_like(batch.forces), batch.forces
    free = ~batch.fixed if task.config["loss"]["train_on_free_atoms"] else None
    return oc20_metrics(pred, target, batch.natoms, free)


@torch.no_grad()
def evaluate(task: AtomisticTask, structures: list, batch_size: int = 64,
             failed: dict[int, str] | None = None, stress: bool | None = None,
             precision=None) -> tuple[dict, dict]:
    """OC20 metrics over all structures at once, and the predictions (eV, eV/Å, eV/Å³) per structure.

    A structure the model refuses (a ``DataError``: an element it does not embed, bad tags) does
    not stop the others: its batch is re-run one structure at a time, its predictions are NaN,
    ``pred["status"]`` holds ``"ok"`` or its error message for every structure, and the metrics
    cover the structures that were predicted (``metrics["structures_failed"]`` counts the rest).
    ``failed``: {index: message} of structures already known to be bad (not predicted).
    ``stress``: predict stress [B,3,3] too (default: when the model was trained on it; NaN for
    structures without a cell volume). ``precision``: a ``frameavg.precision.Precision`` to run the
    model under (its autocast; the task's net and the structures must already be in its dtype and
    on the task's device).
    """
    task.eval()
    stress = task.predict_stress if stress is None else stress
    status = ["ok"] * len(structures)
    for i, message in (failed or {}).items():
        status[i] = message
    outputs: list[dict | None] = [None] * len(structures)
    todo = [i for i in range(len(structures)) if status[i] == "ok"]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        try:
            parts = _predict_split(task, [structures[i] for i in chunk], stress, precision)
        except DataError:
            parts = []
            for i in chunk:
                try:
                    parts += _predict_split(task, [structures[i]], stress, precision)
                except DataError as exc:
                    parts.append(None)
                    status[i] = str(exc)
        for i, part in zip(chunk, parts):
            outputs[i] = part
    natoms = torch.tensor([int(d.natoms.reshape(-1)[0]) for d in structures], dtype=torch.long)
    pred = {}
    for key, per_atom, shape in ((ENERGY, False, ()), (FORCES, True, (3,)), (STRESS, False, (3, 3))):
        if not any(o is not None and key in o for o in outputs):
            continue
        pred[key] = torch.cat([o[key] if o is not None else torch.full((int(n) if per_atom else 1, *shape), math.nan,
                                                                       dtype=torch.float64)
                               for o, n in zip(outputs, natoms)])
    ok = torch.tensor([s == "ok" for s in status])
    atom_ok = torch.repeat_interleave(ok, natoms)
    target = {}
    if all(ENERGY in d for d in structures):
        target[ENERGY] = torch.cat([d.energy.reshape(-1) for d in structures])[ok]
    if FORCES in pred and all(FORCES in d for d in structures):
        target[FORCES] = torch.cat([d.forces for d in structures])[atom_ok]
    if STRESS in pred and all(STRESS in d for d in structures):
        target[STRESS] = torch.cat([voigt_to_matrix(d.stress.double()) for d in structures])[ok]
    kept = {key: value[atom_ok] if key == FORCES else value[ok] for key, value in pred.items()}
    free = None
    if task.config["loss"]["train_on_free_atoms"]:
        free = torch.cat([~d.fixed if "fixed" in d else torch.ones(int(d.natoms), dtype=torch.bool)
                          for d in structures])[atom_ok]
    metrics = oc20_metrics(kept, target, natoms[ok], free) if bool(ok.any()) else {}
    if not bool(ok.all()):
        metrics["structures_failed"] = int((~ok).sum())
    pred["natoms"] = natoms
    pred["status"] = status
    return metrics, pred


def _predict_split(task: AtomisticTask, chunk: list, stress: bool, precision=None) -> list[dict]:
    """Predictions of one batch, split per structure: [{"energy": [1], "forces": [n,3], "stress": [1,3,3]}]."""
    batch = Batch.from_data_list(chunk).to(task.device)
    with precision.context() if precision is not None else contextlib.nullcontext():
        out = task(batch, stress=stress)
    parts = []
    for k, (lo, hi) in enumerate(zip(batch.ptr[:-1].tolist(), batch.ptr[1:].tolist())):
        part = {ENERGY: out[ENERGY][k:k + 1].detach().cpu().double()}
        if FORCES in out:
            part[FORCES] = out[FORCES][lo:hi].detach().cpu().double()
        if STRESS in out:
            part[STRESS] = out[STRESS][k:k + 1].detach().cpu().double()
        parts.append(part)
    return parts


def load_task(path: str | os.PathLike) -> AtomisticTask:
    """Rebuild a trained task from a checkpoint without executing pickles (weights_only=True)."""
    checkpoint = read_checkpoint(path)
    config, state = checkpoint["hyper_parameters"]["config"], checkpoint["state_dict"]
    try:
        task = AtomisticTask(config)
    except (ConfigError, TypeError, KeyError) as exc:
        raise FrameavgError(f"{path}: the checkpoint's config does not build a model ({exc})") from None
    record = (checkpoint.get("frameavg") or {}).get("precision") or {}
    if record.get("used") == "64-true":  # weights stay float64 (not rounded on loading)
        task.net.double()
    shapes = {name: tuple(t.shape) for name, t in task.state_dict().items()}
    wrong = [f"{name} {tuple(t.shape)} vs {shapes[name]}" for name, t in state.items()
             if name in shapes and isinstance(t, torch.Tensor) and tuple(t.shape) != shapes[name]]
    if wrong:
        raise FrameavgError(f"{path}: weights do not fit the checkpoint's model config ({len(wrong)} tensors, "
                            f"e.g. {wrong[0]}; was the checkpoint edited or its config changed?)")
    missing, unexpected = task.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FrameavgError(
            f"{path}: checkpoint does not match its model config "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    task.training_elements = (checkpoint.get("frameavg") or {}).get("training_elements")
    task.precision_record = record or None
    task.eval()
    return task
