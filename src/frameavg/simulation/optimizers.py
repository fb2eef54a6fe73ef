"""Batched optimisers: ASE's FIRE and LBFGS, one independent optimiser per structure, on flat
tensors with a system index (float64), as TorchSim's ``SimState`` keeps them.

Coordinates are ``x`` [R, 3]: the rows of all S structures one after the other (atoms, plus 3 cell
rows each under a cell filter), ``system`` [R] the structure of each row (0..S-1, non-decreasing).
Per-structure quantities are [S] tensors; per-structure dot products and maxima are segment sums
and maxima over rows (``index_add_``/``scatter_reduce_``, in row order: a structure's numbers do
not depend on the others in the batch). Every structure follows exactly the algorithm of ASE's
optimiser of the same name (``ase.optimize.FIRE`` / ``ase.optimize.LBFGS``, ASE 3.23+: same
parameters, same step rules), so a batched relaxation reproduces ASE's, structure by structure.
Forces of fixed atoms must be zero (the caller masks them), which keeps those atoms in place, as
ASE's ``FixAtoms`` does.

Structures join and leave between steps (``extend``/``select``); their state travels with them.
The Python work of a step does not depend on S (LBFGS loops over its history length only).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

#: OCP's AdsorbML / relaxation settings for LBFGS (ASE's defaults: maxstep 0.2, memory 100, alpha 70).
ADSORBML_LBFGS = {"maxstep": 0.04, "memory": 50, "damping": 1.0, "alpha": 70.0}
FIRE_DEFAULTS = {"dt": 0.1, "maxstep": 0.2, "dtmax": 1.0, "Nmin": 5, "finc": 1.1, "fdec": 0.5, "astart": 0.1,
                 "fa": 0.99, "a": 0.1}
LBFGS_DEFAULTS = {"maxstep": 0.2, "memory": 100, "damping": 1.0, "alpha": 70.0}


def system_sum(values: Tensor, system: Tensor, count: int) -> Tensor:
    """Per-structure sums [..., S] of ``values`` [..., R] (rows added in order)."""
    return values.new_zeros(values.shape[:-1] + (count,)).index_add_(-1, system, values)


def system_max(values: Tensor, system: Tensor, count: int) -> Tensor:
    """Per-structure maxima [S] of non-negative ``values`` [R] (0 for a structure without rows)."""
    return values.new_zeros(count).scatter_reduce_(0, system, values, "amax")


def system_dot(a: Tensor, b: Tensor, system: Tensor, count: int) -> Tensor:
    """Per-structure dot products [..., S] of ``a``, ``b`` [..., R, 3]."""
    return system_sum((a * b).sum(-1), system, count)


def _row(dim: int = 0):
    """A state field indexed by rows along ``dim``."""
    return field(metadata={"index": "row", "dim": dim})


def _system(dim: int = 0):
    """A state field indexed by structures along ``dim``."""
    return field(metadata={"index": "system", "dim": dim})


@dataclass
class FIREState:
    """Velocity v [R,3]; per structure: time step dt [S], mixing a [S], steps since the last uphill
    move n [S], started [S] (ASE's ``vel is None`` before the first step)."""

    v: Tensor = _row()
    dt: Tensor = _system()
    a: Tensor = _system()
    n: Tensor = _system()
    started: Tensor = _system()


@dataclass
class LBFGSState:
    """History s, y [M,R,3] (oldest first per structure), rho [M,S], stored entries count [S],
    iteration [S], previous coordinates r0 and forces f0 [R,3]."""

    s: Tensor = _row(1)
    y: Tensor = _row(1)
    rho: Tensor = _system(1)
    count: Tensor = _system()
    iteration: Tensor = _system()
    r0: Tensor = _row()
    f0: Tensor = _row()


class BatchedOptimizer:
    """Base: state of structures entering and leaving the batch."""

    state: object = None

    def initial_state(self, rows: int, count: int, like: Tensor):
        raise NotImplementedError

    def extend(self, rows: int, count: int, like: Tensor) -> None:
        """Append fresh states of ``count`` new structures with ``rows`` rows in all."""
        new = self.initial_state(rows, count, like)
        if self.state is None:
            self.state = new
            return
        self.state = type(new)(**{f.name: torch.cat([getattr(self.state, f.name), getattr(new, f.name)],
                                                    dim=f.metadata["dim"]) for f in fields(new)})

    def select(self, rows: Tensor, systems: Tensor) -> None:
        """Keep the states of rows ``rows`` [R'] and structures ``systems`` [S'] (indices, in order)."""
        keep = {"row": rows, "system": systems}
        self.state = type(self.state)(**{
            f.name: getattr(self.state, f.name).index_select(f.metadata["dim"], keep[f.metadata["index"]])
            for f in fields(self.state)})

    def step(self, x: Tensor, forces: Tensor, system: Tensor, count: int) -> Tensor:
        """The displacement [R,3] of one step at coordinates ``x`` [R,3] (Å) with ``forces`` [R,3]
        (eV/Å, zero on fixed atoms) of ``count`` structures, ``system`` [R] the structure of each row."""
        raise NotImplementedError


@dataclass
class FIRE(BatchedOptimizer):
    """ASE's FIRE (``maxstep`` bounds the norm of a structure's whole step vector)."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    Nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99
    a: float = 0.1
    state: FIREState | None = field(default=None, repr=False)

    def initial_state(self, rows, count, like):
        return FIREState(v=like.new_zeros(rows, 3), dt=like.new_full((count,), self.dt),
                         a=like.new_full((count,), self.a), n=torch.zeros(count, dtype=torch.long, device=like.device),
                         started=torch.zeros(count, dtype=torch.bool, device=like.device))

    def step(self, x, forces, system, count):
        st = self.state
        v = st.v
        vf = system_dot(forces, v, system, count)
        f_norm = system_dot(forces, forces, system, count).sqrt()
        v_norm = system_dot(v, v, system, count).sqrt()
        downhill = st.started & (vf > 0)
        uphill = st.started & ~(vf > 0)
        mix = st.a * v_norm / torch.where(f_norm > 0, f_norm, 1.0)
        mixed = (1.0 - st.a)[system, None] * v + mix[system, None] * forces
        v = torch.where(downhill[system, None], mixed, v)
        grow = downhill & (st.n > self.Nmin)
        dt = torch.where(grow, torch.clamp(st.dt * self.finc, max=self.dtmax), st.dt)
        a = torch.where(grow, st.a * self.fa, st.a)
        n = torch.where(downhill, st.n + 1, st.n)
        v = torch.where(uphill[system, None], torch.zeros_like(v), v)
        a = torch.where(uphill, torch.full_like(a, self.astart), a)
        dt = torch.where(uphill, dt * self.fdec, dt)
        n = torch.where(uphill, torch.zeros_like(n), n)
        v = v + dt[system, None] * forces
        dr = dt[system, None] * v
        norm = system_dot(dr, dr, system, count).sqrt()
        scale = torch.where(norm > self.maxstep, self.maxstep / torch.where(norm > 0, norm, 1.0), torch.ones_like(norm))
        self.state = FIREState(v=v, dt=dt, a=a, n=n, started=torch.ones_like(st.started))
        return dr * scale[system, None]


@dataclass
class LBFGS(BatchedOptimizer):
    """ASE's LBFGS: two-loop recursion with H0 = 1/alpha, the step scaled so that no row moves
    more than ``maxstep``, times ``damping``. Defaults: OCP's AdsorbML/relaxation settings
    (``ADSORBML_LBFGS``: maxstep 0.04 Å, memory 50); ASE's own are ``LBFGS_DEFAULTS``."""

    maxstep: float = 0.04
    memory: int = 50
    damping: float = 1.0
    alpha: float = 70.0
    state: LBFGSState | None = field(default=None, repr=False)

    def initial_state(self, rows, count, like):
        long = torch.zeros(count, dtype=torch.long, device=like.device)
        return LBFGSState(s=like.new_zeros(self.memory, rows, 3), y=like.new_zeros(self.memory, rows, 3),
                          rho=like.new_zeros(self.memory, count), count=long, iteration=long.clone(),
                          r0=like.new_zeros(rows, 3), f0=like.new_zeros(rows, 3))

    def _remember(self, x, forces, system, count):
        """(s, y, rho, stored count) with this step's pair appended for structures past their first step."""
        st = self.state
        s, y, rho, stored = st.s, st.y, st.rho, st.count
        update = st.iteration > 0
        if not bool(update.any()):
            return s, y, rho, stored
        s_new = x - st.r0
        y_new = st.f0 - forces  # gradient difference: (-f) - (-f0)
        sy = system_dot(y_new, s_new, system, count)
        rho_new = 1.0 / torch.where(sy != 0, sy, torch.full_like(sy, float("inf")))
        full = update & (stored >= self.memory)
        if bool(full.any()):  # drop the oldest entry: shift the history left
            s = torch.where(full[system][None, :, None], s.roll(-1, dims=0), s)
            y = torch.where(full[system][None, :, None], y.roll(-1, dims=0), y)
            rho = torch.where(full[None, :], rho.roll(-1, dims=0), rho)
            stored = torch.where(full, stored - 1, stored)
        slot = stored.clamp(max=self.memory - 1)  # written in place: the state is this optimiser's own
        rows = torch.nonzero(update[system]).squeeze(1)
        systems = torch.nonzero(update).squeeze(1)
        s[slot[system[rows]], rows] = s_new[rows]
        y[slot[system[rows]], rows] = y_new[rows]
        rho[slot[systems], systems] = rho_new[systems]
        return s, y, rho, torch.where(update, stored + 1, stored)

    def step(self, x, forces, system, count):
        st = self.state
        s, y, rho, stored = self._remember(x, forces, system, count)
        q = -forces
        entries = int(stored.max()) if count else 0  # empty slots have rho = 0: no contribution
        alphas = [None] * entries
        for i in range(entries - 1, -1, -1):
            alphas[i] = rho[i] * system_dot(s[i], q, system, count)
            q = q - alphas[i][system, None] * y[i]
        z = q / self.alpha
        for i in range(entries):
            b = rho[i] * system_dot(y[i], z, system, count)
            z = z + s[i] * (alphas[i] - b)[system, None]
        p = -z
        longest = system_max((p * p).sum(-1).sqrt(), system, count)
        scale = torch.where(longest >= self.maxstep, self.maxstep / torch.where(longest > 0, longest, 1.0),
                            torch.ones_like(longest))
        dr = p * (scale * self.damping)[system, None]
        self.state = LBFGSState(s=s, y=y, rho=rho, count=stored, iteration=st.iteration + 1, r0=x.clone(),
                                f0=forces.clone())
        return dr


OPTIMIZERS = {"fire": FIRE, "lbfgs": LBFGS}


def make_optimizer(name: str, **options) -> BatchedOptimizer:
    """``fire`` or ``lbfgs`` with ASE's defaults, overridden by ``options``."""
    from frameavg.errors import ConfigError

    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{name}' (choose fire or lbfgs)")
    allowed = {f.name for f in fields(OPTIMIZERS[key])} - {"state"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"optimizer {key} has no option(s) {', '.join(unknown)} (options: {', '.join(sorted(allowed))})")
    return OPTIMIZERS[key](**options)
