"""Weights of the original FAENet (``faenet`` package, the authors' OCP fork) in ``frameavg.FAENet``,
and our own converted-checkpoint format.

Checkpoints are read with ``torch.load(weights_only=True)`` only: files that need arbitrary
unpickling are refused.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from frameavg.errors import ConfigError, DataError
from frameavg.models.faenet import FAENet, GROUP_ROWS, ORIGINAL_MAX_ATOMIC_NUMBER, PERIOD_ROWS

#: Format tag of checkpoints written by :func:`save_converted`.
CONVERTED_FORMAT = "frameavg.faenet"
CONVERTED_FORMAT_VERSION = 1

#: Constructor arguments of ``frameavg.FAENet`` (the original's, plus ``max_atomic_number``).
MODEL_ARGS = tuple(p for p in inspect.signature(FAENet.__init__).parameters if p != "self")

# OCP-fork model attributes that do not change the weights or the inference result.
_IGNORED_KEYS = {
    "name", "model", "model_name", "use_pbc", "otf_graph", "num_targets", "bond_feat_dim",
    "edge_embed_hidden", "att_heads", "dropout_lin", "dropout_edge", "dropout_lowest_layer",
    "first_trainable_layer", "frame_averaging", "fa_method", "fa_frames", "max_neighbors",
}
# OCP-fork attributes accepted only at the value that matches the original package's architecture.
_REQUIRED_VALUES = {
    "graph_rewiring": (None, "", False),
    "edge_embed_type": ("all_rij",),
    "deup_inference": (None, False),
}

_PREFIXES = ("module.", "model.")
_RENAMED = {"embed_block.phys_emb.properties": "embed_block.phys_properties"}
_ELEMENT_BUFFERS = ("embed_block.phys_emb.period", "embed_block.phys_emb.group")


def normalise_original_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments of ``FAENet`` from an original / OCP-fork model configuration."""
    config = dict(config)
    if isinstance(config.get("model"), Mapping):  # a full OCP config: model section
        config = dict(config["model"])
    if isinstance(config.get("model_attributes"), Mapping):  # older OCP configs
        config = dict(config["model_attributes"])
    out = {}
    for key, value in config.items():
        if key in _IGNORED_KEYS:  # before MODEL_ARGS: the fork's data-side max_neighbors is not ours
            continue
        if key in MODEL_ARGS:
            out[key] = value
        elif key in _REQUIRED_VALUES:
            if value not in _REQUIRED_VALUES[key]:
                raise ConfigError(
                    f"{key}={value!r} is an OCP-fork variant frameavg does not implement "
                    f"(supported: {_REQUIRED_VALUES[key]})"
                )
        else:
            raise ConfigError(f"unknown FAENet configuration key {key!r}; known keys: {', '.join(MODEL_ARGS)}")
    return out


def strip_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Remove the ``module.`` (DataParallel/DDP) and ``model.`` (Lightning) prefixes."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(_PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def load_original_state_dict(state_dict: Mapping[str, Tensor], config: Mapping[str, Any],
                             strict: bool = True) -> FAENet:
    """Build ``FAENet(**config)`` and load original weights into it (see module docstring)."""
    kwargs = normalise_original_config(config)
    kwargs.setdefault("max_atomic_number", ORIGINAL_MAX_ATOMIC_NUMBER)
    model = FAENet(**kwargs)
    weights = strip_prefixes(state_dict)
    _check_element_buffers(weights, model)
    mapped = {}
    for key, value in weights.items():
        if key in _ELEMENT_BUFFERS:
            continue
        mapped[_RENAMED.get(key, key)] = value
    own = model.state_dict()
    emb_key = "embed_block.emb.weight"
    if emb_key in mapped and emb_key in own and mapped[emb_key].shape[0] < own[emb_key].shape[0]:
        # A model with more element rows than the checkpoint keeps its own rows for heavier elements.
        rows = mapped[emb_key].shape[0]
        merged = own[emb_key].clone()
        merged[:rows] = mapped[emb_key]
        mapped[emb_key] = merged
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in mapped.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if mismatched:
        raise ConfigError("checkpoint does not match the configuration: " + "; ".join(mismatched[:6]))
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    if strict and (missing or unexpected):
        raise ConfigError(
            "checkpoint does not match the configuration: "
            + (f"missing {missing[:8]}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected {unexpected[:8]}" if unexpected else "")
        )
    model.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=False)
    return model


