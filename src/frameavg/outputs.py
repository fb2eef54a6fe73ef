"""Names of model outputs and labels, in one place.

Every model returns a dict keyed by these names; FrameAveraging, the training module, the metrics,
the ASE calculator and the relaxation engine read them from here.

=================  ==========  =============================================================
name               shape       meaning
=================  ==========  =============================================================
``energy``         [B]         eV
``forces``         [N,3]       eV/Å: the forces a caller asked for (conservative −∂E/∂x, or a
                               model's direct head)
``gradient_forces``[N,3]       eV/Å: −∂E/∂x when ``forces`` holds a direct head's prediction
``direct_forces``  [N,3]       eV/Å: a direct head's prediction when ``forces`` holds −∂E/∂x
``dipole``         [B,3]       e·Å (a per-graph vector)
``denoising``      [N,3]       a denoising head's prediction (the added noise / σ, or the
                               displacement to the relaxed structure, Å); training only
``stress``         [B,3,3]     eV/Å³, ASE's sign: (1/V) ∂E/∂ε (positive under tension)
``virial``         [B,3,3]     eV: −∂E/∂ε
=================  ==========  =============================================================

How ``forces`` is produced is one vocabulary, :data:`FORCE_MODES`, shared by the models'
``regress_forces`` and ``FrameAveraging(forces=...)``:

* ``from_energy``: conservative forces −∂E/∂x;
* ``direct``: a direct head's prediction (for ``FrameAveraging``: the model's ``forces`` output,
  rotated back);
* ``direct_with_gradient_target``: the direct prediction in ``forces`` and −∂E/∂x beside it in
  ``gradient_forces`` (detached in a model; FAENet's S2EF training mode);
* None: no forces.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import Enum, StrEnum

from frameavg.errors import ConfigError

ENERGY = "energy"
FORCES = "forces"
GRADIENT_FORCES = "gradient_forces"
STRESS = "stress"
VIRIAL = "virial"
DIRECT_FORCES = "direct_forces"
DIPOLE = "dipole"
DENOISING = "denoising"
#: A per-atom scalar [N] whose −∂(Σ)/∂x is the denoising prediction of invariant models.
DENOISING_POTENTIAL = "denoising_potential"

class ForceMode(StrEnum):
    """How ``forces`` is produced (see the module docstring). Members equal their names as
    strings (``ForceMode.DIRECT == "direct"``), so configs and checkpoints keep plain text."""

    FROM_ENERGY = "from_energy"
    DIRECT = "direct"
    DIRECT_WITH_GRADIENT_TARGET = "direct_with_gradient_target"


FROM_ENERGY, DIRECT, DIRECT_WITH_GRADIENT_TARGET = ForceMode.FROM_ENERGY, ForceMode.DIRECT, ForceMode.DIRECT_WITH_GRADIENT_TARGET
#: How ``forces`` is produced (see the module docstring); None: no forces.
FORCE_MODES = (FROM_ENERGY, DIRECT, DIRECT_WITH_GRADIENT_TARGET, None)
#: The modes whose ``forces`` come from a direct head.
DIRECT_MODES = (DIRECT, DIRECT_WITH_GRADIENT_TARGET)
#: Spellings of earlier releases, still accepted with a deprecation warning.
LEGACY_FORCE_MODES = {"model": DIRECT, "gradient": FROM_ENERGY, "both": DIRECT_WITH_GRADIENT_TARGET}


def force_mode(value, name: str = "regress_forces", allowed: tuple = FORCE_MODES, *,
               legacy: bool = False) -> ForceMode | None:
    """``value`` as a member of ``allowed`` (a subset of :data:`FORCE_MODES`): ``""``, ``"none"``,
    ``"null"`` and False mean None; with ``legacy`` (``FrameAveraging(forces=...)``), the
    spellings ``model``/``gradient``/``both`` of earlier releases map to ``direct``/
    ``from_energy``/``direct_with_gradient_target`` with a ``FutureWarning``."""
    if value in ("", "none", "null", False):
        value = None
    if legacy and isinstance(value, str) and value in LEGACY_FORCE_MODES:
        new = LEGACY_FORCE_MODES[value]
        warnings.warn(f"{name}={value!r} is deprecated; write {str(new)!r}", FutureWarning, stacklevel=3)
        value = new
    if value is True or value not in allowed:
        choices = ", ".join(repr(None if mode is None else str(mode)) for mode in allowed)
        raise ConfigError(f"{name} must be one of {choices}, got {value!r}")
    return None if value is None else ForceMode(value)


class Level(str, Enum):
    """What one row of an output belongs to."""

    GRAPH = "graph"
    ATOM = "atom"
    EDGE = "edge"


class Rank(str, Enum):
    """How an output turns under a rotation R: unchanged, R v, or R T Rᵀ."""

    SCALAR = "scalar"
    VECTOR = "vector"
    TENSOR = "tensor"


@dataclass(frozen=True)
class OutputKind:
    """Level, rank and unit of a named output (shapes: [rows], [rows, 3] or [rows, 3, 3])."""

    level: Level
    rank: Rank
    unit: str


#: Every named output's kind; frame averaging and the metrics read these, never a tensor's size.
OUTPUT_KINDS = {
    ENERGY: OutputKind(Level.GRAPH, Rank.SCALAR, "eV"),
    FORCES: OutputKind(Level.ATOM, Rank.VECTOR, "eV/Å"),
    GRADIENT_FORCES: OutputKind(Level.ATOM, Rank.VECTOR, "eV/Å"),
    DIRECT_FORCES: OutputKind(Level.ATOM, Rank.VECTOR, "eV/Å"),
    DIPOLE: OutputKind(Level.GRAPH, Rank.VECTOR, "e·Å"),
    DENOISING: OutputKind(Level.ATOM, Rank.VECTOR, "Å"),
    DENOISING_POTENTIAL: OutputKind(Level.ATOM, Rank.SCALAR, "eV"),
    STRESS: OutputKind(Level.GRAPH, Rank.TENSOR, "eV/Å³"),
    VIRIAL: OutputKind(Level.GRAPH, Rank.TENSOR, "eV"),
}
#: Vector outputs, rotated back by FrameAveraging.
VECTOR_OUTPUTS = tuple(name for name, kind in OUTPUT_KINDS.items() if kind.rank is Rank.VECTOR)
#: Rank-2 tensor outputs, rotated back as U T Uᵀ.
TENSOR_OUTPUTS = tuple(name for name, kind in OUTPUT_KINDS.items() if kind.rank is Rank.TENSOR)
