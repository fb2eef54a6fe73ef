"""Models: ``forward(batch) -> {"energy": [B], "forces": [N,3], ...}``, built by name from configs.

``@register_model("name")`` on a model class adds it to ``MODELS`` (the built-in models below and
your own, from a plugin module: see docs/extending.md).
"""

from __future__ import annotations

import inspect

from torch import nn

from frameavg.errors import ConfigError, did_you_mean
from frameavg.models.dimenetpp import DimeNetPlusPlus
from frameavg.models.escn import ESCN
from frameavg.models.faenet import FAENet
from frameavg.models.painn import PaiNN
from frameavg.models.raw_mpnn import RawCoordinateMPNN
from frameavg.models.schnet import SchNet

#: Model classes by configuration name (lower case), filled by ``register_model``.
MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str, *, replace: bool = False):
    """Class decorator registering an ``nn.Module`` subclass as model ``name`` (``model.name`` in
    configs, case-insensitive). A name already taken by another class is a ``ConfigError`` unless
    ``replace``; registering the same class again (a re-imported module) is a no-op."""
    key = str(name).strip().lower()
    if not key:
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")

    def decorate(cls):
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise ConfigError(f"register_model({name!r}) decorates an nn.Module subclass, got {cls!r}")
        old = MODELS.get(key)
        if old is not None and not replace and _qualified(old) != _qualified(cls):
            raise ConfigError(f"model {key!r} is already registered ({_qualified(old)}); choose another name "
                              f"or pass replace=True to replace it by {_qualified(cls)}")
        MODELS[key] = cls
        return cls

    return decorate


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


for _name, _cls in (("faenet", FAENet), ("escn", ESCN), ("raw-mpnn", RawCoordinateMPNN), ("schnet", SchNet),
                    ("dimenetpp", DimeNetPlusPlus), ("painn", PaiNN)):
    register_model(_name)(_cls)
del _name, _cls


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiate the model registered as ``name`` with its constructor arguments."""
    key = str(name).lower()
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}{did_you_mean(key, MODELS)} (available: {', '.join(sorted(MODELS))})")
    accepted = [p for p in inspect.signature(MODELS[key].__init__).parameters if p != "self"]
    for argument in kwargs:
        if argument not in accepted:
            raise ConfigError(f"model {name!r} has no argument {argument!r}{did_you_mean(argument, accepted)}")
    try:
        return MODELS[key](**kwargs)
    except TypeError as exc:  # a value of the wrong type deep in a constructor
        raise ConfigError(f"model {name!r}: {exc}") from None


__all__ = ["DimeNetPlusPlus", "FAENet", "MODELS", "RawCoordinateMPNN", "SchNet", "build_model", "register_model"]
