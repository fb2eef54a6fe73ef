"""Small batched linear algebra for frames: a degeneracy-aware ``eigh`` and uniform random rotations."""

from __future__ import annotations

import math

import torch


class _SymmetricEigh(torch.autograd.Function):
    """``torch.linalg.eigh`` whose backward ignores rotations inside (near-)degenerate eigenspaces.

    The textbook gradient contains 1/(λ_j − λ_i), which is infinite (or NaN) when two eigenvalues
    coincide. Frames never use individual eigenvectors of a pair flagged degenerate (only the
    plane they span, or no eigenvector at all), so the gradient of everything downstream is
    invariant to rotations inside that plane and the corresponding terms are exactly zero; we drop
    them instead of computing 0/0.
    """

    @staticmethod
    def forward(ctx, matrix: torch.Tensor, tol: float):
        values, vectors = torch.linalg.eigh(matrix)
        ctx.save_for_backward(values, vectors)
        ctx.tol = tol
        return values, vectors

    @staticmethod
    def backward(ctx, grad_values, grad_vectors):
        values, vectors = ctx.saved_tensors
        vt = vectors.transpose(-1, -2)
        inner = torch.zeros_like(vectors)
        if grad_vectors is not None:
            gap = values.unsqueeze(-2) - values.unsqueeze(-1)  # [..., i, j] = λ_j − λ_i
            scale = values.abs().amax(-1, keepdim=True).unsqueeze(-1)
            resolved = gap.abs() > ctx.tol * scale
            safe_gap = torch.where(resolved, gap, torch.ones_like(gap))
            inner = torch.where(resolved, (vt @ grad_vectors) / safe_gap, torch.zeros_like(gap))
        if grad_values is not None:
            inner = inner + torch.diag_embed(grad_values)
        grad = vectors @ inner @ vt
        return 0.5 * (grad + grad.transpose(-1, -2)), None


def symmetric_eigh(matrix: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of symmetric ``matrix`` [..., d, d].

    ``tol``: eigenvalue pairs with |λ_i − λ_j| <= tol·max|λ| are treated as degenerate by the
    backward pass (see ``_SymmetricEigh``).
    """
    if matrix.requires_grad and torch.is_grad_enabled():
        values, vectors = _SymmetricEigh.apply(matrix, tol)
    else:
        values, vectors = torch.linalg.eigh(matrix)
    return values.flip(-1), vectors.flip(-1)


def random_orthogonal(
    count: int, *, proper: bool, generator: torch.Generator | None, dtype=torch.float64, device=None
) -> torch.Tensor:
    """``count`` Haar-uniform matrices [count,3,3] on O(3), or on SO(3) when ``proper``.

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q is Haar on O(3)
    (Mezzadri 2007); flipping one column of the improper ones maps that measure onto SO(3).
    """
    gaussian = torch.randn(count, 3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    if proper:
        q[:, :, 0] = q[:, :, 0] * torch.linalg.det(q).unsqueeze(-1)
    return q.to(dtype=dtype, device=device)


def random_z_rotations(
    count: int, *, proper: bool, generator: torch.Generator | None, dtype=torch.float64, device=None
) -> torch.Tensor:
    """``count`` uniform rotations about z [count,3,3] (with a random in-plane reflection unless
    ``proper``): the 2D group of slab frames, which keeps z."""
    angle = 2 * math.pi * torch.rand(count, generator=generator, dtype=torch.float64)
    cos, sin = torch.cos(angle), torch.sin(angle)
    out = torch.zeros(count, 3, 3, dtype=torch.float64)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = cos, -sin, sin, cos
    out[:, 2, 2] = 1.0
    if not proper:
        flip = torch.randint(0, 2, (count,), generator=generator) * 2 - 1
        out[:, :, 1] = out[:, :, 1] * flip.to(out.dtype).unsqueeze(-1)
    return out.to(dtype=dtype, device=device)
