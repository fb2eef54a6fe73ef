"""``FrameavgCalculator``: a trained frameavg model as an ASE calculator.

Unlike OCP's calculator, which rebuilds its radius graph at every call, the neighbour list is a
Verlet list with a skin (rebuilt only when an atom has moved more than skin/2 or the cell changed;
the edges always equal a fresh list), and the frames of frame averaging are recomputed at every
call from the current positions. Forces are −∂E/∂x of the frame-averaged energy (exact and
conservative: the derivative runs through the frames) unless ``direct_forces=True``; stress is the
strain derivative, for structures with a cell volume.

Example::

    from frameavg.simulation import FrameavgCalculator
    atoms.calc = FrameavgCalculator(checkpoint="runs/rmd17_ethanol/checkpoints/best.ckpt")
    atoms.get_potential_energy(), atoms.get_forces()
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ase.calculators.calculator import Calculator, CalculationFailed, PropertyNotImplementedError, all_changes

from frameavg.derivatives import matrix_to_voigt
from frameavg.errors import ConfigError, renamed_keyword
from frameavg.outputs import ENERGY, FORCES, STRESS
from frameavg.simulation.potential import Potential


class FrameavgCalculator(Calculator):
    """ASE calculator of a frameavg model.

    Args:
        checkpoint: path of a ``frameavg train`` checkpoint; or
        model + normalizer: a network in normalised units (e.g. a task's ``net``) and its
            ``EnergyNormalizer`` (None: the model predicts eV), with ``cutoff`` (default: the
            model's) and ``max_neighbors``; or
        potential: a ready ``Potential``.
        device: ``cpu`` or ``cuda``. dtype: ``float64`` (default) or ``float32``.
        frame_method: evaluation frame method of frame-averaged models (default ``auto``: ``all``,
            exact, or ``learned`` for models trained with learned frames); ``frames=``: its old name.
        direct_forces: use the model's force head instead of −∂E/∂x (not conservative).
        skin: Verlet skin of the neighbour list, Å (0: rebuild at every call).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, checkpoint=None, *, model=None, normalizer=None, potential: Potential | None = None,
                 cutoff: float | None = None, max_neighbors: int | None = None, device: str = "cpu",
                 dtype: str | torch.dtype = "float64", precision: str | None = None, frame_method: str | None = "auto",
                 direct_forces: bool = False, skin: float = 0.5, frames: str | None = None, **kwargs):
        super().__init__(**kwargs)
        frame_method = renamed_keyword(frames, "frames", "frame_method", frame_method)
        options = dict(device=device, dtype=dtype, precision=precision, frame_method=frame_method,
                       direct_forces=direct_forces)
        if sum(x is not None for x in (checkpoint, model, potential)) != 1:
            raise ConfigError("give exactly one of checkpoint=, model= (with normalizer=) or potential=")
        if potential is not None:
            self.potential = potential
        elif checkpoint is not None:
            self.potential = Potential.from_checkpoint(checkpoint, **options)
        else:
            cutoff = cutoff if cutoff is not None else getattr(getattr(model, "model", model), "cutoff", None)
            if cutoff is None:
                raise ConfigError("model= needs cutoff= (the neighbour-list radius the model expects)")
            self.potential = Potential(model, normalizer, cutoff=cutoff, max_neighbors=max_neighbors, **options)
        if self.potential.direct_forces and self.potential.has_direct_forces:
            warnings.warn("direct forces are a model head, not −∂E/∂x: they are not conservative "
                          "(energy drifts in molecular dynamics)", stacklevel=2)
        self.neighbors = self.potential.neighbors.verlet_list(skin)

    def check_state(self, atoms, tol=1e-15):
        """ASE's changes, plus tags (models embed them; ASE's calculators do not watch them)."""
        changes = super().check_state(atoms, tol=tol)
        if self.atoms is not None and not np.array_equal(self.atoms.get_tags(), atoms.get_tags()):
            changes.append("tags")
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        data = self.potential.to_data(self.atoms, source="atoms")
        want_stress = "stress" in properties
        if want_stress and not (bool(data.pbc.all()) and abs(float(torch.linalg.det(data.cell[0].double()))) > 0):
            raise PropertyNotImplementedError("stress needs a structure periodic along x, y and z (a cell volume)")
        data.edge_index, data.cell_offsets = self.neighbors.edges(data.pos, data.cell[0], data.pbc[0])
        out = self.potential(self.potential.batch([data]), forces=True, stress=want_stress)
        energy = float(out[ENERGY][0])
        forces = out[FORCES].cpu().numpy()
        if not (np.isfinite(energy) and np.isfinite(forces).all()):
            raise CalculationFailed("the model predicts a non-finite energy or forces for this structure")
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if want_stress:
            self.results["stress"] = matrix_to_voigt(out[STRESS][0]).cpu().numpy()
