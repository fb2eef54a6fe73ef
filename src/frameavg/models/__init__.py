"""Models: ``forward(batch) -> {"energy": [B], "forces": [N,3], ...}``, built by name from configs."""

from __future__ import annotations

import difflib
import inspect

from torch import nn

from frameavg.errors import ConfigError
from frameavg.models.dimenetpp import DimeNetPlusPlus
from frameavg.models.escn import ESCN
from frameavg.models.faenet import FAENet
from frameavg.models.painn import PaiNN
from frameavg.models.raw_mpnn import RawCoordinateMPNN
from frameavg.models.schnet import SchNet

#: Model classes by configuration name.
MODELS: dict[str, type[nn.Module]] = {
    "faenet": FAENet,
    "escn": ESCN,
    "raw-mpnn": RawCoordinateMPNN,
    "schnet": SchNet,
    "dimenetpp": DimeNetPlusPlus,
    "painn": PaiNN,
}


def build_model(name: str, **kwargs) -> nn.Module:
    """Instantiate the model registered as ``name`` with its constructor arguments."""
    key = str(name).lower()
    if key not in MODELS:
        close = difflib.get_close_matches(key, MODELS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; available: {', '.join(sorted(MODELS))}")
    accepted = [p for p in inspect.signature(MODELS[key].__init__).parameters if p != "self"]
    for argument in kwargs:
        if argument not in accepted:
            close = difflib.get_close_matches(argument, accepted, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"model {name!r} has no argument {argument!r}{hint}")
    try:
        return MODELS[key](**kwargs)
    except TypeError as exc:  # a value of the wrong type deep in a constructor
        raise ConfigError(f"model {name!r}: {exc}") from None


__all__ = ["DimeNetPlusPlus", "FAENet", "MODELS", "RawCoordinateMPNN", "SchNet", "build_model"]
