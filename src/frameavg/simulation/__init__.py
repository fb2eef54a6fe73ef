"""Simulation with trained models: an ASE calculator, batched relaxations (IS2RS), molecular dynamics.

* ``Potential``: a checkpoint (or model + normaliser) as batched energies/forces/stress in eV units.
* ``FrameavgCalculator``: the ASE calculator (Verlet neighbour list, frames at every call, stress).
* ``relax``: batched FIRE/LBFGS (ASE's algorithms) with a model or any ASE calculator.
* ``run_md``: NVE/Langevin/Bussi MD with drift and stability reports.

Names are imported on first use (PEP 562).
"""

from __future__ import annotations

from frameavg.lazy import lazy_namespace

_EXPORTS = {
    "Potential": "frameavg.simulation.potential",
    "FrameavgCalculator": "frameavg.simulation.calculator",
    "relax": "frameavg.simulation.relaxation",
    "RelaxStatus": "frameavg.simulation.relaxation",
    "run_md": "frameavg.simulation.md",
    "MDResult": "frameavg.simulation.md",
    "ADSORBML_LBFGS": "frameavg.simulation.optimizers",
}

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _EXPORTS)
