"""Small lattice geometry on the periodic axes of a cell (numpy, float64).

A structure's lattice is spanned by the rows of ``cell`` along the axes where ``pbc`` is True; the
other rows play no role. These helpers give basis-independent facts about it: an LLL-reduced
basis, its shortest vectors (all vectors up to the largest successive minimum), and its measure
(length, area or volume per lattice point), which estimates how many periodic neighbours a
cutoff sphere holds.
"""

from __future__ import annotations

import math

import numpy as np


def periodic_basis(cell, pbc) -> np.ndarray:
    """[d,3] the lattice vectors (rows of ``cell``) of the d periodic axes."""
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    return cell[np.asarray(pbc, dtype=bool).reshape(3)]


def lll_reduce(basis: np.ndarray, delta: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """LLL-reduced basis [d,3] of the lattice spanned by the rows of ``basis`` and the unimodular
    integer matrix T [d,d] with ``reduced = T @ basis``."""
    b = np.array(basis, dtype=np.float64)
    d = b.shape[0]
    t = np.eye(d, dtype=np.int64)

    def gram_schmidt(rows):
        ortho = np.zeros_like(rows)
        mu = np.zeros((d, d))
        for i in range(d):
            ortho[i] = rows[i]
            for j in range(i):
                mu[i, j] = rows[i] @ ortho[j] / (ortho[j] @ ortho[j])
                ortho[i] = ortho[i] - mu[i, j] * ortho[j]
        return ortho, mu

    k = 1
    ortho, mu = gram_schmidt(b)
    for _ in range(10_000):
        if k >= d:
            break
        for j in range(k - 1, -1, -1):
            q = round(mu[k, j])
            if q:
                b[k] -= q * b[j]
                t[k] -= q * t[j]
                ortho, mu = gram_schmidt(b)
        if ortho[k] @ ortho[k] >= (delta - mu[k, k - 1] ** 2) * (ortho[k - 1] @ ortho[k - 1]):
            k += 1
        else:
            b[[k, k - 1]] = b[[k - 1, k]]
            t[[k, k - 1]] = t[[k - 1, k]]
            ortho, mu = gram_schmidt(b)
            k = max(k - 1, 1)
    return b, t


def shortest_vectors(basis: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Integer coefficients [K,d] (in the rows of ``basis``) of every lattice vector whose length is
    at most the largest successive minimum λ_d times ``1 + tol``: a set that belongs to the lattice,
    not to its basis, and spans it. Empty for d = 0."""
    basis = np.asarray(basis, dtype=np.float64)
    d = basis.shape[0]
    if d == 0:
        return np.zeros((0, 0), dtype=np.int64)
    reduced, transform = lll_reduce(basis)
    reach = float(np.linalg.norm(reduced, axis=1).max()) * (1 + tol)  # λ_d <= the longest reduced vector
    dual = np.linalg.pinv(reduced)  # [3,d]: coefficient i of v in the reduced basis is v @ dual[:, i]
    bounds = np.floor(reach * np.linalg.norm(dual, axis=0) + 1e-9).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-b, b + 1) for b in bounds], indexing="ij"), -1).reshape(-1, d)
    lengths = np.linalg.norm(grid @ reduced, axis=1)
    order = np.argsort(lengths, kind="stable")
    grid, lengths = grid[order], lengths[order]
    scale = float(lengths.max())
    picked, minimum = [], 0.0
    for coefficients, length in zip(grid, lengths):  # successive minima: each raises the rank
        if length <= 1e-9 * scale:
            continue
        candidate = np.array(picked + [coefficients @ reduced])
        if np.linalg.matrix_rank(candidate, tol=1e-9 * scale) > len(picked):
            picked.append(coefficients @ reduced)
            minimum = length
            if len(picked) == d:
                break
    keep = (lengths > 1e-9 * scale) & (lengths <= minimum * (1 + tol))
    return grid[keep] @ transform


def shortest_length(basis: np.ndarray, at_least: float = 0.0) -> float:
    """Length of the shortest non-zero lattice vector, Å (inf without periodic axes).

    With ``at_least``: any value >= ``at_least`` may be returned once the shortest length is known
    to reach it (a cheap bound: it is never below the smallest Gram–Schmidt length of the basis)."""
    basis = np.asarray(basis, dtype=np.float64)
    if basis.shape[0] == 0:
        return math.inf
    bound = float(np.abs(np.diagonal(np.linalg.qr(basis.T, mode="r"))).min())
    if at_least and bound >= at_least:
        return bound
    coefficients = shortest_vectors(basis)
    return float(np.linalg.norm(coefficients @ basis, axis=1).min())


def spacings(basis: np.ndarray) -> np.ndarray:
    """[d] distances between the lattice planes spanned by all basis vectors but one, Å: a
    difference vector shorter than half the smallest spacing has fractional coordinates inside
    (-1/2, 1/2), so rounding them finds its nearest image."""
    basis = np.asarray(basis, dtype=np.float64)
    if basis.shape[0] == 0:
        return np.zeros(0)
    return 1.0 / np.linalg.norm(np.linalg.pinv(basis), axis=0)


def measure(basis: np.ndarray) -> float:
    """Length (d=1), area (d=2) or volume (d=3) of the lattice's unit cell: sqrt(det(B Bᵀ))."""
    basis = np.asarray(basis, dtype=np.float64)
    if basis.shape[0] == 0:
        return math.inf
    return float(math.sqrt(max(np.linalg.det(basis @ basis.T), 0.0)))


def expected_neighbors(num_atoms: int, basis: np.ndarray, cutoff: float) -> float:
    """Neighbours per atom a cutoff sphere is expected to hold when the ``num_atoms`` of a cell
    repeat along its d periodic axes: num_atoms / measure × the volume of a d-ball of radius
    ``cutoff`` (an upper estimate for slabs and wires, whose atoms spread along the other axes),
    and at least ``num_atoms - 1``."""
    basis = np.asarray(basis, dtype=np.float64)
    d = basis.shape[0]
    ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1) * cutoff**d
    periodic = num_atoms / max(measure(basis), 1e-300) * ball if d else 0.0
    return max(periodic, num_atoms - 1.0)
