"""Names of frame dimensions and averaging methods, parsed once into a small value object."""

from __future__ import annotations

from dataclasses import dataclass

from frameavg.errors import ConfigError

FRAME_DIMS = ("3D", "2D")
METHODS = ("all", "stochastic", "det", "DA", "learned", "se3-all", "se3-stochastic", "se3-det", "se3-DA",
           "se3-learned")
_KINDS = ("all", "stochastic", "det", "DA", "learned")
#: ``k`` random frames per graph: the names "2" .. "8" (and "se3-2" ...).
SAMPLE_COUNTS = tuple(range(2, 9))
#: Sources of the frames of periodic graphs (``FrameAveraging(periodic=...)``, config
#: ``frames.periodic``); see ``frames.lattice_frames``.
PERIODIC_FRAMES = ("lattice", "lattice-symmetric", "cloud")
SAMPLED = tuple(str(k) for k in SAMPLE_COUNTS) + tuple(f"se3-{k}" for k in SAMPLE_COUNTS)


@dataclass(frozen=True)
class FrameMethod:
    """How frames are used.

    kind: ``all`` (average over the whole frame set, exact), ``stochastic`` (one frame of the set
        per graph per call), ``det`` (the smallest subset that rotation-invariant rules single
        out; one frame for a generic structure) or ``DA`` (a uniformly random rotation per graph;
        data augmentation, no PCA) or ``learned`` (one frame per graph from a trained equivariant
        canonicaliser, ``frames.learned``; the PCA set where it is degenerate) or ``sample`` (``samples`` = k distinct frames of the set per
        graph per call, uniformly; all of them when the set is smaller; method names "2" .. "8").
    proper: keep only frames with det=+1 (SE(3)/SO(3) variants, prefix ``se3-``): outputs are then
        invariant to rotations but not to reflections.
    dim: ``3D`` (PCA of all three coordinates) or ``2D`` (PCA in x,y; z kept: slabs).
    """

    kind: str
    proper: bool
    dim: str
    samples: int = 1

    @classmethod
    def parse(cls, method: str, dim: str = "3D") -> "FrameMethod":
        if dim not in FRAME_DIMS:
            raise ConfigError(f"unknown frame dimension '{dim}' (choose from {', '.join(FRAME_DIMS)})")
        method = str(method)
        if method not in METHODS + SAMPLED:
            raise ConfigError(f"unknown frame method '{method}' (choose from {', '.join(METHODS)}, "
                              f"or k = 2..8 random frames: '2' ... '8', 'se3-2' ...)")
        proper = method.startswith("se3-")
        kind = method.removeprefix("se3-")
        if kind.isdigit():
            return cls(kind="sample", proper=proper, dim=dim, samples=int(kind))
        return cls(kind=kind, proper=proper, dim=dim)

    @property
    def name(self) -> str:
        return ("se3-" if self.proper else "") + (str(self.samples) if self.kind == "sample" else self.kind)

    def __str__(self) -> str:
        return f"{self.dim}/{self.name}"
