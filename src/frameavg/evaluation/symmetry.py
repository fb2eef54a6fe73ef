"""How symmetric is a model, measured: invariance of energies and equivariance of forces.

For a model ``forward(batch) -> {"energy": [B], "forces": [N,3]}`` (any model, frame-averaged or
not) and a list of structures, every check transforms each structure, rebuilds its neighbour list,
predicts again and compares with the transformed original prediction:

===========  ===================================================================================
check        transform (energy must not change; forces must follow as F[perm] @ R.T)
===========  ===================================================================================
rotation     random proper rotation (Haar on SO(3); about z for ``dim="2D"``)
reflection   random improper orthogonal map (about z: a vertical mirror, for ``dim="2D"``)
translation  random shift of all atoms (σ = 2 Å per axis)
permutation  random reordering of the atoms
image        periodic only: every atom moved by a random lattice vector (components −1, 0, 1
             along periodic axes)
cell         periodic only: the cell replaced by an equivalent one (unimodular integer change of
             basis mixing periodic axes), atoms wrapped into it
batch        each structure predicted alone vs inside a batch of ``batch_size``
repeat       the same batch predicted twice (determinism; stochastic frames differ by design)
===========  ===================================================================================

Errors: energy |ΔE| per structure (eV) and relative |ΔE|/max(|E|, 1e-6·max|E|); forces |ΔF| per
atom (vector norm, eV/Å) and relative to the largest force norm of the data set (the mean
relative error divides by the mean force norm). Transformed structures carry the model inputs
only (pos, atomic_numbers, cell, pbc, natoms, tags, fixed), not the labels.

Each row also says whether the check *holds*: every energy and force error within the report's
tolerance (``TOLERANCES`` per dtype: absolute or relative, whichever is looser). A symmetry a model
claims is shown as holding only when the numbers say so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from frameavg.data.neighbors import RadiusGraph
from frameavg.derivatives import with_derivatives
from frameavg.errors import ConfigError, DataError
from frameavg.outputs import ENERGY, FORCES

CHECKS = ("rotation", "reflection", "translation", "permutation", "image", "cell", "batch", "repeat")
#: Default (atol, rtol) of "exact up to floating point" per dtype: eV and eV/Å, and relative to |E|
#: per structure / to the largest force norm.
TOLERANCES = {torch.float64: (1e-10, 1e-9), torch.float32: (1e-5, 1e-4)}


def default_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for an exact symmetry measured in ``dtype`` (float32 values for other dtypes)."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])
PERIODIC_CHECKS = ("image", "cell")
INPUT_FIELDS = ("pos", "atomic_numbers", "cell", "pbc", "natoms", "tags", "fixed")


# --------------------------------------------------------------------------------------------
# transforms of one structure


@dataclass
class Transformed:
    """A transformed structure and how outputs must follow: forces_new = forces[permutation] @ rotation.T."""

    data: Data
    rotation: np.ndarray
    permutation: np.ndarray


def model_inputs(data: Data) -> Data:
    """The input fields of ``data`` only (see INPUT_FIELDS)."""
    return Data(**{key: data[key] for key in INPUT_FIELDS if key in data})


def is_periodic(data: Data) -> bool:
    return "pbc" in data and bool(data.pbc.any()) and "cell" in data and bool((data.cell != 0).any())


def transform_structure(data: Data, check: str, rng: np.random.Generator, dim: str = "3D") -> Transformed:
    """Apply a random transform of kind ``check`` (see module docstring) to one structure."""
    if check not in CHECKS[:6]:
        raise ConfigError(f"unknown transform '{check}' (choose from {', '.join(CHECKS[:6])})")
    data = model_inputs(data)
    dtype = data.pos.dtype
    pos = data.pos.detach().double().numpy()
    cell = data.cell.detach().double().numpy().reshape(3, 3) if "cell" in data else np.zeros((3, 3))
    n = pos.shape[0]
    rotation, permutation = np.eye(3), np.arange(n)
    if check in ("rotation", "reflection"):
        rotation = random_rotation(rng, proper=check == "rotation", about_z=dim == "2D")
        pos, cell = pos @ rotation.T, cell @ rotation.T
    elif check == "translation":
        pos = pos + rng.normal(scale=2.0, size=3)
    elif check == "permutation":
        permutation = rng.permutation(n)
    elif check == "image":
        periodic = data.pbc.reshape(3).numpy()
        shifts = rng.integers(-1, 2, size=(n, 3)) * periodic
        pos = pos + shifts @ cell
    elif check == "cell":
        change = random_unimodular(rng, data.pbc.reshape(3).numpy())
        cell = change @ cell
        periodic = data.pbc.reshape(3).numpy()
        frac = pos @ np.linalg.inv(cell)
        frac[:, periodic] -= np.floor(frac[:, periodic])
        pos = frac @ cell
    out = data.clone()
    out.pos = torch.as_tensor(pos, dtype=dtype)
    if "cell" in data:
        out.cell = torch.as_tensor(cell, dtype=data.cell.dtype).reshape(1, 3, 3)
    if check == "permutation":
        index = torch.as_tensor(permutation)
        for key in ("pos", "atomic_numbers", "tags", "fixed"):
            if key in out:
                out[key] = out[key][index]
    return Transformed(out, rotation, permutation)


def random_rotation(rng: np.random.Generator, *, proper: bool, about_z: bool = False) -> np.ndarray:
    """Haar-random matrix [3,3] on SO(3) (proper) or on its improper coset; about z for slabs."""
    if about_z:
        angle = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(angle), math.sin(angle)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return rot if proper else rot @ np.diag([1.0, -1.0, 1.0])
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] = -q[:, 0]
    return q


def random_unimodular(rng: np.random.Generator, periodic: np.ndarray, steps: int = 3) -> np.ndarray:
    """Integer matrix with det ±1 mixing the periodic lattice vectors only (rows: new vectors)."""
    axes = np.flatnonzero(periodic)
    change = np.eye(3, dtype=np.int64)
    if len(axes) < 2:
        if len(axes) == 1:
            change[axes[0], axes[0]] = -1  # a 1D lattice has only ±a as bases
        return change.astype(float)
    for _ in range(steps):
        i, j = rng.choice(axes, size=2, replace=False)
        shear = np.eye(3, dtype=np.int64)
        shear[i, j] = rng.choice([-1, 1])
        change = shear @ change
    return change.astype(float)


# --------------------------------------------------------------------------------------------
# predictions


def predict(model, structures: list[Data], *, graph=None, batch_size: int = 32,
            budget=None) -> tuple[torch.Tensor, list[torch.Tensor | None], list]:
    """Energies [S] (float64), per-structure forces [n,3] (None if the model gives none and its
    energy does not depend on positions) and the frames info of each batch (FrameAveraging only).

    ``graph``: transform adding the neighbour list (e.g. ``RadiusGraph(6.0)``), or None.
    Forces: the model's ``forces`` output, else −∂E/∂pos by autograd. Batches: at most
    ``batch_size`` structures within ``budget`` (``data.budget``; default: the model's in its
    current mode, at the graph's cutoff, half the available memory).
    """
    from frameavg.data.budget import MemoryBudget, batches_by_budget

    if budget is None:
        budget = MemoryBudget.for_network(model, cutoff=float(getattr(graph, "cutoff", None) or 6.0),
                                          max_neighbors=getattr(graph, "max_neighbors", None),
                                          training=bool(getattr(model, "training", False)))
    energies, forces, frames = [], [], []
    for indices in list(batches_by_budget(structures, budget, batch_size)):
        chunk = [graph(structures[i].clone()) if graph is not None else structures[i] for i in indices]
        batch = Batch.from_data_list(chunk)
        with torch.no_grad():
            out = model(batch)
        if "energy" not in out:
            raise ConfigError(f"model output has no 'energy' (keys: {', '.join(out)})")
        energy = out[ENERGY].reshape(-1)
        f = out.get(FORCES)
        if f is None:  # forces as -dE/dpos (None when the energy does not depend on positions)
            with torch.no_grad():
                out = with_derivatives(model, batch, forces=True)
            energy = out[ENERGY].reshape(-1)
            f = out[FORCES] if out[ENERGY].requires_grad else None
        energies.append(energy.detach().double())
        ptr = batch.ptr.tolist()
        forces.extend(None if f is None else f.detach().double()[ptr[i]:ptr[i + 1]] for i in range(len(chunk)))
        frames.append(_frames_of(model, batch))
    return torch.cat(energies), forces, frames


def _frames_of(model, batch):
    """The frames the (first) FrameAveraging inside ``model`` computes for ``batch``, if any."""
    from frameavg.frames.averaging import FrameAveraging

    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    averaging = next((m for m in modules if isinstance(m, FrameAveraging)), None)
    return None if averaging is None else averaging.frames_of(batch)


# --------------------------------------------------------------------------------------------
# the report


@dataclass
class SymmetryRow:
    """Errors of one check over all structures and trials (None: not applicable / no forces)."""

    check: str
    expected: bool | None
    structures: int
    energy_abs_mean: float
    energy_abs_max: float
    energy_rel_mean: float
    energy_rel_max: float
    forces_abs_mean: float | None = None
    forces_abs_max: float | None = None
    forces_rel_mean: float | None = None
    forces_rel_max: float | None = None
    holds: bool | None = None

    def within(self, atol: float, rtol: float) -> bool:
        """Every energy and force error within ``atol`` (absolute) or ``rtol`` (relative)."""
        energy_ok = self.energy_abs_max <= atol or self.energy_rel_max <= rtol
        forces_ok = self.forces_abs_max is None or self.forces_abs_max <= atol or self.forces_rel_max <= rtol
        return energy_ok and forces_ok


@dataclass
class SymmetryReport:
    """Rows per check; ``degeneracy``: worst errors per frame path; ``structures``: per structure,
    its energy, largest force norm and worst errors over the claimed checks."""

    rows: list[SymmetryRow]
    degeneracy: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    structures: list[dict] = field(default_factory=list)

    def row(self, check: str) -> SymmetryRow:
        for row in self.rows:
            if row.check == check:
                return row
        raise KeyError(f"no check '{check}' in this report (checks: {', '.join(r.check for r in self.rows)})")

    def to_dict(self) -> dict:
        return {"meta": self.meta, "checks": [asdict(r) for r in self.rows], "degeneracy": self.degeneracy,
                "structures": self.structures}

    def broken_claims(self) -> list[SymmetryRow]:
        """Rows of claimed symmetries whose measured errors exceed the tolerance."""
        return [r for r in self.rows if r.expected and not r.holds]

    def table(self) -> str:
        """Plain-text table of the report. ``claim``: ``yes`` (claimed and measured within the
        tolerance), ``BROKEN`` (claimed, measured above it), ``no`` (not claimed), ``-`` (no claims)."""
        head = ["check", "claim", "n", "|dE| mean", "|dE| max", "rel max", "|dF| mean", "|dF| max", "rel max"]
        lines = []
        for r in self.rows:
            claim = {True: "yes" if r.holds else "BROKEN", False: "no", None: "-"}[r.expected]
            lines.append([
                r.check, claim, str(r.structures), _fmt(r.energy_abs_mean), _fmt(r.energy_abs_max), _fmt(r.energy_rel_max),
                _fmt(r.forces_abs_mean), _fmt(r.forces_abs_max), _fmt(r.forces_rel_max),
            ])
        widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
        out = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
        out += ["  ".join(c.ljust(w) for c, w in zip(l, widths)) for l in lines]
        atol, rtol = self.meta.get("atol"), self.meta.get("rtol")
        if atol is not None:
            out.append(f"(a check holds when every error is within {atol:g} absolute or {rtol:g} relative)")
        if self.degeneracy:
            out.append("")
            out.append("by frame path (degeneracy class / periodic cloud level; max over the claimed checks):")
            width = max(8, *(len(name) for name in self.degeneracy))
            for name, d in self.degeneracy.items():
                out.append(f"  {name:{width}s} {d['count']:5d} structures  |dE| max {_fmt(d['energy_abs_max'])}"
                           f"  |dF| max {_fmt(d['forces_abs_max'])}  frames/structure {d['frames_mean']:.1f}")
        return "\n".join(out)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2e}"


def symmetry_report(
    model,
    structures: list[Data],
    *,
    checks=CHECKS,
    dim: str = "3D",
    cutoff: float | None = 6.0,
    max_neighbors: int | None = None,
    strict_neighbors: bool = False,
    trials: int = 1,
    batch_size: int = 32,
    seed: int = 0,
    expected: dict | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> SymmetryReport:
    """Measure the symmetry errors of ``model`` on ``structures`` (see module docstring).

    Args:
        model: ``forward(batch) -> dict`` with ``energy`` [B] (and ``forces`` [N,3] or energies
            differentiable in ``pos``). Put it in the mode you want measured (``model.eval()``).
        structures: ``Data`` objects (``frameavg.data.atoms_to_data`` / ``read_structures``).
        checks: subset of CHECKS; periodic checks skip non-periodic structures.
        dim: ``3D`` or ``2D`` (rotations and reflections about z, for slab models).
        cutoff, max_neighbors, strict_neighbors: neighbour list rebuilt for every transformed
            structure (the settings the model expects); ``cutoff=None`` for models that build their
            own graph. With ``max_neighbors``, ``strict_neighbors=True`` cuts equidistant
            neighbours arbitrarily, which makes the graph itself depend on orientation in
            symmetric crystals (measured: 4e-4 eV on an oxide); the default keeps ties, as the
            training data pipeline does.
        trials: random transforms per structure and check.
        expected: ``{check: bool}``, the symmetries the model claims (shown in the table; the
            per-degeneracy-class maxima only include claimed checks).
        atol, rtol: tolerance of ``SymmetryRow.holds`` (default: ``default_tolerance`` of the
            structures' dtype).
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise ConfigError(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    if not structures:
        raise DataError("no structures to evaluate")
    graph = RadiusGraph(cutoff, max_neighbors, strict=strict_neighbors) if cutoff is not None else None
    rng = np.random.default_rng(seed)
    structures = [model_inputs(d) for d in structures]
    default_atol, default_rtol = default_tolerance(structures[0].pos.dtype)
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    energy, forces, frames = predict(model, structures, graph=graph, batch_size=batch_size)
    force_norms = [f.norm(dim=-1) for f in forces if f is not None]
    force_max = float(torch.cat(force_norms).max()) if force_norms else None
    force_mean = float(torch.cat(force_norms).mean()) if force_norms else None
    worst_energy = torch.zeros(len(structures), dtype=torch.float64)
    worst_force = torch.zeros(len(structures), dtype=torch.float64)

    reference = _Reference(energy, forces, worst_energy, worst_force)
    rows = []
    for check in checks:
        claimed = expected is None or expected.get(check) is not False
        de_all, df_all, who = _measure_check(model, structures, check, reference, claimed,
                                             trials=trials, rng=rng, dim=dim, graph=graph, batch_size=batch_size)
        if not de_all:
            continue
        row = _symmetry_row(check, expected, torch.cat(de_all), df_all, who, energy, force_mean, force_max)
        row.holds = row.within(atol, rtol)
        rows.append(row)

    report = SymmetryReport(rows=rows)
    report.degeneracy = _by_degeneracy(frames, worst_energy, worst_force, force_max is not None)
    report.structures = [
        {"index": i, "energy": float(energy[i]), "energy_abs_max": float(worst_energy[i]),
         "forces_max": None if f is None else float(f.norm(dim=-1).max()),
         "forces_abs_max": None if f is None else float(worst_force[i])}
        for i, f in enumerate(forces)
    ]
    report.meta = {"structures": len(structures), "periodic": sum(is_periodic(d) for d in structures),
                   "dim": dim, "cutoff": cutoff, "max_neighbors": max_neighbors, "strict_neighbors": strict_neighbors,
                   "trials": trials, "seed": seed, "atol": atol, "rtol": rtol,
                   "dtype": str(structures[0].pos.dtype).removeprefix("torch.")}
    return report


@dataclass
class _Reference:
    """Predictions on the untransformed structures (energy [B] eV, forces: [N_i, 3] eV/Å or None
    each) and the worst errors per structure so far (energy, force; [B], updated in place)."""

    energy: torch.Tensor
    forces: list
    worst_energy: torch.Tensor
    worst_force: torch.Tensor


def _transformed_predictions(model, structures, check, rng, dim, graph, batch_size):
    """(indices, energies [k], forces, rotations, permutations) of one trial of ``check``; None when
    no structure applies (a periodic check on molecules)."""
    if check in ("batch", "repeat"):
        idx = list(range(len(structures)))
        e2, f2, _ = predict(model, structures, graph=graph, batch_size=1 if check == "batch" else batch_size)
        return idx, e2, f2, [np.eye(3)] * len(idx), [np.arange(d.pos.shape[0]) for d in structures]
    idx = [i for i, d in enumerate(structures) if check not in PERIODIC_CHECKS or is_periodic(d)]
    if not idx:
        return None
    moved = [transform_structure(structures[i], check, rng, dim) for i in idx]
    e2, f2, _ = predict(model, [m.data for m in moved], graph=graph, batch_size=batch_size)
    return idx, e2, f2, [m.rotation for m in moved], [m.permutation for m in moved]


def _measure_check(model, structures, check, ref: _Reference, claimed: bool, *, trials, rng, dim, graph,
                   batch_size) -> tuple[list, list, list]:
    """(energy errors per trial [k] eV, force errors per structure [N_i] eV/Å, structure indices)
    of ``check``; claimed checks update ``ref``'s worst errors."""
    de_all, df_all, who = [], [], []
    for _ in range(trials if check not in ("batch", "repeat") else 1):
        trial = _transformed_predictions(model, structures, check, rng, dim, graph, batch_size)
        if trial is None:
            break
        idx, e2, f2, rotations, perms = trial
        de = (e2 - ref.energy[idx]).abs()
        de_all.append(de)
        who.extend(idx)
        for k, i in enumerate(idx):
            if claimed:
                ref.worst_energy[i] = max(float(ref.worst_energy[i]), float(de[k]))
            if ref.forces[i] is None or f2[k] is None:
                continue
            target = ref.forces[i][torch.as_tensor(perms[k])] @ torch.as_tensor(rotations[k]).T
            diff = (f2[k] - target).norm(dim=-1)
            df_all.append(diff)
            if claimed:
                ref.worst_force[i] = max(float(ref.worst_force[i]), float(diff.max()))
    return de_all, df_all, who


def _symmetry_row(check, expected, de, df_all, who, energy, force_mean, force_max) -> SymmetryRow:
    """The row of ``check``: energy errors ``de`` [k] eV of structures ``who``, force errors
    ``df_all`` (per structure [N_i] eV/Å), relative to the reference energies [B] and force norms."""
    energy_floor = 1e-6 * float(energy.abs().max())
    rel = de / torch.clamp(energy[who].abs(), min=energy_floor if energy_floor > 0 else 1e-300)
    row = SymmetryRow(check=check, expected=None if expected is None else expected.get(check),
                      structures=len(set(who)), energy_abs_mean=float(de.mean()), energy_abs_max=float(de.max()),
                      energy_rel_mean=float(rel.mean()), energy_rel_max=float(rel.max()))
    if df_all:
        df = torch.cat(df_all)
        row.forces_abs_mean = float(df.mean())
        row.forces_abs_max = float(df.max())
        row.forces_rel_mean = _relative(row.forces_abs_mean, force_mean)
        row.forces_rel_max = _relative(row.forces_abs_max, force_max)
    return row


def _relative(error: float, scale: float | None) -> float:
    """``error / scale``; with no force anywhere (scale 0: a single atom), 0 for no error, else inf."""
    if scale:
        return error / scale
    return 0.0 if error == 0 else math.inf


def _by_degeneracy(frames, worst_energy, worst_force, has_forces) -> dict:
    """Worst errors per frame path (``Frames.path_names``: degeneracy class, and the cloud level of
    periodic graphs) of the frames (FrameAveraging models only)."""
    if not frames or any(f is None or f.eigenvalues is None for f in frames):
        return {}
    paths = [name for f in frames for name in f.path_names()]
    counts = torch.cat([f.set_size for f in frames]).cpu().double()
    out = {}
    for name in sorted(set(paths)):
        mask = torch.tensor([p == name for p in paths])
        out[name] = {
            "count": int(mask.sum()),
            "energy_abs_max": float(worst_energy[mask].max()),
            "forces_abs_max": float(worst_force[mask].max()) if has_forces else None,
            "frames_mean": float(counts[mask].mean()),
        }
    return out
