"""Reading ``frameavg train`` checkpoints without Lightning: ``read_checkpoint`` (no pickles
executed) and ``load_trained_model`` (network, normaliser and records, for inference).

``restore`` puts a checkpoint's weights into any module whose attributes ``net`` and
``normalizer`` are those of ``AtomisticTask`` (state-dict keys ``net.*``, ``normalizer.*``): the
Lightning-free ``TrainedModel`` here, the task itself in ``training.run.load_task``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from frameavg.errors import ConfigError, FrameavgError
from frameavg.training.config import checkpoint_config
from frameavg.training.config_sections import RunConfig
from frameavg.training.network import TrainedModel


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


def read_config(checkpoint: dict, path) -> RunConfig:
    """The checked config of a checkpoint read by ``read_checkpoint``."""
    return checkpoint_config(checkpoint["hyper_parameters"]["config"], where=str(path))


def instantiate(cls, config: RunConfig, path):
    """``cls(config)``; ``FrameavgError`` naming ``path`` if the config builds no model."""
    try:
        return cls(config)
    except (ConfigError, TypeError, KeyError) as exc:
        raise FrameavgError(f"{path}: the checkpoint's config does not build a model ({exc})") from None


def restore(module: nn.Module, checkpoint: dict, path) -> nn.Module:
    """Load the checkpoint's weights into ``module`` (float64 weights kept for a 64-true run), set
    its ``training_elements`` and ``precision_record``, and return it in eval mode. Weights of
    another shape, missing or unexpected keys are a ``FrameavgError``."""
    state = checkpoint["state_dict"]
    record = (checkpoint.get("frameavg") or {}).get("precision") or {}
    if record.get("used") == "64-true":  # weights stay float64 (not rounded on loading)
        module.net.double()
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items() if isinstance(t, torch.Tensor)}
    wrong = [f"{name} {tuple(t.shape)} vs {shapes[name]}" for name, t in state.items()
             if name in shapes and isinstance(t, torch.Tensor) and tuple(t.shape) != shapes[name]]
    if wrong:
        raise FrameavgError(f"{path}: weights do not fit the checkpoint's model config ({len(wrong)} tensors, "
                            f"e.g. {wrong[0]}; was the checkpoint edited or its config changed?)")
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FrameavgError(
            f"{path}: checkpoint does not match its model config "
            f"(missing {len(missing)} keys e.g. {missing[:3]}, unexpected {len(unexpected)} e.g. {unexpected[:3]})"
        )
    module.training_elements = (checkpoint.get("frameavg") or {}).get("training_elements")
    module.precision_record = record or None
    return module.eval()


def load_trained_model(path: str | os.PathLike) -> TrainedModel:
    """The ``TrainedModel`` (network, normaliser, config, training elements, precision record) of
    a checkpoint, read without executing pickles and without importing Lightning."""
    checkpoint = read_checkpoint(path)
    return restore(instantiate(TrainedModel, read_config(checkpoint, path), path), checkpoint, path)
