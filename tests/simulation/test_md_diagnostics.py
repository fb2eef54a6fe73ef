"""`run_md`'s NVE diagnostics with EMT on bulk Cu: the largest one-step jump and the range of the
total energy equal what the written trajectory's energies give, and a planted energy step is caught."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from frameavg.simulation.md import run_md


class SteppedEMT(EMT):
    """EMT plus ``height`` eV while atom 0's x coordinate exceeds ``plane`` (Å); forces unchanged."""

    def __init__(self, plane: float, height: float):
        super().__init__()
        self.plane, self.height = plane, height

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        super().calculate(atoms, properties, system_changes or ["positions"])
        if self.atoms.positions[0, 0] > self.plane:
            self.results["energy"] += self.height
            self.results["free_energy"] += self.height


@pytest.fixture
def copper():
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)  # 32 atoms


def _totals(path) -> np.ndarray:
    frames = ase.io.read(path, ":")
    return np.array([f.get_potential_energy() + f.info["kinetic_energy"] for f in frames])


def test_nve_jump_and_range_follow_from_the_trajectory(copper, tmp_path):
    result = run_md(copper, EMT(), ensemble="nve", temperature_K=600, timestep_fs=1.0, steps=80, every=1, seed=3)
    path = tmp_path / "md.extxyz"
    ase.io.write(path, result.snapshots, format="extxyz")
    totals = _totals(path)
    assert len(totals) == 81
    assert result.max_step_jump_meV == pytest.approx(1000 * np.abs(np.diff(totals)).max(), rel=1e-6)
    assert result.energy_range_meV_per_atom == pytest.approx(1000 * np.ptp(totals) / len(copper), rel=1e-6)
    assert 0 < result.max_step_jump_meV < 5  # EMT at 1 fs: well below a meV-scale jump
    summary = result.summary()
    assert summary["max_step_jump_meV"] == result.max_step_jump_meV
    assert summary["energy_range_meV_per_atom"] == result.energy_range_meV_per_atom


def test_jump_and_range_use_every_step_not_only_recorded_frames(copper):
    every = run_md(copper, EMT(), ensemble="nve", temperature_K=600, timestep_fs=1.0, steps=40, every=1, seed=4)
    sparse = run_md(copper, EMT(), ensemble="nve", temperature_K=600, timestep_fs=1.0, steps=40, every=20, seed=4)
    assert len(sparse.snapshots) == 3
    assert sparse.max_step_jump_meV == pytest.approx(every.max_step_jump_meV, rel=1e-9)
    assert sparse.energy_range_meV_per_atom == pytest.approx(every.energy_range_meV_per_atom, rel=1e-9)


def test_planted_energy_step_is_the_largest_jump(copper):
    smooth = run_md(copper, EMT(), ensemble="nve", temperature_K=600, timestep_fs=1.0, steps=60, every=1, seed=5)
    x = np.array([f.positions[0, 0] for f in smooth.snapshots])
    assert abs(x[30] - x[0]) > 1e-3
    plane = 0.5 * (x[0] + x[30])  # atom 0 crosses it at least once (same path: the step leaves forces alone)
    stepped = run_md(copper, SteppedEMT(plane, height=0.05), ensemble="nve", temperature_K=600, timestep_fs=1.0,
                     steps=60, every=1, seed=5)
    assert stepped.max_step_jump_meV == pytest.approx(50.0, abs=smooth.max_step_jump_meV)
    assert smooth.max_step_jump_meV < 5 < stepped.max_step_jump_meV


def test_thermostats_report_no_nve_diagnostics(copper):
    result = run_md(copper, EMT(), ensemble="langevin", temperature_K=300, timestep_fs=1.0, steps=5, every=5)
    assert result.max_step_jump_meV is None and result.energy_range_meV_per_atom is None
