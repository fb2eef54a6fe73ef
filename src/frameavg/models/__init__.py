"""Models: ``forward(batch) -> {"energy": [B], "forces": [N,3], ...}``, built by name from configs."""

from __future__ import annotations

import difflib

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
    try:
        return MODELS[key](**kwargs)
    except TypeError as exc:  # unknown keyword argument
        raise ConfigError(f"model {name!r}: {exc}") from exc


__all__ = ["DimeNetPlusPlus", "FAENet", "MODELS", "RawCoordinateMPNN", "SchNet", "build_model"]
