"""Fit, evaluate, load: the training workflow behind ``frameavg train/test/predict``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import torch
from torch_geometric.data import Batch

from frameavg.errors import ConfigError, FrameavgError
from frameavg.training.config import save_config
from frameavg.training.data_module import AtomisticDataModule
from frameavg.training.metrics import oc20_metrics
from frameavg.training.module import AtomisticTask
from frameavg.training.normalization import EnergyNormalizer


def fit_normalizer(config: dict, train_set: list) -> EnergyNormalizer:
    cfg = config["normalize"]
    if not config["targets"]["energy"] or not cfg["energy"]:
        return EnergyNormalizer()
    batch = Batch.from_data_list([train_set[i] for i in range(len(train_set))])
    fitted = EnergyNormalizer.fit(batch.atomic_numbers, batch.batch, batch.energy,
                                  use_element_references=cfg["element_references"])
    mean = fitted.mean.item() if cfg["mean"] is None else cfg["mean"]
    std = cfg["std"]
    if std is None:  # with forces, one scale for both: the force RMS (energy std is far smaller)
        std = batch.forces.double().pow(2).mean().sqrt().item() if config["targets"]["forces"] else fitted.std.item()
    return EnergyNormalizer(mean, std, fitted.element_references)


def build_trainer(config: dict, run_dir: Path, callbacks_extra=()) -> L.Trainer:
    from lightning.pytorch.callbacks import (EarlyStopping, EMAWeightAveraging, LearningRateMonitor,
                                             ModelCheckpoint)
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    optim, trainer_cfg = config["optim"], dict(config["trainer"])
    every_n = trainer_cfg.pop("checkpoint_every_n_steps", None)
    callbacks = [
        # no "-v1" copies: a fresh run gets a fresh run_dir, a resumed one continues its own files
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=optim["monitor"],
                        save_last=True, mode="min", enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        *callbacks_extra,
    ]
    if every_n:
        callbacks.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step-{step}",
                                         every_n_train_steps=int(every_n), save_top_k=-1, save_last=True,
                                         enable_version_counter=False))
    if optim["early_stopping_patience"]:
        callbacks.append(EarlyStopping(monitor=optim["monitor"], patience=optim["early_stopping_patience"]))
    if optim["ema_decay"]:
        callbacks.append(EMAWeightAveraging(decay=float(optim["ema_decay"])))
    max_time = {"minutes": optim["max_time_minutes"]} if optim["max_time_minutes"] else None
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


def train(config: dict, resume: str | None = None) -> dict:
    """Train per ``config``. Returns {"run_dir", "checkpoint", "epochs", "test", "baseline", "plots"}
    on rank 0 ("test" is None without a test set) and None on the other ranks of a DDP run."""
    L.seed_everything(config["seed"], workers=True, verbose=False)
    run_dir = _run_dir(config, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.yaml")
    data = AtomisticDataModule(config["data"], config["targets"], seed=config["seed"])
    data.setup("fit")
    task = AtomisticTask(config)
    if resume is None:
        task.normalizer = fit_normalizer(config, data.train_set)
    else:
        data.resume_loader_state = _loader_state(resume)
    trainer = build_trainer(config, run_dir)
    trainer.fit(task, datamodule=data, ckpt_path=resume)
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if trainer.global_rank != 0:
        return None
    result = {"run_dir": str(run_dir), "checkpoint": str(checkpoint), "epochs": trainer.current_epoch, "test": None}
    if data.test_set:
        metrics, pred = evaluate(task, data.test_set, config["data"]["eval_batch_size"])
        result["test"] = metrics | paper_unit_metrics((config["data"]["keys"] or {}).get("energy"), metrics)
        result["baseline"] = baseline_metrics(task, data.test_set)
        (run_dir / "test_metrics.json").write_text(json.dumps(
            {"model": metrics, "baseline": result["baseline"]}, indent=2))
        from frameavg.training.plots import write_plots

        result["plots"] = [str(p) for p in write_plots(run_dir, data.test_set, pred)]
    return result


def paper_unit_metrics(target: str | None, metrics: dict) -> dict:
    """The energy MAE as QM9 papers report it (e.g. ``U0_mae_meV``) when ``target``, the key the
    energy was read from, is a QM9 target."""
    from frameavg.data.readers.qm9 import paper_units

    units = paper_units(target) if target and "energy_mae" in metrics else None
    if units is None:
        return {}
    unit, factor = units
    return {f"{target}_mae_{unit}": metrics["energy_mae"] * factor}


def _loader_state(checkpoint_path) -> dict | None:
    """The train loader's saved position in a Lightning checkpoint (None if it has none)."""
    try:
        checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FrameavgError(f"{checkpoint_path}: cannot read checkpoint safely ({type(exc).__name__})") from None
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
def evaluate(task: AtomisticTask, structures: list, batch_size: int = 64) -> tuple[dict, dict]:
    """OC20 metrics over all structures at once, and the predictions (eV, eV/Å) per structure."""
    from torch_geometric.loader import DataLoader

    task.eval()
    energies, forces, target_e, target_f, natoms, free = [], [], [], [], [], []
    for batch in DataLoader(structures, batch_size=batch_size, shuffle=False):
        pred = task(batch)
        energies.append(pred["energy"].detach())
        natoms.append(batch.natoms)
        if "forces" in pred:
            forces.append(pred["forces"].detach())
        if "energy" in batch:
            target_e.append(batch.energy)
        if "forces" in batch:
            target_f.append(batch.forces)
        free.append(~batch.fixed if "fixed" in batch else torch.ones(batch.num_nodes, dtype=torch.bool))
    pred = {"energy": torch.cat(energies)}
    if forces:
        pred["forces"] = torch.cat(forces)
    target = {}
    if len(target_e) == len(energies):
        target["energy"] = torch.cat(target_e)
    if forces and len(target_f) == len(energies):
        target["forces"] = torch.cat(target_f)
    use_free = task.config["loss"]["train_on_free_atoms"]
    metrics = oc20_metrics(pred, target, torch.cat(natoms), torch.cat(free) if use_free else None)
    pred["natoms"] = torch.cat(natoms)
    return metrics, pred


def load_task(path: str | os.PathLike) -> AtomisticTask:
    """Rebuild a trained task from a checkpoint without executing pickles (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FrameavgError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted, truncated, or containing non-tensor objects
        raise FrameavgError(f"{path}: cannot read checkpoint safely ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    try:
        config = checkpoint["hyper_parameters"]["config"]
        state = checkpoint["state_dict"]
    except (KeyError, TypeError):
        raise FrameavgError(f"{path}: not a frameavg training checkpoint (no config/state_dict)") from None
    task = AtomisticTask(config)
    missing, unexpected = task.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FrameavgError(
            f"{path}: checkpoint does not match its model config "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    task.eval()
    return task
