"""Simulation with trained models: an ASE calculator, batched relaxations (IS2RS), molecular dynamics.

* ``Potential``: a checkpoint (or model + normaliser) as batched energies/forces/stress in eV units.
* ``FrameavgCalculator``: the ASE calculator (Verlet neighbour list, frames at every call, stress).
* ``relax``: batched FIRE/LBFGS (ASE's algorithms) with a model or any ASE calculator.
* ``run_md``: NVE/Langevin/Bussi MD with drift and stability reports.

Names are imported on first use (PEP 562).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Potential": "frameavg.simulation.potential",
    "FrameavgCalculator": "frameavg.simulation.calculator",
    "relax": "frameavg.simulation.relax",
    "run_md": "frameavg.simulation.md",
    "MDResult": "frameavg.simulation.md",
    "ADSORBML_LBFGS": "frameavg.simulation.optimizers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'frameavg.simulation' has no attribute {name!r}")


def __dir__():
    return __all__
