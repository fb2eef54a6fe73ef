"""Batched structure relaxation (IS2RS): many structures, one model call per step.

``relax(structures, force_provider, ...)`` relaxes every structure with its own FIRE or LBFGS
optimiser (``frameavg.simulation.optimizers``: ASE's algorithms, vectorised). The force provider
is either a frameavg model (a checkpoint path, a ``Potential`` or a training task), evaluated as
ONE batch for all structures still relaxing, or any ASE calculator, evaluated structure by
structure (the reference path, and how EMT ground truth is produced).

The engine keeps the structures being relaxed as flat tensors with a structure index, as
TorchSim's ``SimState`` does (``_Systems``: rows [R,3] of all structures one after the other,
per-structure values [S]), so that the Python work of a step does not grow with the number of
structures: convergence, the cell filter, fixed atoms and the optimiser step are tensor
operations over all rows at once. Only a force provider (neighbour lists), structures joining or
leaving, and ``trajectory`` snapshots do per-structure work.

* Convergence is per structure: max |F| over free atoms (and, with ``relax_cell``, over the three
  cell rows of the unit-cell filter) below ``fmax``, as ASE's optimisers test it. A converged
  structure leaves the batch; waiting structures join in its place (in flight) while the atom
  budget allows: a batch never holds more than ``max_atoms_per_batch`` rows, unless one structure
  alone has more.
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

Force providers have ``prepare(key, atoms)``, ``release(key)`` and ``evaluate(keys, positions,
cells, stress)``: ``positions`` [N,3] (Å) of the structures ``keys`` one after the other, ``cells``
[S,3,3]; it returns ``{"energy": [S] eV, "forces": [N,3] eV/Å, "stress": [S,3,3] eV/Å³ (if
stress), "errors": {index in keys: message}}`` (float64 CPU tensors).
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from torch import Tensor

from frameavg.data.atomic_data import fixed_mask
from frameavg.errors import ConfigError, DataError, FrameavgError
from frameavg.outputs import ENERGY, FORCES, STRESS
from frameavg.simulation.optimizers import make_optimizer, system_max, system_sum

ERRORS = "errors"


# --------------------------------------------------------------------------- force providers
class PotentialProvider:
    """A frameavg ``Potential`` evaluated on all active structures as one batch; each structure
    keeps its Verlet neighbour list (``skin``) between steps."""

    batched = True

    def __init__(self, potential, skin: float = 0.5):
        self.potential, self.skin = potential, skin
        self._lists: dict[int, object] = {}
        self._templates: dict[int, object] = {}

    def prepare(self, key: int, atoms) -> None:
        """Validate a structure and keep its model inputs (``DataError`` for bad input)."""
        self._templates[key] = self.potential.to_data(atoms, source="structure", index=key)
        self._lists[key] = self.potential.neighbors.verlet_list(self.skin)

    def release(self, key: int) -> None:
        self._templates.pop(key, None)
        self._lists.pop(key, None)

    def evaluate(self, keys: list[int], positions: Tensor, cells: Tensor, stress: bool) -> dict:
        dtype, datas = self.potential.dtype, []
        sizes = [self._templates[key].num_nodes for key in keys]
        for key, pos, cell in zip(keys, positions.split(sizes), cells):
            data = self._templates[key].clone()
            data.pos = pos.to(dtype)
            data.cell = cell.to(dtype).reshape(1, 3, 3)
            data.edge_index, data.cell_offsets = self._lists[key].edges(data.pos, data.cell[0], data.pbc[0])
            datas.append(data)
        out = self.potential(self.potential.batch(datas), forces=True, stress=stress)
        result = {ENERGY: out[ENERGY].cpu().double(), FORCES: out[FORCES].cpu().double(), ERRORS: {}}
        if stress:
            result[STRESS] = out[STRESS].cpu().double()
        return result


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
        from ase.stress import voigt_6_to_full_3x3_stress

        sizes = [len(self._atoms[key]) for key in keys]
        energy = torch.full((len(keys),), math.nan, dtype=torch.float64)
        forces = torch.full((sum(sizes), 3), math.nan, dtype=torch.float64)
        stresses = torch.full((len(keys), 3, 3), math.nan, dtype=torch.float64)
        errors, start = {}, 0
        for k, (key, pos, cell) in enumerate(zip(keys, positions.split(sizes), cells)):
            atoms = self._atoms[key]
            atoms.set_cell(cell.numpy(), scale_atoms=False)
            atoms.set_positions(pos.numpy())
            try:
                energy[k] = float(atoms.get_potential_energy())
                forces[start:start + sizes[k]] = torch.from_numpy(np.array(atoms.get_forces(), dtype=np.float64))
                if stress:
                    stresses[k] = torch.from_numpy(voigt_6_to_full_3x3_stress(atoms.get_stress()))
            except (CalculationFailed, NotImplementedError, ValueError, KeyError) as exc:
                errors[k] = f"{type(exc).__name__}: {exc}"
            start += sizes[k]
        result = {ENERGY: energy, FORCES: forces, ERRORS: errors}
        if stress:
            result[STRESS] = stresses
        return result


def as_provider(force_provider, *, device="cpu", dtype="float64", frame_method="auto", skin=0.5, precision=None):
    """A provider from a checkpoint path, a ``Potential``, a training task, an ASE calculator, or
    an object that is one already (``prepare``, ``release``, ``evaluate``)."""
    from ase.calculators.calculator import BaseCalculator

    from frameavg.simulation.potential import Potential

    if isinstance(force_provider, BaseCalculator):
        return AseProvider(force_provider)
    if all(callable(getattr(force_provider, name, None)) for name in ("prepare", "release", "evaluate")):
        return force_provider
    if isinstance(force_provider, Potential):
        return PotentialProvider(force_provider, skin)
    if isinstance(force_provider, (str, Path)):
        return PotentialProvider(Potential.from_checkpoint(force_provider, device=device, dtype=dtype, frame_method=frame_method,
                                                           precision=precision), skin)
    if hasattr(force_provider, "normalizer") and hasattr(force_provider, "net"):
        return PotentialProvider(Potential.from_task(force_provider, device=device, dtype=dtype, frame_method=frame_method,
                                                     precision=precision), skin)
    raise ConfigError(f"force_provider must be a checkpoint path, a Potential, a training task or an ASE "
                      f"calculator, got {type(force_provider).__name__}")


# --------------------------------------------------------------------------- the flat state
ROW, SYSTEM = "row", "system"


@dataclass
class _Systems:
    """The structures being relaxed as flat tensors (float64; Å, eV, eV/Å). Rows: each
    structure's atoms, then (``relax_cell``) its 3 cell rows; structures in joining order."""

    x: Tensor  # [R,3] generalized coordinates (ROW)
    system: Tensor  # [R] long: structure of each row (ROW)
    atom: Tensor  # [R] bool: atom rows (False: cell rows) (ROW)
    fixed: Tensor  # [R] bool: fixed atoms (ROW)
    start: Tensor  # [R,3] starting positions, where fixed atoms stay (ROW)
    pos: Tensor  # [R,3] positions of the last good evaluation (ROW; cell rows unused)
    forces: Tensor  # [R,3] its forces, zero on fixed atoms (ROW; cell rows unused)
    gforces: Tensor  # [R,3] its forces on the coordinates x (ROW)
    key: Tensor  # [S] long: input index (SYSTEM)
    natoms: Tensor  # [S] long (SYSTEM)
    orig_cell: Tensor  # [S,3,3] the unit-cell filter's reference cell (SYSTEM)
    cell: Tensor  # [S,3,3] cell of the last good evaluation (SYSTEM)
    energy: Tensor  # [S] eV, NaN before a good evaluation (SYSTEM)
    fmax: Tensor  # [S] eV/Å, inf before a good evaluation (SYSTEM)
    steps: Tensor  # [S] long optimiser steps (SYSTEM)

    KINDS = {"x": ROW, "system": ROW, "atom": ROW, "fixed": ROW, "start": ROW, "pos": ROW, "forces": ROW,
             "gforces": ROW}

    @property
    def count(self) -> int:
        return self.key.shape[0]

    @property
    def rows(self) -> Tensor:
        """[S] rows per structure."""
        return torch.bincount(self.system, minlength=self.count)

    def select(self, rows: Tensor, systems: Tensor) -> "_Systems":
        """The structures ``systems`` [S'] (sorted indices) with their rows ``rows`` [R']."""
        renumber = torch.full((self.count,), -1, dtype=torch.long)
        renumber[systems] = torch.arange(len(systems))
        picked = {f.name: getattr(self, f.name).index_select(0, rows if self.KINDS.get(f.name) == ROW else systems)
                  for f in fields(self)}
        picked["system"] = renumber[picked["system"]]
        return _Systems(**picked)

    def join(self, other: "_Systems") -> "_Systems":
        """These structures followed by ``other``'s."""
        merged = {f.name: torch.cat([getattr(self, f.name), getattr(other, f.name)]) for f in fields(self)}
        merged["system"] = torch.cat([self.system, other.system + self.count])
        return _Systems(**merged)


