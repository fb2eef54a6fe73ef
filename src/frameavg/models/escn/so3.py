"""Spherical-harmonic machinery of eSCN: the deterministic edge frame, Wigner-D matrices, the
order (m) layout of the SO(2) convolution and the S2 grids of the point-wise non-linearity.

Conventions (e3nn's): real spherical harmonics with ``integral`` normalisation, coefficients of
degree l stored in one block of 2l+1 entries, blocks l = 0..lmax one after another
((lmax+1)^2 entries in all). The polar axis is **y**: inside block l, entry ``l + m`` has order m,
the m = 0 entry is invariant under rotations about y, and the pair (l-m, l+m) turns by the angle
m·φ under a rotation by φ about y. The l = 1 block is (x, y, z) · sqrt(3/4π), so its Wigner-D
matrix is the rotation matrix itself.

Edge frame rule (deterministic, :func:`edge_frame`)
-------------------------------------------------
eSCN rotates every edge direction u onto the polar axis, then only orders |m| <= mmax interact
(the SO(2) convolution). The roll about the axis is left free by the method; the published code
draws it from a random vector, so repeated calls give different outputs. Here the frame is the
**minimal rotation taking u to +y** (rotation about the axis u × y by the angle between u and y):
a function of u alone, smooth everywhere except at u = −y, where the minimal rotation is not
unique. By the hairy-ball theorem no continuous roll rule exists on the whole sphere, so one
singular direction is the least possible; there (|u − (−y)| below machine precision) the frame is
the rotation by π about z. Its rows are written in closed form with 1 + u_y evaluated as
(u_x² + u_z²)/(1 − u_y) on the lower hemisphere (no cancellation), so the frame is accurate
and differentiable up to the singular point (conservative forces need its gradient).

Why the output stays equivariant: the rotation into the edge frame is only defined up to a roll
R → Y(φ) R about the edge axis. Rotating into the frame (Wigner-D), keeping |m| <= mmax, the SO(2)
convolution (complex-multiplication structure per order m) and rotating back commute exactly
with every roll, so the message does not depend on the roll rule at all, and a global rotation Q
(which changes each edge frame by Q and some roll) rotates every message by D(Q): exact
equivariance up to floating point. The point-wise non-linearity sampled on a finite S2 grid does
not commute with arbitrary rolls/rotations (aliasing of the products), which makes the published
eSCN approximately equivariant; that error is the only one left, measured in the tests.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor, nn

from frameavg.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# edge frames


def edge_frame(direction: Tensor) -> Tensor:
    """Rotation matrices [E, 3, 3] taking each unit edge direction u [E, 3] to +y (R @ u = e_y).

    Rows: (r1, u, r3) with r1 = e_x − u_x k (e_y + u), r3 = e_z − u_z k (e_y + u), k = 1/(1 + u_y):
    the transpose is the minimal rotation e_y → u. At u = −y (within machine precision) the frame
    is the rotation by π about z. See the module docstring for the rule and why it is enough.
    """
    ux, uy, uz = direction.unbind(-1)
    perp2 = ux * ux + uz * uz
    lower = uy < 0
    antipodal = lower & (perp2 <= torch.finfo(direction.dtype).eps ** 2)
    # k = 1/(1+u_y); on the lower hemisphere (1 - u_y)/(u_x^2 + u_z^2), the same for unit u.
    # Denominators are made safe in the branch torch.where does not select (finite gradients).
    safe_perp2 = torch.where(lower & ~antipodal, perp2, torch.ones_like(perp2))
    safe_uy = torch.where(lower, torch.zeros_like(uy), uy)
    k = torch.where(lower, (1 - uy) / safe_perp2, 1 / (1 + safe_uy))
    r1 = torch.stack([1 - ux * ux * k, -ux, -ux * uz * k], dim=-1)
    r3 = torch.stack([-ux * uz * k, -uz, 1 - uz * uz * k], dim=-1)
    flip = antipodal.unsqueeze(-1)
    r1 = torch.where(flip, r1.new_tensor([-1.0, 0.0, 0.0]).expand_as(r1), r1)
    r3 = torch.where(flip, r3.new_tensor([0.0, 0.0, 1.0]).expand_as(r3), r3)
    return torch.stack([r1, direction, r3], dim=-2)


def fibonacci_sphere(num_points: int, dtype=torch.float64) -> Tensor:
    """[num_points, 3] nearly uniform unit vectors (golden-angle spiral about y)."""
    i = torch.arange(num_points, dtype=dtype) + 0.5
    polar = torch.acos(1 - 2 * i / num_points)
    azimuth = math.pi * (1 + math.sqrt(5.0)) * i
    return torch.stack([azimuth.cos() * polar.sin(), polar.cos(), azimuth.sin() * polar.sin()], dim=-1)


class FixedTables(nn.Module):
    """Fixed float64 tables, handed out in the dtype and device of the input (cached).

    Not buffers: ``model.float()`` followed by ``model.double()`` would otherwise leave them
    rounded to float32, and float64 symmetry tests need them exact. They are rebuilt from the
    constructor arguments, so checkpoints need not store them.
    """

    def __init__(self):
        super().__init__()
        self._tables: dict[str, Tensor] = {}
        self._cache: dict[tuple, Tensor] = {}

    def add_table(self, name: str, value: Tensor) -> None:
        self._tables[name] = value.to(torch.float64).contiguous()

    def table(self, name: str, like: Tensor) -> Tensor:
        key = (name, like.dtype, like.device)
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = self._tables[name].to(device=like.device, dtype=like.dtype)
        return value


class WignerFromHarmonics(FixedTables):
    """Wigner-D blocks of rotation matrices, from spherical harmonics at rotated points.

    For fixed unit vectors X (K of them), Y^l(R x) = D^l(R) Y^l(x), hence
    D^l(R) = Y^l(R X)ᵀ · pinv(Y^l(X)ᵀ): a polynomial in the entries of R, differentiable
    everywhere. (e3nn's Euler-angle route, ``Irreps.D_from_matrix``, has infinite gradients for
    edges along the polar axis — common in crystals — and would give NaN conservative forces; the
    two agree to float64 precision elsewhere, see the tests.)

    Only the rows of order |m| <= mmax are returned (what the SO(2) convolution uses).
    """

    def __init__(self, lmax: int, mmax: int):
        super().__init__()
        self.lmax, self.mmax = lmax, mmax
        points = fibonacci_sphere(3 * (2 * lmax + 1))
        self.add_table("points", points)
        kept = []  # harmonics of the output rows, |m| <= mmax, degree by degree
        for l in range(lmax + 1):
            harmonics = o3.spherical_harmonics(l, points, normalize=False)  # [K, 2l+1]
            self.add_table(f"pinv_{l}", torch.linalg.pinv(harmonics.T))  # [K, 2l+1]
            kept += [l * l + l + m for m in range(-min(l, mmax), min(l, mmax) + 1)]
        self.register_buffer("kept_rows", torch.tensor(kept), persistent=False)
        self.block_rows = [2 * min(l, mmax) + 1 for l in range(lmax + 1)]

    def forward(self, rotation: Tensor) -> list[Tensor]:
        """Per degree l: [E, 2·min(l, mmax)+1, 2l+1], rows m = −min(l,mmax)..min(l,mmax)."""
        rotated = torch.einsum("kc,erc->ekr", self.table("points", rotation), rotation)  # R x_k, [E, K, 3]
        harmonics = o3.spherical_harmonics(list(range(self.lmax + 1)), rotated, normalize=False)
        # one selection and split (not a slice per degree: each slice's backward is a full zero tensor)
        rows = harmonics.index_select(-1, self.kept_rows).split(self.block_rows, dim=-1)
        return [torch.einsum("ekj,ki->eji", block, self.table(f"pinv_{l}", rotation)) for l, block in enumerate(rows)]


# ---------------------------------------------------------------------------------------------
# coefficient layouts


def m_primary_layout(lmax: int, mmax: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Orders of the truncated edge-frame coefficients.

    Returns ``(entries, order_sizes)``: ``entries`` lists (l, m) in m-primary order
    (m = 0 for l = 0..lmax; then for each m = 1..mmax: (l, +m) for l = m..lmax followed by
    (l, −m) for l = m..lmax); ``order_sizes[m]`` is the number of degrees with that order.
    """
    entries = [(l, 0) for l in range(lmax + 1)]
    sizes = [lmax + 1]
    for m in range(1, mmax + 1):
        entries += [(l, m) for l in range(m, lmax + 1)] + [(l, -m) for l in range(m, lmax + 1)]
        sizes.append(lmax - m + 1)
    return entries, sizes


