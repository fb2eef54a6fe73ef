"""Synthetic bulk fcc metal data: thermal, strained EMT molecular dynamics (ASE's EMT as ground truth).

``generate_bulk(out, settings)`` runs ``ceil(structures / frames_per_trajectory)`` trajectories.
Trajectory t:

* the cubic fcc supercell of ``element`` at its EMT lattice constant, ``size``³ cubic cells
  (4 · size³ atoms: 108 for size 3);
* a random symmetric strain ε (3×3; ε_ij = ε_ji, each of the 6 components uniform in
  ±``strain``), applied as cell' = cell (I + ε) with the atoms scaled along;
* temperature ``temperatures[t % len(temperatures)]``: Maxwell–Boltzmann velocities, then ASE
  Langevin dynamics with EMT (``timestep_fs``, friction ``friction_per_fs``): ``equilibration``
  steps, then one frame every ``interval`` steps (decorrelated: several Langevin relaxation times
  1/friction apart), ``frames_per_trajectory`` frames (the last trajectory may have fewer).

Whole trajectories go to one split (no correlated frames across splits): trajectories are
shuffled within each temperature and interleaved across temperatures, the first
``round(test_fraction · T)`` are test, the next ``round(val_fraction · T)`` validation (each ≥ 1
when there are ≥ 3 trajectories), the rest train. The folder::

    train.extxyz, val.extxyz, test.extxyz   energy (eV), forces (eV/Å), stress (eV/Å³, ASE's sign,
                                            Voigt), info: label, ground_truth, element, trajectory,
                                            temperature_K, strain (Voigt xx yy zz yz xz xy), time_fs
    metadata.json                           settings, lattice constant, counts (no timings)
    README.md                               what the files are

Every record is labelled synthetic EMT data. Files are written atomically. The same settings give
the same files (trajectory t draws from ``numpy.random.default_rng([seed, t])``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from frameavg.errors import ConfigError, DataError
from frameavg.simulation.adsorption_data import EMT_METALS, emt_lattice_constant

LABEL = "synthetic data: ASE EMT ground truth (not DFT)"
FORMAT = "frameavg-bulk-md"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class BulkSettings:
    element: str = "Cu"
    size: int = 3  # cubic fcc cells per axis: 4 size³ atoms
    structures: int = 420
    seed: int = 0
    temperatures: tuple[float, ...] = (300.0, 600.0, 900.0, 1200.0)  # K
    strain: float = 0.03  # largest strain component
    timestep_fs: float = 1.0
    friction_per_fs: float = 0.02
    equilibration: int = 200  # steps before the first frame
    interval: int = 40  # steps between frames
    frames_per_trajectory: int = 10
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def validated(self) -> "BulkSettings":
        if self.element not in EMT_METALS:
            raise ConfigError(f"element {self.element}: EMT models only {', '.join(EMT_METALS)}")
        if self.size < 1 or self.structures < 1 or self.frames_per_trajectory < 1 or self.interval < 1:
            raise ConfigError("size, structures, frames per trajectory and interval must be >= 1")
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ConfigError(f"temperatures must be positive, got {list(self.temperatures)}")
        if not 0 <= self.strain < 0.5 or self.timestep_fs <= 0 or self.friction_per_fs <= 0 or self.equilibration < 0:
            raise ConfigError("need 0 <= strain < 0.5, timestep > 0, friction > 0 and equilibration >= 0")
        if self.val_fraction < 0 or self.test_fraction < 0 or self.val_fraction + self.test_fraction >= 1:
            raise ConfigError("val and test fractions must be >= 0 and sum to < 1")
        return self

    @property
    def trajectories(self) -> int:
        return math.ceil(self.structures / self.frames_per_trajectory)


def random_strain(rng: np.random.Generator, strain: float) -> np.ndarray:
    """Symmetric strain [3,3], each of its 6 independent components uniform in ±``strain``."""
    upper = np.triu(rng.uniform(-strain, strain, (3, 3)))
    return upper + np.triu(upper, 1).T


def run_trajectory(t: int, a: float, settings: BulkSettings) -> list:
    """The sampled frames (``ase.Atoms`` with EMT energy, forces, stress) of trajectory ``t``."""
    import warnings

    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng([settings.seed, t])
    temperature = float(settings.temperatures[t % len(settings.temperatures)])
    epsilon = random_strain(rng, settings.strain)
    atoms = bulk(settings.element, "fcc", a=a, cubic=True).repeat(settings.size)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + epsilon), scale_atoms=True)
    atoms.calc = EMT()
    count = min(settings.frames_per_trajectory, settings.structures - t * settings.frames_per_trajectory)
    frames = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        dynamics = Langevin(atoms, timestep=settings.timestep_fs * units.fs, temperature_K=temperature,
                            friction=settings.friction_per_fs / units.fs, fixcm=False, rng=rng)
        dynamics.run(settings.equilibration)
        for _ in range(count):
            dynamics.run(settings.interval)
            frames.append(_frame(atoms, t, temperature, epsilon, dynamics.nsteps * settings.timestep_fs, settings))
    return frames


def _frame(atoms, t: int, temperature: float, epsilon: np.ndarray, time_fs: float, settings: BulkSettings):
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    frame.arrays.pop("momenta", None)  # a static structure: labels only
    frame.calc = SinglePointCalculator(frame, energy=float(atoms.get_potential_energy()),
                                       forces=atoms.get_forces(), stress=atoms.get_stress(voigt=True))
    frame.info = {"label": LABEL, "ground_truth": "EMT", "element": settings.element, "trajectory": t,
                  "temperature_K": temperature, "time_fs": float(time_fs),
                  "strain": np.array([epsilon[0, 0], epsilon[1, 1], epsilon[2, 2], epsilon[1, 2], epsilon[0, 2],
                                      epsilon[0, 1]])}
    return frame


def split_trajectories(settings: BulkSettings) -> dict[str, list[int]]:
    """{split: trajectory indices}, stratified by temperature (see the module docstring)."""
    n, temps = settings.trajectories, len(settings.temperatures)
    rng = np.random.default_rng([settings.seed, n, 1])
    rank = np.empty(n, dtype=int)
    for k in range(temps):
        members = np.arange(k, n, temps)
        rank[rng.permutation(members)] = np.arange(len(members))
    order = sorted(range(n), key=lambda t: (rank[t], t % temps))
    n_test, n_val = round(settings.test_fraction * n), round(settings.val_fraction * n)
    if n >= 3:
        n_test, n_val = max(n_test, 1 if settings.test_fraction > 0 else 0), max(n_val, 1 if settings.val_fraction > 0 else 0)
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def generate_bulk(out: str | Path, settings: BulkSettings = BulkSettings(),
                  progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate the data set into folder ``out`` (module docstring); returns the metadata.
    ``progress(done, total)`` is called after every trajectory."""
    import ase.io

    from frameavg.files import atomic_output

    settings = settings.validated()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("output path exists and is not a folder", source=str(out))
    out.mkdir(parents=True, exist_ok=True)
    a = emt_lattice_constant(settings.element)
    trajectories = []
    for t in range(settings.trajectories):
        trajectories.append(run_trajectory(t, a, settings))
        if progress is not None:
            progress(t + 1, settings.trajectories)
    splits = split_trajectories(settings)
    counts = {}
    for split in SPLITS:
        frames = [frame for t in splits[split] for frame in trajectories[t]]
        counts[split] = len(frames)
        with atomic_output(out / f"{split}.extxyz") as tmp:
            ase.io.write(str(tmp), frames, format="extxyz")
    all_frames = [frame for frames in trajectories for frame in frames]
    energies = np.array([f.get_potential_energy() / len(f) for f in all_frames])
    metadata = {"format": FORMAT, "label": LABEL, "ground_truth": "EMT (ase.calculators.emt)",
                "settings": asdict(settings), "lattice_constant_A": round(a, 6),
                "atoms_per_structure": 4 * settings.size ** 3, "trajectories": settings.trajectories,
                "split_trajectories": splits, "structures": counts,
                "energy_per_atom_eV": {"min": float(energies.min()), "max": float(energies.max())},
                "max_force_eV_per_A": float(max(np.abs(f.get_forces()).max() for f in all_frames))}
    with atomic_output(out / "metadata.json") as tmp:
        tmp.write_text(json.dumps(metadata, indent=1) + "\n")
    with atomic_output(out / "README.md") as tmp:
        tmp.write_text(_readme(metadata))
    return json.loads(json.dumps(metadata))


def _readme(metadata: dict) -> str:
    s = metadata["settings"]
    return (f"# Bulk {s['element']} fcc, thermal strained MD ({LABEL})\n\n"
            f"Generated by `frameavg data generate-bulk` (frameavg.simulation.bulk_data). "
            f"{metadata['atoms_per_structure']}-atom cubic supercells at the EMT lattice constant "
            f"{metadata['lattice_constant_A']:.4f} Å, random symmetric strain (components uniform in "
            f"±{s['strain']}), Langevin MD with EMT at {', '.join(f'{t:g}' for t in s['temperatures'])} K, "
            f"{s['timestep_fs']} fs steps, {s['equilibration']} equilibration steps, one frame every "
            f"{s['interval']} steps, {s['frames_per_trajectory']} frames per trajectory, seed {s['seed']}.\n\n"
            f"Files: train.extxyz ({metadata['structures']['train']}), val.extxyz ({metadata['structures']['val']}), "
            f"test.extxyz ({metadata['structures']['test']}); whole trajectories per split. Labels: energy (eV), "
            f"forces (eV/Å), stress (eV/Å³, ASE's sign). metadata.json holds the settings.\n")
