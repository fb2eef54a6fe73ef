"""Molecular dynamics with ASE's integrators and any ASE calculator (a ``FrameavgCalculator``).

``run_md`` integrates one structure (NVE velocity Verlet, Langevin or Bussi's stochastic velocity
rescaling), records every ``every``-th frame and reports what tells a potential apart in MD:

* throughput: steps/s;
* for NVE, with E_tot(t) = potential + kinetic energy (eV) after MD step t = 0..steps (every step,
  not only the recorded ones) and N atoms:

  - drift, meV/atom/ps: slope of a least-squares line through E_tot/N of the recorded frames
    against time;
  - largest excursion, meV/atom: max_t |E_tot(t) − E_tot(0)| / N over the recorded frames;
  - largest single-step jump, meV: max over t of |E_tot(t+1) − E_tot(t)| (whole cell, not per
    atom), which catches a discontinuous potential that a fit through a long run averages away;
  - range, meV/atom: (max_t E_tot(t) − min_t E_tot(t)) / N;
* stability ("Forces are not enough", Fu et al. 2022): the first recorded time at which any bond of
  the initial structure (ASE ``natural_cutoffs``, minimum image) deviates from its initial length by
  more than 0.5 Å; None if the run stays stable.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator

from frameavg.errors import ConfigError

ENSEMBLES = ("nve", "langevin", "bussi")
#: Bond deviation (Å) that counts as a collapse (Fu et al. 2022).
BOND_DEVIATION = 0.5


@dataclass
class MDResult:
    """steps, timestep_fs, steps_per_s; temperatures [K] and total/potential energies [eV] of the
    recorded snapshots (``times_fs``); ``drift_meV_per_atom_per_ps``, ``max_excursion_meV_per_atom``,
    ``max_step_jump_meV`` and ``energy_range_meV_per_atom`` (NVE only, see the module docstring); ``stability_fs`` (None: stable to the end); ``snapshots``: recorded ``ase.Atoms``."""

    ensemble: str
    steps: int
    timestep_fs: float
    steps_per_s: float
    times_fs: list = field(default_factory=list)
    temperatures_K: list = field(default_factory=list)
    potential_energies: list = field(default_factory=list)
    total_energies: list = field(default_factory=list)
    drift_meV_per_atom_per_ps: float | None = None
    max_excursion_meV_per_atom: float | None = None
    max_step_jump_meV: float | None = None
    energy_range_meV_per_atom: float | None = None
    stability_fs: float | None = None
    snapshots: list = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        """Everything but the snapshots and per-snapshot series (for ``--json``)."""
        out = asdict(self)
        for key in ("snapshots", "times_fs", "temperatures_K", "potential_energies", "total_energies"):
            out.pop(key)
        out["recorded_snapshots"] = len(self.snapshots)
        out["simulated_ps"] = self.steps * self.timestep_fs / 1000.0
        return out


def bonds(atoms) -> tuple[np.ndarray, np.ndarray]:
    """Bonded pairs [K,2] of a structure (ASE ``natural_cutoffs``) and their lengths [K] (Å)."""
    from ase.neighborlist import NeighborList, natural_cutoffs

    cutoffs = natural_cutoffs(atoms)
    nl = NeighborList(cutoffs, self_interaction=False, bothways=False, skin=0.0)
    nl.update(atoms)
    pairs = [(i, j) for i in range(len(atoms)) for j in nl.get_neighbors(i)[0]]
    pairs = np.array(pairs, dtype=int).reshape(-1, 2)
    return pairs, bond_lengths(atoms, pairs)


def bond_lengths(atoms, pairs: np.ndarray) -> np.ndarray:
    """Minimum-image lengths of ``pairs`` [K,2] in ``atoms`` (Å)."""
    if len(pairs) == 0:
        return np.zeros(0)
    from ase.geometry import get_distances

    vectors = atoms.positions[pairs[:, 1]] - atoms.positions[pairs[:, 0]]
    if atoms.pbc.any():
        vectors, _ = get_distances(np.zeros((1, 3)), vectors, cell=atoms.cell, pbc=atoms.pbc)
        vectors = vectors[0]
    return np.linalg.norm(vectors, axis=-1)


def run_md(
    atoms,
    calculator,
    *,
    ensemble: str = "nve",
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    steps: int = 1000,
    every: int = 10,
    friction_per_fs: float = 0.01,
    taut_fs: float = 100.0,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> MDResult:
    """Integrate a copy of ``atoms`` with ``calculator`` (see the module docstring).

    Velocities start Maxwell–Boltzmann at ``temperature_K`` (seeded), without centre-of-mass
    motion (and without rotation for molecules). ``friction_per_fs``: Langevin friction;
    ``taut_fs``: Bussi thermostat time constant."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    if ensemble not in ENSEMBLES:
        raise ConfigError(f"unknown ensemble '{ensemble}' (choose {', '.join(ENSEMBLES)})")
    if timestep_fs <= 0 or steps < 0 or every < 1 or temperature_K < 0:
        raise ConfigError("need timestep > 0, steps >= 0, every >= 1 and temperature >= 0")
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any() and len(atoms) > 2:
        ZeroRotation(atoms)
    dynamics = _integrator(atoms, ensemble, timestep_fs * units.fs, temperature_K, friction_per_fs, taut_fs, rng)
    pairs, reference = bonds(atoms)
    result = MDResult(ensemble=ensemble, steps=steps, timestep_fs=timestep_fs, steps_per_s=math.nan)

    def record():
        step = dynamics.nsteps
        potential = float(atoms.get_potential_energy())
        kinetic = float(atoms.get_kinetic_energy())
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, energy=potential, forces=atoms.get_forces())
        frame.info.update(step=step, time_fs=step * timestep_fs, kinetic_energy=kinetic,
                          temperature_K=float(atoms.get_temperature()))
        result.snapshots.append(frame)
        result.times_fs.append(step * timestep_fs)
        result.temperatures_K.append(float(atoms.get_temperature()))
        result.potential_energies.append(potential)
        result.total_energies.append(potential + kinetic)
        if result.stability_fs is None and len(pairs):
            deviation = np.abs(bond_lengths(atoms, pairs) - reference).max()
            if deviation > BOND_DEVIATION:
                result.stability_fs = step * timestep_fs
        if progress is not None:
            progress(step, steps)

    every_step = []  # E_tot after each step (eV); the calculator's cached energy, no extra call

    def record_total():
        every_step.append(float(atoms.get_potential_energy()) + float(atoms.get_kinetic_energy()))

    dynamics.attach(record, interval=every)
    if ensemble == "nve":
        dynamics.attach(record_total, interval=1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dynamics.run(steps)
    elapsed = time.perf_counter() - start
    result.steps_per_s = steps / elapsed if elapsed > 0 else math.inf
    if ensemble == "nve":
        _conservation(result, every_step, len(atoms))
    return result


def _integrator(atoms, ensemble: str, dt: float, temperature_K: float, friction_per_fs: float, taut_fs: float, rng):
    """ASE's integrator of ``ensemble`` (``dt`` in ASE time units)."""
    from ase.md.bussi import Bussi
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    if ensemble == "nve":
        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "langevin":
        return Langevin(atoms, timestep=dt, temperature_K=temperature_K, friction=friction_per_fs / units.fs, rng=rng)
    return Bussi(atoms, timestep=dt, temperature_K=temperature_K, taut=taut_fs * units.fs, rng=rng)


def _conservation(result: MDResult, every_step: list, n_atoms: int) -> None:
    """NVE figures of ``result`` (in place): drift and largest excursion from the recorded frames,
    largest one-step jump and range from ``every_step`` (total energy after each step, eV)."""
    if len(result.total_energies) > 1:
        per_atom = np.asarray(result.total_energies) / n_atoms
        times_ps = np.asarray(result.times_fs) / 1000.0
        slope = np.polyfit(times_ps, per_atom, 1)[0]
        result.drift_meV_per_atom_per_ps = float(1000.0 * slope)
        result.max_excursion_meV_per_atom = float(1000.0 * np.abs(per_atom - per_atom[0]).max())
    if len(every_step) > 1:
        totals = np.asarray(every_step)
        result.max_step_jump_meV = float(1000.0 * np.abs(np.diff(totals)).max())
        result.energy_range_meV_per_atom = float(1000.0 * (totals.max() - totals.min()) / n_atoms)