def _new_systems(keys: list[int], structures: list, relax_cell: bool) -> _Systems:
    """Flat state of structures joining the batch (their generalized coordinates at the start:
    positions, then ``natoms`` times the identity deformation for the cell rows)."""
    sizes = [len(atoms) for atoms in structures]
    extra = 3 if relax_cell else 0
    pos = torch.from_numpy(np.concatenate([np.asarray(a.positions, dtype=np.float64).reshape(-1, 3)
                                           for a in structures]))
    fixed = torch.from_numpy(np.concatenate([fixed_mask(a) for a in structures]))
    natoms = torch.tensor(sizes, dtype=torch.long)
    system = torch.repeat_interleave(torch.arange(len(sizes)), natoms + extra)
    cells = torch.from_numpy(np.stack([np.asarray(a.cell.array, dtype=np.float64) for a in structures]))
    atom = torch.ones(len(system), dtype=torch.bool)
    rows = torch.zeros(len(system), 3, dtype=torch.float64)
    if relax_cell:
        within = torch.arange(len(system)) - torch.repeat_interleave(torch.cumsum(natoms + 3, 0) - natoms - 3,
                                                                     natoms + 3)
        atom = within < natoms[system]
        cell_rows = natoms.double()[:, None, None] * torch.eye(3, dtype=torch.float64)
        rows[~atom] = cell_rows.reshape(-1, 3)
    rows[atom] = pos
    all_fixed = torch.zeros(len(system), dtype=torch.bool)
    all_fixed[atom] = fixed
    count = len(sizes)
    return _Systems(x=rows, system=system, atom=atom, fixed=all_fixed, start=rows.clone(), pos=rows.clone(),
                    forces=torch.zeros_like(rows), gforces=torch.zeros_like(rows),
                    key=torch.tensor(keys, dtype=torch.long), natoms=natoms, orig_cell=cells, cell=cells.clone(),
                    energy=torch.full((count,), math.nan, dtype=torch.float64),
                    fmax=torch.full((count,), math.inf, dtype=torch.float64),
                    steps=torch.zeros(count, dtype=torch.long))


