"""Frames: batched PCA frames, exact degeneracy handling, and the ``FrameAveraging`` wrapper.

See docs/frames.md for the math, the modes and measured symmetry errors. Names are imported on
first use (PEP 562): ``frameavg.frames.methods`` stays importable without torch.
"""

from __future__ import annotations

from frameavg.lazy import lazy_namespace

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

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS)
