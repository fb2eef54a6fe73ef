"""Training configuration: YAML files with defaults, dotted overrides and typo detection.

A config is a nested dict whose sections and keys must exist in ``DEFAULTS`` (an unknown key is a
``ConfigError`` that suggests the closest valid one). ``model`` keys are checked against the
model's constructor instead, and ``trainer`` keys are passed to ``lightning.Trainer``. Keys of
earlier releases (``RENAMED``) are still read, with a ``FutureWarning``; ``plugins`` names modules
imported before the model and the data are looked up (see docs/extending.md).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from frameavg.errors import ConfigError, did_you_mean
from frameavg.frames.methods import FRAME_DIMS as _FA_DIMS, METHODS as _FA_METHODS, PERIODIC_FRAMES
from frameavg.frames.methods import SAMPLED as _FA_SAMPLED
from frameavg.precision import ACCEPTED as PRECISION_NAMES

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "run_dir": "runs",  # the run goes to run_dir/name
    "plugins": [],  # modules to import first: they register their own models and readers
    "model": {"name": "faenet"},  # other keys: the model's constructor arguments
    "frames": {
        "dims": "3D",  # 3D | 2D | none (no frame averaging)
        "train": "stochastic",  # frame method in training: all | stochastic | det | DA | se3-... variants
        "eval": "all",  # frame method in validation/test/predict
        # frames of periodic graphs: lattice (one frame from the reduced cell, constant at fixed cell) |
        # lattice-symmetric (the lattice's frame set: also invariant to how the cell is written) | cloud
        # (PCA of the frame cloud; the default of checkpoints saved before this key existed)
        "periodic": "lattice",
        # weighted frames whose average is continuous in the positions (frames.smooth); checkpoints
        # saved before this key existed: false
        "continuous": True,
        # learned frames (train/eval: learned | se3-learned): options of the canonicaliser
        # (channels, num_layers, num_rbf), see frameavg.frames.learned
        "canonicalizer": {},
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
        "max_edges_per_atom": 2000,  # memory guard of the neighbour lists (see data.neighbors)
        # fraction of the available memory one batch may use by the estimate of data.budget (batches
        # of every evaluation are cut to fit; eval_batch_size is an upper bound)
        "memory_fraction": 0.5,
    },
    "targets": {"energy": True, "forces": False, "stress": False},
    # auxiliary denoising (Noisy Nodes, Godwin et al. 2022), training batches only; see docs/denoising.md
    "denoise": {
        "mode": "none",  # none | noisy_nodes
        "sigma": 0.1,  # Å, std of the Gaussian noise on the positions
        "prob": 1.0,  # fraction of training batches that are noised
        "corrupt_ratio": 1.0,  # fraction of the free (non-fixed) atoms of a noised batch that move
        "weight": 0.1,  # loss weight at the start ...
        "weight_final": None,  # ... decayed linearly to this at the end of the schedule (None: constant)
        "target": "noise",  # noise: predict eps / sigma | relaxed: predict pos_relaxed - noised pos (Å)
        "energy_on_noised": "original",  # original: energy loss against the clean label | skip
        "seed": None,  # seed of the noise generator (None: the run's seed)
    },
    "loss": {
        "energy": "mae",  # mae | mse
        "forces": "l2mae",  # l2mae | mae | mse
        "energy_weight": 1.0,
        "forces_weight": 100.0,
        "gradient_weight": 0.0,  # direct forces vs -dE/dx of the model (direct_with_gradient_target)
        "conservation_weight": 0.0,  # -dE/dx of the model vs the reference forces
        "stress": "mae",  # mae | mse, over the 9 components (eV/Å³ labels, Voigt or 3x3)
        "stress_weight": 1.0,
        "train_on_free_atoms": True,
    },
    # std None: the training force RMS when forces are a target, else the energy residual std
    "normalize": {"energy": True, "element_references": True, "mean": None, "std": None},
    "optim": {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "scheduler": "cosine",  # cosine | plateau | constant
        "warmup_steps": 0,
        # or the warm-up as a fraction of the schedule: of the time budget when there is one
        "warmup_fraction": 0.0,
        "min_lr_ratio": 0.01,
        "plateau_patience": 5,
        "plateau_factor": 0.5,
        "clip_grad": 10.0,
        "ema_decay": None,
        "max_epochs": 10,
        "max_time_minutes": None,
        # the clock of that budget: wall (elapsed time) or cpu (this process's CPU time, so runs
        # sharing cores get equal compute)
        "budget_clock": "wall",
        # with max_time_minutes (cosine or constant schedule): validate only every n epochs, n chosen
        # so that validation takes at most this fraction of the training time
        "max_val_time_fraction": 0.1,
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
        "threads": None,  # torch threads per process (None: the free cores, see run.default_threads)
    },
}

FREE_SECTIONS = ("model", "trainer")

FRAME_DIMS = (*_FA_DIMS, "none")
FRAME_METHODS = (*_FA_METHODS, *_FA_SAMPLED)  # frameavg.frames.methods: the one list of frame methods

#: Keys of earlier releases -> their names now (dotted). Read with a ``FutureWarning``; giving
#: both spellings with different values is a ``ConfigError``.
RENAMED: dict[str, str] = {"frames.frames": "frames.dims"}

#: Model arguments whose default for new runs (``load_config``) is not the constructor's (which
#: reproduces the original package): FAENet with a smooth cutoff envelope and a per-atom
#: LayerNorm, which stays well-conditioned on crystals (docs/faenet.md).
NEW_RUN_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"faenet": {"envelope": "polynomial", "norm": "layer"}}
#: What a checkpoint's saved config without these keys was trained with (``checkpoint_config``).
SAVED_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"faenet": {"envelope": "none", "norm": "graph"}}


def _model_choices() -> dict[str, dict[str, tuple]]:
    """Rules of the model keys with fixed values, checked like ``SCHEMA`` (imports torch)."""
    from frameavg.models.blocks import ENVELOPES, NORMS

    return {"faenet": {"envelope": _choice(*ENVELOPES), "envelope_exponent": _int(1), "norm": _choice(*NORMS)}}


def _int(low=None, high=None, none=False):
    return ("int", low, high, none)


def _float(low=None, high=None, none=False, open_low=False):
    return ("float", low, high, none, open_low)


def _choice(*options, none=False):
    return ("choice", options, none)


_BOOL, _STR, _STR_OR_NONE, _MAP = ("bool",), ("str", False), ("str", True), ("map",)
_BOOL_OR_PATH, _STR_LIST = ("bool_or_path",), ("str_list",)

#: Type and range of every fixed key, checked by ``validate_config`` when a config is loaded (before
#: any run folder exists). ``model`` keys are checked against the model's constructor by
#: ``validate_model_section``; other ``trainer`` keys go to ``lightning.Trainer`` as given.
SCHEMA: dict[str, tuple] = {
    "name": _STR, "seed": _int(), "run_dir": _STR, "plugins": _STR_LIST,
    "frames.dims": _choice(*FRAME_DIMS), "frames.train": _choice(*FRAME_METHODS),
    "frames.eval": _choice(*FRAME_METHODS), "frames.periodic": _choice(*PERIODIC_FRAMES),
    "frames.continuous": _BOOL,
    "data.train": _STR_OR_NONE, "data.val": _STR_OR_NONE, "data.test": _STR_OR_NONE,
    "data.val_fraction": _float(0.0, 1.0), "data.test_fraction": _float(0.0, 1.0), "data.split_seed": _int(),
    "data.max_train": _int(1, none=True), "data.format": _STR_OR_NONE, "data.keys": _MAP, "data.options": _MAP,
    "data.trusted": _BOOL, "data.cutoff": _float(0.0, open_low=True), "data.max_neighbors": _int(1, none=True),
    "data.batch_size": _int(1), "data.eval_batch_size": _int(1), "data.num_workers": _int(0),
    "data.max_edges_per_atom": _float(0.0, none=True, open_low=True),
    "data.memory_fraction": _float(0.0, 1.0, open_low=True),
    "targets.energy": _BOOL, "targets.forces": _BOOL, "targets.stress": _BOOL,
    "loss.stress": _choice("mae", "mse"), "loss.stress_weight": _float(0.0),
    "loss.energy": _choice("mae", "mse"), "loss.forces": _choice("l2mae", "mae", "mse"),
    "loss.energy_weight": _float(0.0), "loss.forces_weight": _float(0.0), "loss.gradient_weight": _float(0.0),
    "loss.conservation_weight": _float(0.0), "loss.train_on_free_atoms": _BOOL,
    "normalize.energy": _BOOL, "normalize.element_references": _BOOL_OR_PATH, "normalize.mean": _float(none=True),
    "normalize.std": _float(0.0, none=True, open_low=True),
    "optim.lr": _float(0.0, open_low=True), "optim.weight_decay": _float(0.0),
    "optim.scheduler": _choice("cosine", "plateau", "constant"), "optim.warmup_steps": _int(0),
    "optim.warmup_fraction": _float(0.0, 1.0),
    "optim.min_lr_ratio": _float(0.0, 1.0), "optim.plateau_patience": _int(0),
    "optim.plateau_factor": _float(0.0, 1.0, open_low=True), "optim.clip_grad": _float(0.0, none=True),
    "optim.ema_decay": _float(0.0, 1.0, none=True, open_low=True), "optim.max_epochs": _int(1),
    "optim.max_time_minutes": _float(0.0, none=True, open_low=True),
    "optim.budget_clock": _choice("wall", "cpu"),
    "optim.max_val_time_fraction": _float(0.0, 1.0, open_low=True),
    "optim.early_stopping_patience": _int(1, none=True), "optim.monitor": _STR,
    "trainer.num_nodes": _int(1), "trainer.precision": _choice(*PRECISION_NAMES),
    "trainer.log_every_n_steps": _int(1), "trainer.enable_progress_bar": _BOOL,
    "trainer.checkpoint_every_n_steps": _int(1, none=True), "trainer.threads": _int(1, none=True),
    "denoise.mode": _choice("none", "noisy_nodes"), "denoise.sigma": _float(0.0, open_low=True),
    "denoise.prob": _float(0.0, 1.0, open_low=True), "denoise.corrupt_ratio": _float(0.0, 1.0, open_low=True),
    "denoise.weight": _float(0.0), "denoise.weight_final": _float(0.0, none=True),
    "denoise.target": _choice("noise", "relaxed"), "denoise.energy_on_noised": _choice("original", "skip"),
    "denoise.seed": _int(none=True),
}


def validate_config(config: dict, where: str = "config") -> None:
    """Check every ``SCHEMA`` key's type and range; ``ConfigError`` naming the key otherwise.
    Integral floats (``10.0``) become ints, numbers written as strings (``"1e-3"``) floats."""
    for dotted, rule in SCHEMA.items():
        section, _, key = dotted.rpartition(".")
        node = config
        for part in section.split(".") if section else ():
            node = node[part]
        if key in node:
            node[key] = _checked(node[key], rule, f"{where}: '{dotted}'")
    optim = config.get("optim", {})
    if optim.get("warmup_steps") and optim.get("warmup_fraction"):
        raise ConfigError(f"{where}: set one of 'optim.warmup_steps' and 'optim.warmup_fraction', not both")
    devices = config.get("trainer", {}).get("devices", 1)
    if not (isinstance(devices, (str, list)) or (isinstance(devices, int) and not isinstance(devices, bool) and devices != 0)):
        raise ConfigError(f"{where}: 'trainer.devices' must be a positive integer, -1, 'auto' or a list, got {devices!r}")


def _checked(value, rule, name):
    kind = rule[0]
    if kind == "str_list":
        if value is None:
            return []
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                not all(isinstance(item, str) and item.strip() for item in value):
            hint = f"; write [{value}]" if isinstance(value, str) and value.strip() else ""
            raise ConfigError(f"{name} must be a list of module names (non-empty strings), got {value!r}{hint}")
        return [item.strip() for item in value]
    if kind == "bool_or_path":
        if not (isinstance(value, bool) or (isinstance(value, str) and value)):
            raise ConfigError(f"{name} must be true, false or a file of isolated-atom energies, got {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if kind == "str":
        if value is None and rule[1]:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        return value
    if kind == "map":
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return value
    if kind == "choice":
        options, none = rule[1], rule[2]
        if value is None and none:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in options:
            return str(value)  # frames.train: 2 (k random frames) written as a number
        if value not in options:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, options))}, got {value!r}"
                              f"{did_you_mean(value, options)}")
        return value
    if kind == "int":
        _, low, high, none = rule
        if value is None and none:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer{_range(low, high)}, got {value!r}")
    else:
        _, low, high, none, open_low = rule
        if value is None and none:
            return None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise ConfigError(f"{name} must be a number{_range(low, high, open_low)}, got {value!r}")
        value = float(value)
        if open_low and low is not None and value <= low:
            raise ConfigError(f"{name} must be > {low:g}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{name} must be{_range(low, high)}, got {value!r}")
    return value


def _range(low, high, open_low=False) -> str:
    if low is not None and high is not None:
        return f" in [{low:g}, {high:g}]"
    if low is not None:
        return f" {'>' if open_low else '>='} {low:g}"
    return ""


def validate_model_section(config: dict, where: str = "config") -> None:
    """The model name exists and every ``model`` key is an argument of its constructor (with a
    "did you mean" hint); imports the config's ``plugins``, then the model registry."""
    import inspect

    from frameavg.models import MODELS
    from frameavg.plugins import import_plugins

    import_plugins(config.get("plugins") or (), where=where)
    model = config["model"]
    name = str(model.get("name", "")).lower()
    if name not in MODELS:
        raise ConfigError(f"{where}: unknown model '{model.get('name')}'{did_you_mean(name, MODELS)} "
                          f"(available: {', '.join(sorted(MODELS))})")
    if model.get("init_from") is not None and not Path(str(model["init_from"])).is_file():
        raise ConfigError(f"{where}: model.init_from: checkpoint not found: {model['init_from']}")
    denoising = (config.get("denoise") or {}).get("mode", "none") != "none"
    if denoising and getattr(MODELS[name], "denoising_kind", None) is None:
        supported = sorted(key for key, cls in MODELS.items() if getattr(cls, "denoising_kind", None))
        raise ConfigError(f"{where}: denoise.mode: model '{name}' has no denoising head "
                          f"(models with one: {', '.join(supported)})")
    parameters = inspect.signature(MODELS[name].__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [p for p in parameters if p != "self"]
    for key in model:
        if key not in ("name", "init_from") and key not in accepted:
            raise ConfigError(f"{where}: model '{name}' has no argument '{key}'{did_you_mean(key, accepted, 'model.')}")
    for key, rule in _model_choices().get(name, {}).items():
        if key in model:
            model[key] = _checked(model[key], rule, f"{where}: 'model.{key}'")


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
        user = upgrade_keys(user, where=str(path))
        _data_paths_relative_to(user, path.parent)
        merge(config, user, where=str(path))
    pairs = parse_overrides(overrides)
    _check_spellings(pairs)
    for key, value in pairs:
        merge(config, upgrade_keys(nest(key, value), where="override"), where="override")
    _model_defaults(config, NEW_RUN_MODEL_DEFAULTS)
    validate_config(config, where=str(path) if path is not None else "config")
    return config


def _model_defaults(config: dict, defaults: dict[str, dict[str, Any]]) -> None:
    """Add ``defaults[model name]`` to ``config['model']`` where the key is missing (in place)."""
    model = config.get("model")
    if isinstance(model, dict):
        for key, value in defaults.get(str(model.get("name", "")).lower(), {}).items():
            model.setdefault(key, value)


#: data keys that name files or folders; in a config file, a relative one is relative to the file
DATA_PATH_KEYS = ("train", "val", "test")


def _data_paths_relative_to(user: dict, folder: Path) -> None:
    """Make the relative data paths of a config file's mapping relative to ``folder`` (the config
    file's folder), in place: the config means the same data from any working directory. Left as
    written: absolute paths, ``shipped:NAME`` and ``qm9pack`` (names, not paths) and non-strings
    (validation reports those). Paths given as overrides stay relative to the working directory."""
    data = user.get("data")
    if not isinstance(data, dict):
        return
    for key in DATA_PATH_KEYS:
        value = data.get(key)
        if not isinstance(value, str) or not value or value == "qm9pack" or value.startswith("shipped:"):
            continue
        if not Path(value).expanduser().is_absolute():
            data[key] = os.path.normpath(folder.absolute() / value)


def checkpoint_config(config: dict, where: str = "checkpoint") -> dict:
    """The config saved in a checkpoint, by this release or an earlier one, ready to rebuild its
    model: a copy with the ``RENAMED`` keys under their names now (silently: the checkpoint is not
    the user's to edit) and ``plugins`` (default none) imported, so that its model and readers are
    registered. Model keys a saved config lacks get the value it was trained with
    (``SAVED_MODEL_DEFAULTS``: FAENet without envelope, with GraphNorm), not today's default."""
    from frameavg.plugins import import_plugins

    if not isinstance(config, dict):
        raise ConfigError(f"{where}: the saved config is not a mapping")
    config = upgrade_keys(copy.deepcopy(config), where=where, warn=False)
    _model_defaults(config, SAVED_MODEL_DEFAULTS)
    config["plugins"] = _checked(config.get("plugins"), _STR_LIST, f"{where}: 'plugins'")
    import_plugins(config["plugins"], where=where)
    return config


def upgrade_keys(config: dict, *, where: str, warn: bool = True) -> dict:
    """``config`` (nested, as written) with the keys of ``RENAMED`` moved to their names now, in
    place; a one-line ``FutureWarning`` per old key when ``warn``. Both spellings with different
    values: ``ConfigError``."""
    for old, new in RENAMED.items():
        *old_path, old_key = old.split(".")
        *new_path, new_key = new.split(".")
        node = _section(config, old_path)
        if node is None or old_key not in node:
            continue
        target = _section(config, new_path, create=True)
        if target is None:  # a part of the new name is not a mapping: merge reports it
            continue
        value = node[old_key]
        if new_key in target and target[new_key] != value:
            raise _disagree(where, old, new, value, target[new_key])
        if target is node and new_key not in node:  # renamed in place: the key keeps its position
            renamed = {new_key if key == old_key else key: item for key, item in node.items()}
            node.clear()
            node.update(renamed)
        else:
            del node[old_key]
            target[new_key] = value
        if warn:
            warnings.warn(f"{where}: '{old}' is deprecated; write '{new}'", FutureWarning, stacklevel=3)
    return config


def _section(config: dict, path: list[str], create: bool = False) -> dict | None:
    """The mapping at ``path`` in ``config`` (created when missing with ``create``; None if a part
    is missing or not a mapping)."""
    node = config
    for part in path:
        if create and isinstance(node, dict) and part not in node:
            node[part] = {}
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def _check_spellings(pairs) -> None:
    """``ConfigError`` when overrides set a key under its old and its new name to different values."""
    given = dict(pairs)  # the last value of each dotted key
    for old, new in RENAMED.items():
        if old in given and new in given and given[old] != given[new]:
            raise _disagree("override", old, new, given[old], given[new])


def _disagree(where: str, old: str, new: str, old_value, new_value) -> ConfigError:
    return ConfigError(f"{where}: '{old}' (the old name of '{new}') is {old_value!r} but '{new}' is "
                       f"{new_value!r}; keep only '{new}'")


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
            raise ConfigError(f"{where}: unknown config key '{full}'{did_you_mean(key, base, prefix)}")
        if isinstance(base.get(key), dict) and key not in ("keys", "options", "canonicalizer"):
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
    """Write ``config`` as YAML, atomically."""
    from frameavg.files import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
