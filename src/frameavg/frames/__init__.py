"""Frames: batched PCA frames, exact degeneracy handling, and the ``FrameAveraging`` wrapper.

See docs/frames.md for the math, the modes and measured symmetry errors. Names are imported on
first use (PEP 562): ``frameavg.frames.methods`` stays importable without torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FrameAveraging": "frameavg.frames.averaging",
    "average_outputs": "frameavg.frames.averaging",
    "expand_batch": "frameavg.frames.averaging",
    "DEGENERACY": "frameavg.frames.compute",
    "DEFAULT_TOL": "frameavg.frames.compute",
    "Frames": "frameavg.frames.compute",
    "compute_frames": "frameavg.frames.compute",
    "frames_for_batch": "frameavg.frames.compute",
    "FRAME_DIMS": "frameavg.frames.methods",
    "METHODS": "frameavg.frames.methods",
    "FrameMethod": "frameavg.frames.methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'frameavg.frames' has no attribute {name!r}")


def __dir__():
    return __all__
