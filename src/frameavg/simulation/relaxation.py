"""Batched structure relaxation (IS2RS): many structures, one model call per step.

``relax(structures, force_provider, ...)`` relaxes every structure with its own FIRE or LBFGS
optimiser (``frameavg.simulation.optimizers``: ASE's algorithms, vectorised). The force provider
is either a frameavg model (a checkpoint path, a ``Potential`` or a training task), evaluated as
ONE batch for all structures still relaxing, or any ASE calculator, evaluated structure by
structure (the reference path, and how EMT ground truth is produced).

* Convergence is per structure: max |F| over free atoms (and, with ``relax_cell``, over the three
  cell rows of the unit-cell filter) below ``fmax``, as ASE's optimisers test it. A converged
  structure leaves the batch; waiting structures join while the atom budget allows.
* Fixed atoms (``FixAtoms``, OC20 tag 0 / ``fixed``) never move.
* ``relax_cell``: ASE's ``UnitCellFilter`` (positions in the undeformed cell plus the deformation
  gradient times ``cell_factor`` = number of atoms; cell forces = virial / cell_factor).
* A structure whose forces become non-finite, or that the model refuses (an element it does not
  embed), stops with a ``failed`` status; the others go on.
* When a batch does not fit in memory it is split in two and continued.

Each result is a copy of the input ``ase.Atoms`` at its last positions (and cell), with a
``SinglePointCalculator`` holding its last energy and forces, and ``info``: ``converged`` (bool),
``steps`` (optimiser steps), ``energy`` (eV), ``fmax`` (eV/Å), ``status`` (``converged``, ``not
converged``, ``failed: ...``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator

from frameavg.data.atomic_data import fixed_mask
from frameavg.errors import ConfigError, DataError, FrameavgError
from frameavg.outputs import ENERGY, FORCES, STRESS
from frameavg.simulation.optimizers import make_optimizer


# --------------------------------------------------------------------------- force providers
class PotentialProvider:
    """A frameavg ``Potential`` evaluated on all active structures as one batch; each structure
    keeps its Verlet neighbour list (``skin``) between steps."""

    batched = True

    def __init__(self, potential, skin: float = 0.5):
        from frameavg.data.neighbors import VerletList

        self.potential, self.skin = potential, skin
        self._lists: dict[int, object] = {}
        self._templates: dict[int, object] = {}
        self._verlet = VerletList

    def prepare(self, key: int, atoms) -> None:
        """Validate a structure and keep its model inputs (``DataError`` for bad input)."""
        self._templates[key] = self.potential.to_data(atoms, source="structure", index=key)
        p = self.potential
        self._lists[key] = self._verlet(p.cutoff, self.skin, p.max_neighbors, strict=False,
                                        max_edges_per_atom=p.max_edges_per_atom)

    def release(self, key: int) -> None:
        self._templates.pop(key, None)
        self._lists.pop(key, None)

    def evaluate(self, keys: list[int], positions: list[np.ndarray], cells: list[np.ndarray], stress: bool) -> list[dict]:
        dtype, datas = self.potential.dtype, []
        for key, pos, cell in zip(keys, positions, cells):
            data = self._templates[key].clone()
            data.pos = torch.as_tensor(pos, dtype=dtype)
            data.cell = torch.as_tensor(cell, dtype=dtype).reshape(1, 3, 3)
            data.edge_index, data.cell_offsets = self._lists[key].edges(data.pos, data.cell[0], data.pbc[0])
            datas.append(data)
        out = self.potential(self.potential.batch(datas), forces=True, stress=stress)
        energies = out[ENERGY].cpu().numpy()
        forces = out[FORCES].cpu().numpy()
        offsets = np.cumsum([0] + [len(p) for p in positions])
        results = []
        for k in range(len(keys)):
            item = {ENERGY: float(energies[k]), FORCES: forces[offsets[k]:offsets[k + 1]]}
            if stress:
                item[STRESS] = out[STRESS][k].cpu().numpy()
            results.append(item)
        return results


class AseProvider:
    """Any ASE calculator, structure by structure (each structure on its own ``Atoms`` copy)."""

    batched = False

    def __init__(self, calculator):
        self.calculator = calculator
        self._atoms: dict[int, object] = {}

    def prepare(self, key: int, atoms) -> None:
        copy = atoms.copy()
        copy.set_constraint()  # constraints are applied by the engine
        copy.calc = self.calculator
        self._atoms[key] = copy

    def release(self, key: int) -> None:
        self._atoms.pop(key, None)

    def evaluate(self, keys, positions, cells, stress):
        from ase.calculators.calculator import CalculationFailed

        results = []
        for key, pos, cell in zip(keys, positions, cells):
            atoms = self._atoms[key]
            atoms.set_cell(cell, scale_atoms=False)
            atoms.set_positions(pos)
            try:
                item = {ENERGY: float(atoms.get_potential_energy()), FORCES: np.array(atoms.get_forces())}
                if stress:
                    from ase.stress import voigt_6_to_full_3x3_stress

                    item[STRESS] = voigt_6_to_full_3x3_stress(atoms.get_stress())
            except (CalculationFailed, NotImplementedError, ValueError, KeyError) as exc:
                item = {"error": f"{type(exc).__name__}: {exc}"}
            results.append(item)
        return results


def as_provider(force_provider, *, device="cpu", dtype="float64", frames="auto", skin=0.5, precision=None):
    """A provider from a checkpoint path, a ``Potential``, a training task or an ASE calculator."""
    from ase.calculators.calculator import BaseCalculator

    from frameavg.simulation.potential import Potential

    if isinstance(force_provider, (PotentialProvider, AseProvider)):
        return force_provider
    if isinstance(force_provider, BaseCalculator):
        return AseProvider(force_provider)
    if isinstance(force_provider, Potential):
        return PotentialProvider(force_provider, skin)
    if isinstance(force_provider, (str, Path)):
        return PotentialProvider(Potential.from_checkpoint(force_provider, device=device, dtype=dtype, frames=frames,
                                                           precision=precision), skin)
    if hasattr(force_provider, "normalizer") and hasattr(force_provider, "net"):
        return PotentialProvider(Potential.from_task(force_provider, device=device, dtype=dtype, frames=frames,
                                                     precision=precision), skin)
    raise ConfigError(f"force_provider must be a checkpoint path, a Potential, a training task or an ASE "
                      f"calculator, got {type(force_provider).__name__}")


# --------------------------------------------------------------------------- one structure's bookkeeping
@dataclass
class _Item:
    key: int
    atoms: object
    fixed: np.ndarray  # [n] bool
    orig_cell: np.ndarray  # [3,3] (unit-cell filter reference)
    x: np.ndarray  # [rows,3] generalized coordinates
    steps: int = 0
    energy: float = math.nan
    forces: np.ndarray | None = None  # [n,3] last forces (zero on fixed atoms)
    generalized_forces: np.ndarray | None = None  # [rows,3] forces on the coordinates x
    current: tuple | None = None  # (positions, cell) of the last evaluation
    fmax: float = math.inf
    status: str = "pending"
    frames: list = field(default_factory=list)

    @property
    def rows(self) -> int:
        return self.x.shape[0]


class _CellFilter:
    """ASE's ``UnitCellFilter`` maps between (positions, cell) and generalized coordinates."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def to_generalized(self, pos, cell, orig_cell):
        if not self.enabled:
            return pos.copy()
        deform = np.linalg.solve(orig_cell, cell).T
        rows = np.zeros((len(pos) + 3, 3))
        rows[:len(pos)] = np.linalg.solve(deform, pos.T).T
        rows[len(pos):] = len(pos) * deform
        return rows

    def from_generalized(self, x, n, orig_cell, old_pos, fixed):
        """(positions, cell) of generalized coordinates; fixed atoms keep their Cartesian positions."""
        if not self.enabled:
            pos = x.copy()
            pos[fixed] = old_pos[fixed]
            return pos, orig_cell
        deform = (x[n:] / n - np.eye(3)).T
        cell = orig_cell @ (np.eye(3) + deform)
        pos = x[:n] @ (np.eye(3) + deform)
        pos[fixed] = old_pos[fixed]
        return pos, cell

    def forces(self, forces, stress, cell, orig_cell):
        if not self.enabled:
            return forces
        volume = abs(np.linalg.det(cell))
        virial = -volume * stress
        deform = np.linalg.solve(orig_cell, cell).T
        rows = np.zeros((len(forces) + 3, 3))
        rows[:len(forces)] = forces @ deform
        rows[len(forces):] = np.linalg.solve(deform, virial.T).T / len(forces)
        return rows


