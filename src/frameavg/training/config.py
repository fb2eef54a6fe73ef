"""Training configuration files: YAML with defaults, dotted overrides, typo detection, and the
configs saved in checkpoints.

``load_config`` gives the *document* (a nested mapping: defaults <- file <- overrides), checked
against the typed sections of ``training.config_sections`` (which define every key's default,
type, range and unit; an unknown key is a ``ConfigError`` that suggests the closest valid one);
``RunConfig.from_dict`` (or ``load_run_config``) gives its typed form, which the code reads.
``model`` keys are checked against the model's constructor, and ``trainer`` keys beyond the
typed ones are passed to ``lightning.Trainer``. Keys of earlier releases (``RENAMED``) are still
read, with a ``FutureWarning``; ``plugins`` names modules imported before the model and the data
are looked up (see docs/extending.md).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from frameavg.errors import ConfigError, did_you_mean
from frameavg.training.config_sections import NEW_RUN_MODEL_DEFAULTS, SAVED_DEFAULTS, SAVED_MODEL_DEFAULTS, RunConfig

#: The document of a new run's defaults (derived from the typed sections: ``RunConfig().to_dict()``).
DEFAULTS: dict[str, Any] = RunConfig().to_dict()

FREE_SECTIONS = ("model", "trainer")

#: Keys of earlier releases -> their names now (dotted). Read with a ``FutureWarning``; giving
#: both spellings with different values is a ``ConfigError``.
RENAMED: dict[str, str] = {"frames.frames": "frames.dims"}


def validate_model_section(config, where: str = "config") -> None:
    """``RunConfig.check_model``: the model exists, takes every ``model`` key (with a did-you-mean
    hint), fits the neighbour list's cutoff and the frames; imports the config's ``plugins``."""
    RunConfig.of(config, where).check_model(where)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """Defaults <- YAML file <- overrides (``a.b=value`` or ``--a.b value`` pairs, YAML values):
    the document, checked and in canonical form (``load_run_config``: its typed form)."""
    return load_run_config(path, overrides).to_dict()


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """The typed config of ``load_config``: checked against the typed sections (an unknown key or
    a bad value is a ``ConfigError`` naming it), new-run model defaults added."""
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
    run = RunConfig.from_dict(config, where=str(path) if path is not None else "config")
    return run.replace(model=run.model.with_defaults(NEW_RUN_MODEL_DEFAULTS))


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


def checkpoint_config(config: dict, where: str = "checkpoint") -> RunConfig:
    """The typed config saved in a checkpoint, by this release or an earlier one, ready to rebuild
    its model: the ``RENAMED`` keys under their names now (silently: the checkpoint is not the
    user's to edit) and ``plugins`` (default none) imported, so that its model and readers are
    registered. Keys a saved config lacks get the value it was trained with (``SAVED_DEFAULTS``,
    ``SAVED_MODEL_DEFAULTS``: cloud frames of 6 Å, plain frame sets, FAENet without envelope and
    with GraphNorm), not today's default."""
    from frameavg.plugins import import_plugins

    if not isinstance(config, dict):
        raise ConfigError(f"{where}: the saved config is not a mapping")
    config = upgrade_keys(copy.deepcopy(config), where=where, warn=False)
    for dotted, value in SAVED_DEFAULTS.items():
        *path, key = dotted.split(".")
        section = _section(config, path, create=True)
        if section is not None:
            section.setdefault(key, value)
    run = RunConfig.from_dict(config, where)
    run = run.replace(model=run.model.with_defaults(SAVED_MODEL_DEFAULTS))
    import_plugins(run.plugins, where=where)
    return run


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