# --------------------------------------------------------------------------- the unit-cell filter, flat
def _geometry(st: _Systems, relax_cell: bool) -> tuple[Tensor, Tensor]:
    """(positions [R,3] (atom rows meaningful), cells [S,3,3]) of the coordinates ``st.x``; fixed
    atoms keep their starting Cartesian positions."""
    if not relax_cell:
        return torch.where(st.fixed[:, None], st.start, st.x), st.orig_cell
    eye = torch.eye(3, dtype=st.x.dtype)
    cell_rows = st.x[~st.atom].reshape(-1, 3, 3)
    deform = eye + (cell_rows / st.natoms.to(st.x.dtype)[:, None, None] - eye).transpose(1, 2)
    cell = st.orig_cell @ deform
    pos = torch.einsum("ri,rij->rj", st.x, deform[st.system])
    return torch.where(st.fixed[:, None], st.start, pos), cell


def _generalized_forces(st: _Systems, forces: Tensor, stress: Tensor | None, cell: Tensor, relax_cell: bool) -> Tensor:
    """Forces on the coordinates [R,3] of atom ``forces`` [R,3] (zero on fixed atoms and cell rows)
    and ``stress`` [S,3,3] (eV/Å³) at ``cell`` [S,3,3]: ASE's UnitCellFilter.get_forces."""
    if not relax_cell:
        return forces
    volume = torch.linalg.det(cell).abs()
    virial = -volume[:, None, None] * stress
    deform = torch.linalg.solve(st.orig_cell, cell).transpose(1, 2)
    rows = torch.einsum("ri,rij->rj", forces, deform[st.system])
    cell_rows = torch.linalg.solve(deform, virial.transpose(1, 2)).transpose(1, 2)
    cell_rows = cell_rows / st.natoms.to(forces.dtype)[:, None, None]
    rows[~st.atom] = cell_rows.reshape(-1, 3)
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
    frame_method: str = "all",
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
        max_atoms_per_batch: rows (atoms, plus 3 per structure with ``relax_cell``) evaluated
            together; structures wait their turn. Default: all on a GPU or with an ASE calculator;
            on a CPU, measured once per model, device and dtype (``measured_budget``: where the
            time per atom stops falling). Results report it in ``info["max_atoms_per_batch"]``
            and ``info["budget_source"]`` (``given``, ``measured``, ``cached``, ``all``, ``default``).
        trajectory: True keeps every step in ``info["trajectory"]`` (a list of Atoms); a folder
            path writes ``{name}.traj`` per structure there (``names``: default the input index).
        device, dtype, frame_method, skin, precision: for checkpoint/task providers (see ``Potential``).
        progress: called as ``progress(done, total)`` after every step.
    """
    if fmax <= 0 or steps < 0:
        raise ConfigError(f"fmax must be positive and steps >= 0, got {fmax} and {steps}")
    provider = as_provider(force_provider, device=device, dtype=dtype, frame_method=frame_method, skin=skin,
                           precision=precision)
    results: list = [None] * len(structures)
    waiting = []
    for key, atoms in enumerate(structures):
        message = _prepare(key, atoms, provider, relax_cell)
        if message is None:
            waiting.append((key, atoms))
        else:
            results[key] = _finish_failed(atoms, message)
    cum_rows = np.cumsum([0] + [len(atoms) + (3 if relax_cell else 0) for _, atoms in waiting])
    budget, source = ((max_atoms_per_batch, "given") if max_atoms_per_batch else
                      measured_budget(provider, waiting, relax_cell))
    opt = make_optimizer(optimizer, **dict(optimizer_options or {}))
    run = _Run(structures, provider, trajectory, names, {} if trajectory else None)
    st, joined, done = None, 0, len(structures) - len(waiting)
    while joined < len(waiting) or st is not None:
        st, joined = _admit(st, waiting, cum_rows, joined, budget, relax_cell, opt)
        pos, cell = _geometry(st, relax_cell)
        out, budget = _evaluate(provider, st, pos[st.atom], cell, relax_cell, budget)
        st, failure = _absorb(st, out, pos, cell, relax_cell)
        if run.snapshots is not None:
            run.record(st, failure == 0)
        leaving = (failure > 0) | (st.fmax < fmax) | (st.steps >= steps)
        if bool(leaving.any()):
            for key, atoms in run.finish(st, leaving, failure, out[ERRORS], fmax):
                results[key] = atoms
            done += int(leaving.sum())
            st = _drop(st, opt, leaving)
        if st is not None:
            st.x = st.x + opt.step(st.x, st.gforces, st.system, st.count)
            st.steps = st.steps + 1
        if progress is not None:
            progress(done, len(structures))
    for atoms in results:
        atoms.info.update(max_atoms_per_batch=int(budget), budget_source=source)
    return results


# --------------------------------------------------------------------------- the atom budget
#: Atom budget of a CPU batch when the measurement fails.
CPU_ATOMS_PER_BATCH = 256
#: Batch sizes (structures) timed to choose a CPU budget, and the drop in time per atom that counts
#: as still falling.
BUDGET_SIZES = (1, 2, 4, 8, 16, 32)
BUDGET_GAIN = 0.05
_BUDGETS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # net -> {(device, dtype): rows}


def search_budget(seconds: Callable[[int], tuple[float, int]], sizes: Sequence[int] = BUDGET_SIZES,
                  gain: float = BUDGET_GAIN) -> tuple[int, bool]:
    """(structures per batch, plateau): the smallest batch size whose time per atom is within
    ``gain`` of the lowest over all ``sizes``; ``seconds(k)`` times one batch of the first k
    structures: (s, atoms). Every size is timed, so one noisy size does not end the search.
    ``plateau`` is False when the lowest is the largest size and still falling by more than ``gain``."""
    per_atom = []
    for k in sizes:
        elapsed, atoms = seconds(k)
        per_atom.append(elapsed / atoms)
    lowest = min(per_atom)
    chosen = next(i for i, t in enumerate(per_atom) if t <= lowest * (1 + gain))
    still_falling = len(sizes) > 1 and chosen == len(sizes) - 1 and per_atom[-1] < per_atom[-2] * (1 - gain)
    return sizes[chosen], not still_falling


def measured_budget(provider, waiting: list, relax_cell: bool) -> tuple[int, str]:
    """(rows per batch, source) for ``waiting`` [(key, Atoms)] (prepared): everything on a GPU or
    for a provider without a model; on a CPU, ``search_budget`` on the first structures (a warm-up
    and a few model calls), kept for the process per model, device and dtype (where the time per atom
    stops falling; all the structures when it was still falling with every one of them in)."""
    total = max(1, sum(len(atoms) + (3 if relax_cell else 0) for _, atoms in waiting))
    potential = getattr(provider, "potential", None)
    if potential is None or potential.device.type != "cpu" or not waiting:
        return total, "all"
    cache = _BUDGETS.setdefault(potential.net, {})
    slot = (str(potential.device), str(potential.dtype))
    if slot in cache:
        return cache[slot], "cached"
    sample = waiting[:max(BUDGET_SIZES)]
    rows = np.cumsum([0] + [len(atoms) + (3 if relax_cell else 0) for _, atoms in sample])
    timer = _batch_timer(provider, sample, relax_cell)
    try:
        timer(1)  # warm-up
        k, plateau = search_budget(timer, [k for k in BUDGET_SIZES if k <= len(sample)])
    except (DataError, MemoryError, RuntimeError):  # the engine meets (and reports) it per structure
        return min(total, CPU_ATOMS_PER_BATCH), "default"
    # still falling with every structure in: all of them in one batch is the best measured, and
    # kept like a plateau (a second measurement would only add calls, and noise)
    cache[slot] = total if not plateau and len(sample) < max(BUDGET_SIZES) else int(rows[k])
    return cache[slot], "measured"


def _batch_timer(provider, sample, relax_cell):
    """``seconds(k)``: (best of 2 calls, or 3 while under 0.2 s, atoms) of the provider on the
    first k structures of ``sample`` at their starting positions."""
    keys = [key for key, _ in sample]
    positions = torch.from_numpy(np.concatenate([np.asarray(a.positions, dtype=np.float64) for _, a in sample]))
    cells = torch.from_numpy(np.stack([np.asarray(a.cell.array, dtype=np.float64) for _, a in sample]))
    atoms = np.cumsum([0] + [len(a) for _, a in sample])

    def seconds(k):
        best, spent, calls = math.inf, 0.0, 0
        while calls < 2 or (calls < 3 and spent < 0.2):
            start = time.perf_counter()
            provider.evaluate(keys[:k], positions[:atoms[k]], cells[:k], relax_cell)
            elapsed = time.perf_counter() - start
            best, spent, calls = min(best, elapsed), spent + elapsed, calls + 1
        return best, int(atoms[k])

    return seconds


def _prepare(key, atoms, provider, relax_cell) -> str | None:
    """None for a structure the provider accepts, else why it cannot be relaxed."""
    if relax_cell and not (np.all(atoms.pbc) and abs(atoms.cell.volume) > 0):
        return "relax_cell needs a structure periodic along x, y and z (a molecule has no cell to relax)"
    try:
        provider.prepare(key, atoms)
    except (DataError, FrameavgError) as exc:
        return str(exc)
    return None


def _admit(st, waiting, cum_rows, joined, budget, relax_cell, opt):
    """Waiting structures join (in order) while the batch holds at most ``budget`` rows (one
    structure at least when the batch is empty): (state, number of structures joined so far)."""
    load = 0 if st is None else st.x.shape[0]
    stop = int(np.searchsorted(cum_rows, cum_rows[joined] + budget - load, side="right")) - 1
    if st is None:
        stop = max(stop, joined + 1)
    stop = min(stop, len(waiting))
    if stop <= joined:
        return st, joined
    keys, structures = zip(*waiting[joined:stop])
    new = _new_systems(list(keys), list(structures), relax_cell)
    opt.extend(new.x.shape[0], new.count, new.x)
    return (new if st is None else st.join(new)), stop


def _drop(st, opt, leaving):
    """The state without the structures ``leaving`` [S] (None when none stays)."""
    stay = ~leaving
    if not bool(stay.any()):
        opt.state = None
        return None
    systems = torch.nonzero(stay).squeeze(1)
    rows = torch.nonzero(stay[st.system]).squeeze(1)
    opt.select(rows, systems)
    return st.select(rows, systems)


def _evaluate(provider, st, positions, cells, relax_cell, budget):
    """(provider output for all structures, budget); on out-of-memory the batch is split in two
    (and the budget lowered to the half that fitted), a structure the model refuses is found."""
    keys, splits, bounds = st.key.tolist(), [], {}

    def ranges():
        if not bounds:
            bounds["atoms"] = [0] + torch.cumsum(st.natoms, 0).tolist()
            bounds["rows"] = [0] + torch.cumsum(st.rows, 0).tolist()
        return bounds["atoms"], bounds["rows"]

    def run(lo, hi):
        whole = (lo, hi) == (0, len(keys))  # the usual case: no per-structure offsets needed
        atoms = ranges()[0] if not whole else [0] * hi + [positions.shape[0]]
        try:
            return provider.evaluate(keys[lo:hi], positions[atoms[lo]:atoms[hi]], cells[lo:hi], relax_cell)
        except DataError as exc:  # a structure the model refuses: find it, the others go on
            if hi - lo <= 1:
                return _failed_output(atoms[hi] - atoms[lo], relax_cell, str(exc))
            return _merge([run(k, k + 1) for k in range(lo, hi)])
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and not _out_of_memory(exc):
                raise
            if hi - lo <= 1:
                raise FrameavgError(f"structure {keys[lo]} does not fit in memory on its own") from None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            mid = (lo + hi) // 2
            rows = ranges()[1]
            splits.append(rows[mid] - rows[lo])
            return _merge([run(lo, mid), run(mid, hi)])

    return run(0, len(keys)), (min(splits) if splits else budget)


def _failed_output(atoms: int, stress: bool, message: str) -> dict:
    """A provider output for one structure that could not be evaluated."""
    out = {ENERGY: torch.full((1,), math.nan, dtype=torch.float64),
           FORCES: torch.full((atoms, 3), math.nan, dtype=torch.float64), ERRORS: {0: message}}
    if stress:
        out[STRESS] = torch.full((1, 3, 3), math.nan, dtype=torch.float64)
    return out


def _merge(outputs: list[dict]) -> dict:
    """Provider outputs of consecutive groups of structures as one."""
    merged = {name: torch.cat([o[name] for o in outputs]) for name in (ENERGY, FORCES, STRESS) if name in outputs[0]}
    merged[ERRORS], offset = {}, 0
    for o in outputs:
        merged[ERRORS].update({offset + k: message for k, message in o[ERRORS].items()})
        offset += o[ENERGY].shape[0]
    return merged


def _out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


class RelaxStatus(str, Enum):
    """How a relaxation ended. ``info["status"]`` is the value, with ``": <reason>"`` after
    ``failed``; ``RelaxStatus.of(info["status"])`` reads it back."""

    CONVERGED = "converged"
    NOT_CONVERGED = "not converged"
    FAILED = "failed"

    @classmethod
    def of(cls, status: str) -> "RelaxStatus":
        """The status of an ``info["status"]`` text (``failed: ...`` is FAILED)."""
        return cls.FAILED if str(status).startswith(cls.FAILED.value) else cls(status)

    def with_reason(self, reason: str) -> str:
        """The ``info["status"]`` text: the value, and ``: reason`` for a failure."""
        return f"{self.value}: {reason}" if self is RelaxStatus.FAILED else self.value


#: Failure codes of ``_absorb`` (0: evaluated) and their statuses (1: the provider's message).
FAILURES = {2: "non-finite energy or forces", 3: "non-finite stress"}


def _absorb(st, out, pos, cell, relax_cell):
    """Take an evaluation at positions ``pos`` [R,3] and ``cell`` [S,3,3] into the state; returns
    (state, failure code [S]: 0 evaluated, 1 refused by the provider, see ``FAILURES``). Failed
    structures keep their last good values."""
    count = st.count
    forces = torch.zeros_like(st.x)
    forces[st.atom] = out[FORCES].to(forces.dtype)
    energy = out[ENERGY].to(forces.dtype)
    refused = torch.zeros(count, dtype=torch.bool)
    if out[ERRORS]:
        refused[list(out[ERRORS])] = True
    bad_rows = ~torch.isfinite(forces).all(-1)
    nonfinite = ~torch.isfinite(energy) | (system_sum(bad_rows.to(forces.dtype), st.system, count) > 0)
    forces = torch.where(st.fixed[:, None], torch.zeros_like(forces), forces)
    generalized = _generalized_forces(st, forces, out.get(STRESS), cell, relax_cell)
    bad_stress = system_sum((~torch.isfinite(generalized).all(-1)).to(forces.dtype), st.system, count) > 0
    failure = torch.where(refused, 1, torch.where(nonfinite, 2, torch.where(bad_stress, 3, 0)))
    ok = failure == 0
    ok_rows = ok[st.system][:, None]
    largest = system_max((generalized * generalized).sum(-1).sqrt(), st.system, count)
    st.pos = torch.where(ok_rows, pos, st.pos)
    st.forces = torch.where(ok_rows, forces, st.forces)
    st.gforces = torch.where(ok_rows, generalized, st.gforces)
    st.cell = torch.where(ok[:, None, None], cell, st.cell)
    st.energy = torch.where(ok, energy, st.energy)
    st.fmax = torch.where(ok, largest, st.fmax)
    return st, failure


# --------------------------------------------------------------------------- results
class _Run:
    """Per-structure outputs of a relaxation: results of leaving structures, trajectories."""

    def __init__(self, structures, provider, trajectory, names, snapshots):
        self.structures, self.provider, self.trajectory, self.names = structures, provider, trajectory, names
        self.snapshots = snapshots  # {key: [Atoms]} when trajectories are kept

    def _atoms(self, st, k: int, start: int):
        """The input structure ``st.key[k]`` at its last good evaluation (rows from ``start``)."""
        key, n = int(st.key[k]), int(st.natoms[k])
        atoms = self.structures[key].copy()
        energy = float(st.energy[k])
        if not math.isnan(energy):
            atoms.set_cell(st.cell[k].numpy())
            atoms.positions = st.pos[start:start + n].numpy()
            atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=st.forces[start:start + n].numpy().copy())
        return atoms

    def record(self, st, ok):
        """A snapshot of every structure evaluated this step (``ok`` [S])."""
        starts = (torch.cumsum(st.rows, 0) - st.rows).tolist()
        for k in torch.nonzero(ok).squeeze(1).tolist():
            self.snapshots.setdefault(int(st.key[k]), []).append(self._atoms(st, k, starts[k]))

    def finish(self, st, leaving, failure, errors, fmax):
        """(key, result Atoms) of each structure ``leaving`` [S] (``fmax``: the threshold, eV/Å)."""
        index = torch.nonzero(leaving).squeeze(1)
        starts = (torch.cumsum(st.rows, 0) - st.rows)[index].tolist()
        for k, start in zip(index.tolist(), starts):
            key, code, steps = int(st.key[k]), int(failure[k]), int(st.steps[k])
            if code:
                status = RelaxStatus.FAILED.with_reason(errors[k] if code == 1 else FAILURES[code])
            else:
                status = (RelaxStatus.CONVERGED if float(st.fmax[k]) < fmax else RelaxStatus.NOT_CONVERGED).value
            self.provider.release(key)
            atoms = self._atoms(st, k, start)
            atoms.info.update(converged=status == RelaxStatus.CONVERGED.value, steps=steps, energy=float(st.energy[k]),
                              fmax=float(st.fmax[k]), status=status)
            self._save_trajectory(atoms, key)
            yield key, atoms

    def _save_trajectory(self, atoms, key):
        if not self.trajectory:
            return
        snapshots = self.snapshots.pop(key, [])
        if isinstance(self.trajectory, (str, Path)):
            from ase.io import write

            from frameavg.files import atomic_output

            folder = Path(self.trajectory)
            folder.mkdir(parents=True, exist_ok=True)
            name = key if self.names is None else self.names[key]
            with atomic_output(folder / f"{name}.traj") as tmp:
                write(str(tmp), snapshots, format="traj")
        else:
            atoms.info["trajectory"] = snapshots


def _finish_failed(atoms, message):
    atoms = atoms.copy()
    atoms.info.update(converged=False, steps=0, energy=math.nan, fmax=math.nan,
                      status=RelaxStatus.FAILED.with_reason(message))
    return atoms