def full_index(l: int, m: int) -> int:
    """Position of (l, m) in the full l-primary layout of (lmax+1)^2 coefficients."""
    return l * l + l + m


def edge_rotation(blocks: list[Tensor], lmax: int, mmax: int) -> Tensor:
    """One matrix per edge [E, T, (lmax+1)^2] from the Wigner blocks of :class:`WignerFromHarmonics`:
    global coefficients -> the kept edge-frame orders in m-primary order (:func:`m_primary_layout`).

    Dense (zeros outside the blocks): one batched product per rotation instead of one per degree
    plus reordering copies; the extra multiply-adds are small next to the SO(2) convolution.
    """
    entries, _ = m_primary_layout(lmax, mmax)
    row = {entry: i for i, entry in enumerate(entries)}
    first = blocks[0]
    matrix = first.new_zeros(first.shape[0], len(entries), (lmax + 1) ** 2)
    for l, block in enumerate(blocks):
        keep = min(l, mmax)
        rows = [row[(l, m)] for m in range(-keep, keep + 1)]
        matrix[:, rows, l * l:(l + 1) * (l + 1)] = block
    return matrix


# ---------------------------------------------------------------------------------------------
# S2 grids


class SphereGrid(FixedTables):
    """Sampling matrices between coefficients and a (β, α) grid of e3nn (``integral`` normalisation).

    ``to_grid`` [P, n] maps the chosen coefficients (``entries``: list of (l, m)) to the P = res_beta
    · res_alpha grid values, ``from_grid`` [n, P] projects grid values back by quadrature (exact
    for signals band-limited to these coefficients, Gauss-Legendre-like in β, uniform in α).
    """

    def __init__(self, lmax: int, entries: list[tuple[int, int]], res_beta: int, res_alpha: int):
        super().__init__()
        mmax = max(abs(m) for _, m in entries)
        if res_beta % 2 or res_beta < 2 * (lmax + 1):
            raise ConfigError(f"S2 grid: res_beta must be even and >= {2 * (lmax + 1)} for lmax={lmax}, got {res_beta}")
        if res_alpha < 2 * mmax + 1:
            raise ConfigError(f"S2 grid: res_alpha must be >= {2 * mmax + 1} for orders up to {mmax}, got {res_alpha}")
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # e3nn computes the β quadrature weights in the default dtype
        try:
            to = o3.ToS2Grid(lmax, (res_beta, res_alpha), normalization="integral", dtype=torch.float64)
            back = o3.FromS2Grid((res_beta, res_alpha), lmax, normalization="integral", dtype=torch.float64)
        finally:
            torch.set_default_dtype(default)
        index = [full_index(l, m) for l, m in entries]
        to_grid = torch.einsum("mbi,am->bai", to.shb, to.sha).reshape(-1, (lmax + 1) ** 2)[:, index]
        from_grid = torch.einsum("am,mbi->bai", back.sha, back.shb).reshape(-1, (lmax + 1) ** 2)[:, index]
        self.res = (res_beta, res_alpha)
        self.num_points = to_grid.shape[0]
        self.add_table("to_grid", to_grid)  # [P, n]
        self.add_table("from_grid", from_grid.T)  # [n, P]

    def to_points(self, coefficients: Tensor) -> Tensor:
        """[M, n, C] coefficients -> [M, P, C] grid values."""
        return torch.matmul(self.table("to_grid", coefficients), coefficients)

    def from_points(self, values: Tensor) -> Tensor:
        """[M, P, C] grid values -> [M, n, C] coefficients (quadrature projection)."""
        return torch.matmul(self.table("from_grid", values), values)
