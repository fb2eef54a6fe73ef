"""Training configuration: YAML files with defaults, dotted overrides and typo detection.

A config is a nested dict whose sections and keys must exist in ``DEFAULTS`` (an unknown key is a
``ConfigError`` that suggests the closest valid one). ``model`` keys are checked against the
model's constructor instead, and ``trainer`` keys are passed to ``lightning.Trainer``.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml

from frameavg.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "run_dir": "runs",  # the run goes to run_dir/name
    "model": {"name": "faenet"},  # other keys: the model's constructor arguments
    "frames": {
        "frames": "3D",  # 3D | 2D | none (no frame averaging)
        "train": "stochastic",  # frame method in training: all | stochastic | det | DA | se3-... variants
        "eval": "all",  # frame method in validation/test/predict
    },
    "data": {
        "train": None,  # path (or shipped:NAME) of the training structures
        "val": None,  # path, or None to split val_fraction off the training set
        "test": None,
        "val_fraction": 0.1,
        "test_fraction": 0.0,  # when data.test is None: split a test set off the training file
        "split_seed": 0,
        "max_train": None,  # keep only the first N training structures (after shuffling)
        "format": None,
        "keys": {},  # {our_field: key_in_file}, e.g. {energy: U0}
        "options": {},  # reader-specific options, e.g. {targets: [U0]} for QM9
        "trusted": False,  # allow pickled legacy OC20 LMDBs
        "cutoff": 6.0,
        "max_neighbors": None,
        "batch_size": 32,
        "eval_batch_size": 64,
        "num_workers": 0,
    },
    "targets": {"energy": True, "forces": False},
    "loss": {
        "energy": "mae",  # mae | mse
        "forces": "l2mae",  # l2mae | mae | mse
        "energy_weight": 1.0,
        "forces_weight": 100.0,
        "gradient_weight": 0.0,  # direct forces vs -dE/dx of the model (direct_with_gradient_target)
        "conservation_weight": 0.0,  # -dE/dx of the model vs the reference forces
        "train_on_free_atoms": True,
    },
    # std None: the training force RMS when forces are a target, else the energy residual std
    "normalize": {"energy": True, "element_references": True, "mean": None, "std": None},
    "optim": {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "scheduler": "cosine",  # cosine | plateau | constant
        "warmup_steps": 0,
        "min_lr_ratio": 0.01,
        "plateau_patience": 5,
        "plateau_factor": 0.5,
        "clip_grad": 10.0,
        "ema_decay": None,
        "max_epochs": 10,
        "max_time_minutes": None,
        "early_stopping_patience": None,
        "monitor": "val/loss",
    },
    "trainer": {
        "accelerator": "cpu",
        "devices": 1,
        "strategy": "auto",
        "num_nodes": 1,
        "precision": "32-true",
        "log_every_n_steps": 10,
        "enable_progress_bar": True,
        "checkpoint_every_n_steps": None,  # also save mid-epoch (for resume)
    },
}

FREE_SECTIONS = ("model", "trainer")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """Defaults <- YAML file <- overrides (``a.b=value`` or ``--a.b value`` pairs, YAML values)."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            user = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        merge(config, user, where=str(path))
    for key, value in parse_overrides(overrides):
        merge(config, nest(key, value), where="override")
    return config


def parse_overrides(items) -> list[tuple[str, Any]]:
    """``["optim.lr=1e-3", "--trainer.strategy", "ddp"]`` -> [("optim.lr", 0.001), ...]."""
    pairs, items = [], list(items)
    i = 0
    while i < len(items):
        item = items[i]
        if item.startswith("--"):
            item = item[2:]
            if "=" not in item:
                if i + 1 >= len(items):
                    raise ConfigError(f"override --{item} needs a value")
                item = f"{item}={items[i + 1]}"
                i += 1
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        pairs.append((key.strip(), _parse_value(raw)))
        i += 1
    return pairs


def _parse_value(raw: str):
    """YAML value, with numbers like ``2e-3`` (a string to YAML 1.1) read as floats."""
    value = yaml.safe_load(raw) if raw else None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def nest(dotted: str, value) -> dict:
    out: dict = {}
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def merge(base: dict, update: dict, *, where: str, prefix: str = "") -> None:
    """Recursively merge ``update`` into ``base``, rejecting keys unknown to ``base``."""
    for key, value in update.items():
        full = f"{prefix}{key}"
        free = prefix.split(".")[0] in FREE_SECTIONS if prefix else False
        if key not in base and not free:
            close = difflib.get_close_matches(str(key), [str(k) for k in base], n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"{where}: unknown config key '{full}'{hint}")
        if isinstance(base.get(key), dict) and key not in ("keys", "options"):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: '{full}' must be a mapping, got {value!r}")
            merge(base[key], value, where=where, prefix=f"{full}.")
        elif isinstance(base.get(key), float) and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-3 as a string
                base[key] = float(value)
            except ValueError:
                raise ConfigError(f"{where}: '{full}' must be a number, got {value!r}") from None
        else:
            base[key] = value


def save_config(config: dict, path: Path) -> None:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
