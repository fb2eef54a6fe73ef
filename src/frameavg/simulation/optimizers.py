"""Batched optimisers: ASE's FIRE and LBFGS, one independent optimiser per structure, vectorised
over a padded batch (float64).

Coordinates are ``x`` [S, R, 3]: S structures, R rows (atoms, plus 3 cell rows under a cell
filter), ``valid`` [S, R] marking the rows a structure has. Every structure follows exactly the
algorithm of ASE's optimiser of the same name (``ase.optimize.FIRE`` / ``ase.optimize.LBFGS``,
ASE 3.23+: same parameters, same step rules), so a batched relaxation reproduces ASE's,
structure by structure. Forces of fixed atoms must be zero (the caller masks them), which keeps
those atoms in place, as ASE's ``FixAtoms`` does.

Structures join and leave the batch between steps (``select``/``extend``); their state travels
with them.
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


def _pad_rows(tensor: Tensor, rows: int, dim: int = 1) -> Tensor:
    """Zero-pad ``tensor`` along ``dim`` to ``rows`` entries."""
    missing = rows - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


def _per_structure_dot(a: Tensor, b: Tensor) -> Tensor:
    """[S] sums over rows and components of a·b ([S, ..., R, 3] -> [S, ...])."""
    return (a * b).sum((-1, -2))


@dataclass
class FIREState:
    """Per structure: velocity v [S,R,3], time step dt [S], mixing a [S], steps since the last
    uphill move n [S], started [S] (ASE's ``vel is None`` before the first step)."""

    v: Tensor
    dt: Tensor
    a: Tensor
    n: Tensor
    started: Tensor


@dataclass
class LBFGSState:
    """Per structure: history s, y [S,M,R,3] (oldest first), rho [S,M], stored entries count [S],
    iteration [S], previous coordinates r0 and forces f0 [S,R,3]."""

    s: Tensor
    y: Tensor
    rho: Tensor
    count: Tensor
    iteration: Tensor
    r0: Tensor
    f0: Tensor


class BatchedOptimizer:
    """Base: state management for structures entering and leaving the batch."""

    state: object = None

    def initial_state(self, count: int, rows: int, like: Tensor):
        raise NotImplementedError

    def extend(self, count: int, rows: int, like: Tensor) -> None:
        """Add fresh states for ``count`` new structures (rows padded to ``rows``)."""
        new = self.initial_state(count, rows, like)
        if self.state is None:
            self.state = new
            return
        merged = {}
        for item in fields(self.state):
            old, add = getattr(self.state, item.name), getattr(new, item.name)
            if old.dim() >= 3:  # row-carrying tensors: pad to the common number of rows
                dim = old.dim() - 2
                width = max(old.shape[dim], add.shape[dim])
                old, add = _pad_rows(old, width, dim), _pad_rows(add, width, dim)
            merged[item.name] = torch.cat([old, add])
        self.state = type(self.state)(**merged)

    def select(self, keep: Tensor) -> None:
        """Keep the states of structures ``keep`` [K] (indices into the batch), in that order."""
        self.state = type(self.state)(**{f.name: getattr(self.state, f.name).index_select(0, keep)
                                         for f in fields(self.state)})

    def pad(self, rows: int) -> None:
        """Widen row-carrying state to ``rows`` rows."""
        self.state = type(self.state)(**{
            f.name: _pad_rows(getattr(self.state, f.name), rows, getattr(self.state, f.name).dim() - 2)
            if getattr(self.state, f.name).dim() >= 3 else getattr(self.state, f.name)
            for f in fields(self.state)})

    @property
    def rows(self) -> int:
        """Rows of the row-carrying state (0 before any structure joined)."""
        if self.state is None:
            return 0
        return max(getattr(self.state, f.name).shape[getattr(self.state, f.name).dim() - 2]
                   for f in fields(self.state) if getattr(self.state, f.name).dim() >= 3)

    def step(self, x: Tensor, forces: Tensor, valid: Tensor) -> Tensor:
        """The displacement [S,R,3] of one step at coordinates ``x`` with ``forces`` (zero on
        invalid rows and fixed atoms)."""
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

    def initial_state(self, count, rows, like):
        return FIREState(v=like.new_zeros(count, rows, 3), dt=like.new_full((count,), self.dt),
                         a=like.new_full((count,), self.a), n=torch.zeros(count, dtype=torch.long, device=like.device),
                         started=torch.zeros(count, dtype=torch.bool, device=like.device))

    def step(self, x, forces, valid):
        st = self.state
        v = st.v
        vf = _per_structure_dot(forces, v)
        f_norm = _per_structure_dot(forces, forces).sqrt()
        v_norm = _per_structure_dot(v, v).sqrt()
        downhill = st.started & (vf > 0)
        uphill = st.started & ~(vf > 0)
        mixed = (1.0 - st.a)[:, None, None] * v + (st.a * v_norm / torch.where(f_norm > 0, f_norm, 1.0))[:, None, None] * forces
        v = torch.where(downhill[:, None, None], mixed, v)
        grow = downhill & (st.n > self.Nmin)
        dt = torch.where(grow, torch.clamp(st.dt * self.finc, max=self.dtmax), st.dt)
        a = torch.where(grow, st.a * self.fa, st.a)
        n = torch.where(downhill, st.n + 1, st.n)
        v = torch.where(uphill[:, None, None], torch.zeros_like(v), v)
        a = torch.where(uphill, torch.full_like(a, self.astart), a)
        dt = torch.where(uphill, dt * self.fdec, dt)
        n = torch.where(uphill, torch.zeros_like(n), n)
        v = v + dt[:, None, None] * forces
        dr = dt[:, None, None] * v
        norm = _per_structure_dot(dr, dr).sqrt()
        scale = torch.where(norm > self.maxstep, self.maxstep / torch.where(norm > 0, norm, 1.0), torch.ones_like(norm))
        self.state = FIREState(v=v, dt=dt, a=a, n=n, started=torch.ones_like(st.started))
        return dr * scale[:, None, None] * valid[..., None]


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

    def initial_state(self, count, rows, like):
        zeros = like.new_zeros(count, self.memory, rows, 3)
        long = torch.zeros(count, dtype=torch.long, device=like.device)
        return LBFGSState(s=zeros, y=zeros.clone(), rho=like.new_zeros(count, self.memory), count=long,
                          iteration=long.clone(), r0=like.new_zeros(count, rows, 3), f0=like.new_zeros(count, rows, 3))

    def step(self, x, forces, valid):
        st = self.state
        s, y, rho, count = st.s, st.y, st.rho, st.count
        update = st.iteration > 0
        if bool(update.any()):
            s_new = x - st.r0
            y_new = st.f0 - forces  # gradient difference: (-f) - (-f0)
            sy = _per_structure_dot(y_new, s_new)
            rho_new = 1.0 / torch.where(sy != 0, sy, torch.full_like(sy, float("inf")))
            full = update & (count >= self.memory)
            if bool(full.any()):  # drop the oldest entry: shift the history left
                s = torch.where(full[:, None, None, None], s.roll(-1, dims=1), s)
                y = torch.where(full[:, None, None, None], y.roll(-1, dims=1), y)
                rho = torch.where(full[:, None], rho.roll(-1, dims=1), rho)
                count = torch.where(full, count - 1, count)
            slot = torch.nn.functional.one_hot(count.clamp(max=self.memory - 1), self.memory).to(x.dtype)
            slot = slot * update[:, None].to(x.dtype)
            s = s * (1 - slot)[..., None, None] + slot[..., None, None] * s_new[:, None]
            y = y * (1 - slot)[..., None, None] + slot[..., None, None] * y_new[:, None]
            rho = rho * (1 - slot) + slot * rho_new[:, None]
            count = torch.where(update, count + 1, count)
        q = -forces
        alphas = []
        for i in range(self.memory - 1, -1, -1):
            a_i = rho[:, i] * _per_structure_dot(s[:, i], q)
            q = q - a_i[:, None, None] * y[:, i]
            alphas.append(a_i)
        alphas.reverse()
        z = q / self.alpha
        for i in range(self.memory):
            b = rho[:, i] * _per_structure_dot(y[:, i], z)
            z = z + s[:, i] * (alphas[i] - b)[:, None, None]
        p = -z * valid[..., None]
        longest = (p * p).sum(-1).sqrt().amax(-1)
        scale = torch.where(longest >= self.maxstep, self.maxstep / torch.where(longest > 0, longest, 1.0),
                            torch.ones_like(longest))
        dr = p * (scale * self.damping)[:, None, None]
        self.state = LBFGSState(s=s, y=y, rho=rho, count=count, iteration=st.iteration + 1, r0=x.clone(),
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