def _check_element_buffers(weights: Mapping[str, Tensor], model: FAENet) -> None:
    """The checkpoint's Z -> period/group rows must be the ones this model reads."""
    embed = model.embed_block
    if not embed.use_pg:
        return
    for key, ours, rows in (
        ("embed_block.phys_emb.period", embed.period_index, PERIOD_ROWS),
        ("embed_block.phys_emb.group", embed.group_index, GROUP_ROWS),
    ):
        theirs = weights.get(key)
        if theirs is None:
            continue
        n = min(theirs.shape[0], ORIGINAL_MAX_ATOMIC_NUMBER + 1)
        if not torch.equal(theirs[:n].long() % rows, ours[:n].cpu()):
            raise DataError(f"checkpoint buffer {key} assigns elements differently from frameavg's element table")


def split_checkpoint(obj: Any) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """(state_dict, model config or None) from a loaded checkpoint object of any known layout:
    a bare state dict, an OCP trainer checkpoint (``state_dict`` + ``config``), a Lightning
    checkpoint (``state_dict`` + ``hyper_parameters``) or a frameavg converted checkpoint."""
    if not isinstance(obj, Mapping):
        raise DataError(f"checkpoint holds a {type(obj).__name__}, not a dictionary of weights")
    if obj.get("format") == CONVERTED_FORMAT:
        return dict(obj["state_dict"]), dict(obj["config"])
    for key in ("state_dict", "model_state_dict", "model_state"):
        if isinstance(obj.get(key), Mapping):
            config = obj.get("config") or obj.get("hyper_parameters")
            return dict(obj[key]), (dict(config) if isinstance(config, Mapping) else None)
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj), None
    raise DataError(f"no state dict found in checkpoint (top-level keys: {sorted(map(str, obj))[:10]})")


def load_checkpoint_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with a clear error for unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such checkpoint file", source=str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError for corrupt zips, ...
        raise DataError(
            f"cannot read as a weights-only checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "frameavg never unpickles arbitrary objects",
            source=str(path),
        ) from exc


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A model configuration from YAML or JSON."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such configuration file")
    text = path.read_text()
    try:
        if path.suffix.lower() == ".json":
            config = json.loads(text)
        else:
            import yaml

            config = yaml.safe_load(text)
    except Exception as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(config, Mapping):
        raise ConfigError(f"{path}: expected a mapping of model arguments")
    return dict(config)


def model_config(model: FAENet, original_config: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments to rebuild ``model`` (plain types only)."""
    config = normalise_original_config(original_config)
    config["max_atomic_number"] = model.max_atomic_number
    if callable(config.get("act")):
        raise ConfigError("cannot save a model built with a callable activation; give its name")
    return config


def save_converted(model: FAENet, config: Mapping[str, Any], path: str | Path) -> None:
    """Write a frameavg FAENet checkpoint (loadable with ``weights_only=True``)."""
    torch.save(
        {
            "format": CONVERTED_FORMAT,
            "format_version": CONVERTED_FORMAT_VERSION,
            "config": model_config(model, config),
            "state_dict": model.state_dict(),
        },
        path,
    )


def load_converted(path: str | Path) -> FAENet:
    """A ``FAENet`` from a checkpoint written by :func:`save_converted`."""
    obj = load_checkpoint_file(path)
    if not isinstance(obj, Mapping) or obj.get("format") != CONVERTED_FORMAT:
        raise DataError("not a frameavg FAENet checkpoint (convert it with `frameavg convert-checkpoint`)",
                        source=str(path))
    model = FAENet(**obj["config"])
    model.load_state_dict(obj["state_dict"])
    return model


__all__ = [
    "load_original_state_dict",
    "normalise_original_config",
    "strip_prefixes",
    "split_checkpoint",
    "load_checkpoint_file",
    "read_config_file",
    "save_converted",
    "load_converted",
]