# --------------------------------------------------------------------------- the engine
def relax(
    structures: Sequence,
    force_provider,
    *,
    optimizer: str = "fire",
    fmax: float = 0.05,
    steps: int = 300,
    relax_cell: bool = False,
    max_atoms_per_batch: int | None = None,
    trajectory: bool | str | Path = False,
    optimizer_options: dict | None = None,
    device: str = "cpu",
    dtype: str = "float64",
    frames: str = "all",
    skin: float = 0.5,
    precision: str | None = None,
    names: Sequence | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list:
    """Relax ``structures`` (``ase.Atoms``); returns relaxed copies in input order (see the module
    docstring for the result fields).

    Args:
        force_provider: checkpoint path, ``Potential``, training task, or ASE calculator.
        optimizer: ``fire`` or ``lbfgs`` (ASE's parameters; ``optimizer_options`` overrides them,
            e.g. ``ADSORBML_LBFGS``).
        fmax: convergence threshold on the largest force (eV/Å). steps: maximum optimiser steps.
        relax_cell: relax the cell too (periodic structures with a volume only).
        max_atoms_per_batch: atoms evaluated together; structures wait their turn. Default: all on a
            GPU; ``CPU_ATOMS_PER_BATCH`` (256) on a CPU, where larger batches run slower per structure
            (measured on 64 slabs: batches of 4 slabs 2.5 s, of all 64 8.6 s).
        trajectory: True keeps every step in ``info["trajectory"]`` (a list of Atoms); a folder
            path writes ``{name}.traj`` per structure there (``names``: default the input index).
        device, dtype, frames, skin, precision: for checkpoint/task providers (see ``Potential``).
        progress: called as ``progress(done, total)`` after every step.
    """
    if fmax <= 0 or steps < 0:
        raise ConfigError(f"fmax must be positive and steps >= 0, got {fmax} and {steps}")
    provider = as_provider(force_provider, device=device, dtype=dtype, frames=frames, skin=skin, precision=precision)
    cell_filter = _CellFilter(relax_cell)
    optimizer_options = dict(optimizer_options or {})
    results: list = [None] * len(structures)
    queue = []
    for key, atoms in enumerate(structures):
        item = _new_item(key, atoms, provider, cell_filter)
        if isinstance(item, str):
            results[key] = _finish_failed(atoms, item)
        else:
            queue.append(item)
    budget = max_atoms_per_batch or _default_budget(provider, queue)
    opt = make_optimizer(optimizer, **optimizer_options)
    active: list[_Item] = []
    done = len(structures) - len(queue)
    keep_frames = bool(trajectory)
    while queue or active:
        added, load = [], sum(i.rows for i in active)
        while queue and (not (active or added) or load + queue[0].rows <= budget):
            load += queue[0].rows
            added.append(queue.pop(0))
        if added:
            width = max(i.rows for i in active + added)
            if opt.state is not None:
                opt.pad(width)
            opt.extend(len(added), width, torch.zeros(1, dtype=torch.float64))
            active += added
        evaluations, budget = _evaluate(provider, active, cell_filter, relax_cell, budget)
        leaving = []
        for k, (item, result) in enumerate(zip(active, evaluations)):
            message = _absorb(item, result, cell_filter, relax_cell)
            if keep_frames and message is None:
                item.frames.append(_snapshot(item))
            if message is not None:
                item.status = f"failed: {message}"
            elif item.fmax < fmax:
                item.status = "converged"
            elif item.steps >= steps:
                item.status = "not converged"
            else:
                continue
            leaving.append(k)
        for k in leaving:
            key = active[k].key
            results[key] = _finish(active[k], provider, trajectory, key if names is None else names[key])
        done += len(leaving)
        if leaving:
            keep = [k for k in range(len(active)) if k not in set(leaving)]
            active = [active[k] for k in keep]
            if active:
                opt.select(torch.as_tensor(keep, dtype=torch.long))
            else:
                opt.state = None
        if active:
            _step(opt, active)
        if progress is not None:
            progress(done, len(structures))
    return results


#: Default atom budget of a batch on a CPU (see ``relax``).
CPU_ATOMS_PER_BATCH = 256


def _default_budget(provider, queue) -> int:
    everything = max(1, sum(item.rows for item in queue))
    potential = getattr(provider, "potential", None)
    if potential is not None and potential.device.type == "cpu":
        return min(everything, CPU_ATOMS_PER_BATCH)
    return everything


def _new_item(key, atoms, provider, cell_filter):
    """A structure's bookkeeping, or an error message for a structure that cannot be relaxed."""
    if cell_filter.enabled and not (np.all(atoms.pbc) and abs(atoms.cell.volume) > 0):
        return "relax_cell needs a structure periodic along x, y and z (a molecule has no cell to relax)"
    try:
        provider.prepare(key, atoms)
    except (DataError, FrameavgError) as exc:
        return str(exc)
    pos = np.array(atoms.positions, dtype=np.float64)
    cell = np.array(atoms.cell.array, dtype=np.float64)
    return _Item(key=key, atoms=atoms, fixed=fixed_mask(atoms), orig_cell=cell,
                 x=cell_filter.to_generalized(pos, cell, cell))


def _evaluate(provider, active, cell_filter, relax_cell, budget):
    """Energies/forces of every active structure; on out-of-memory, split the batch in two."""
    positions, cells = [], []
    for item in active:
        n = len(item.atoms)
        pos, cell = cell_filter.from_generalized(item.x, n, item.orig_cell, item.atoms.positions, item.fixed)
        positions.append(pos)
        cells.append(cell)
    keys = [item.key for item in active]
    splits = []

    def run(lo, hi):
        try:
            return provider.evaluate(keys[lo:hi], positions[lo:hi], cells[lo:hi], relax_cell)
        except DataError as exc:  # a structure the model refuses: find it, the others go on
            if hi - lo <= 1:
                return [{"error": str(exc)}]
            return [item for k in range(lo, hi) for item in run(k, k + 1)]
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not _out_of_memory(exc):
                raise
            if hi - lo <= 1:
                raise FrameavgError(f"structure {keys[lo]} does not fit in memory on its own") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            mid = (lo + hi) // 2
            splits.append(sum(active[k].rows for k in range(lo, mid)))
            return run(lo, mid) + run(mid, hi)

    results = run(0, len(active))
    return results, (min(splits) if splits else budget)


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def _absorb(item, result, cell_filter, relax_cell) -> str | None:
    """Take a result into the item; the error message of a failed evaluation, else None."""
    if "error" in result:
        return result["error"]
    forces = np.array(result[FORCES], dtype=np.float64)
    if not (np.isfinite(result[ENERGY]) and np.isfinite(forces).all()):
        return "non-finite energy or forces"
    n = len(item.atoms)
    pos, cell = cell_filter.from_generalized(item.x, n, item.orig_cell, item.atoms.positions, item.fixed)
    forces[item.fixed] = 0.0
    generalized = cell_filter.forces(forces, result.get("stress"), cell, item.orig_cell) if relax_cell else forces
    if relax_cell and not np.isfinite(generalized).all():
        return "non-finite stress"
    item.energy, item.forces = float(result[ENERGY]), forces
    item.generalized_forces = generalized
    item.fmax = float(np.sqrt((generalized ** 2).sum(-1)).max()) if len(generalized) else 0.0
    item.current = (pos, cell)
    return None


def _step(opt, active) -> None:
    """One optimiser step of every active structure (padded batch)."""
    width = max(max(item.rows for item in active), opt.rows)
    x = torch.zeros(len(active), width, 3, dtype=torch.float64)
    f = torch.zeros_like(x)
    valid = torch.zeros(len(active), width, dtype=torch.float64)
    for k, item in enumerate(active):
        x[k, :item.rows] = torch.from_numpy(item.x)
        f[k, :item.rows] = torch.from_numpy(item.generalized_forces)
        valid[k, :item.rows] = 1.0
    dr = opt.step(x, f, valid).numpy()
    for k, item in enumerate(active):
        item.x = item.x + dr[k, :item.rows]
        item.steps += 1


def _snapshot(item):
    pos, cell = item.current
    atoms = item.atoms.copy()
    atoms.set_cell(cell)
    atoms.positions = pos
    atoms.calc = SinglePointCalculator(atoms, energy=item.energy, forces=item.forces)
    return atoms


def _finish(item, provider, trajectory, name):
    provider.release(item.key)
    atoms = item.atoms.copy()
    if item.forces is not None:
        pos, cell = item.current
        atoms.set_cell(cell)
        atoms.positions = pos
        atoms.calc = SinglePointCalculator(atoms, energy=item.energy, forces=item.forces)
    atoms.info.update(converged=item.status == "converged", steps=item.steps, energy=item.energy,
                      fmax=item.fmax, status=item.status)
    if trajectory:
        if isinstance(trajectory, (str, Path)):
            from ase.io import write

            from frameavg.files import atomic_output

            folder = Path(trajectory)
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_output(folder / f"{name}.traj") as tmp:
                write(str(tmp), item.frames, format="traj")
        else:
            atoms.info["trajectory"] = item.frames
    return atoms


def _finish_failed(atoms, message):
    atoms = atoms.copy()
    atoms.info.update(converged=False, steps=0, energy=math.nan, fmax=math.nan, status=f"failed: {message}")
    return atoms
