"""Frames: batched PCA frames, exact degeneracy handling, and the ``FrameAveraging`` wrapper.

See docs/frames.md for the math, the modes and measured symmetry errors.
"""

from frameavg.frames.averaging import FrameAveraging, average_outputs, expand_batch
from frameavg.frames.compute import DEGENERACY, DEFAULT_TOL, Frames, compute_frames, frames_for_batch
from frameavg.frames.methods import FRAME_DIMS, METHODS, FrameMethod

__all__ = [
    "DEGENERACY",
    "DEFAULT_TOL",
    "FRAME_DIMS",
    "METHODS",
    "FrameAveraging",
    "FrameMethod",
    "Frames",
    "average_outputs",
    "compute_frames",
    "expand_batch",
    "frames_for_batch",
]
