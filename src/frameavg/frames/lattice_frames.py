"""Frames of periodic graphs built from their lattice (``periodic="lattice"`` / ``"lattice-symmetric"``).

At fixed cell, the lattice does not move when atoms move: a frame built from it is constant along
MD and relaxations, whatever the atoms do, so the frame average is exactly as smooth as the model.

* ``lattice`` (one frame): the cell's periodic rows are reduced by an integer unimodular transform
  T that is a function of the Gram matrix G = B Bᵀ alone (``reduction_transform``), and the frame
  is the Gram–Schmidt basis of the reduced rows. A rotation or reflection Q maps B to B Qᵀ and
  leaves G, hence T, unchanged, so U(B Qᵀ) = Q U(B): canonical positions (x − t) U and the
  canonical cell B U are exactly invariant. Translations, permutations and periodic images do not
  change the cell at all. Every decision of the reduction (size reduction, order by length, signs)
  has a margin ``tol`` so that rounding of G (e.g. after a rotation) never changes T.
  Not invariant: how a high-symmetry cell is *written* (rows of a cubic cell permuted or negated
  have the same Gram matrix but give another reduced basis). One frame per graph; in 3D mode, a
  graph with two periodic axes gets the two frames ±(e1×e2) (one with ``se3-`` methods).
* ``lattice-symmetric``: the frame set of the cloud of the lattice's shortest vectors
  (``frames.cloud.lattice_shell``), which belongs to the lattice and not to its basis: exact
  invariance to the choice of cell too, at the price of the lattice's symmetry in frames (48 for a
  cubic lattice, 12 for a hexagonal 2D lattice, 8 (3D) / 4 (2D) for a generic one).

2D mode (slabs): the in-plane lattice is spanned by the two periodic rows that lie mostly in the
plane (|xy| ≥ ½|row|), projected on it; the third axis is z. Graphs whose lattice does not give a
frame (fewer periodic axes, or a degenerate cell) use the frame cloud instead; ``usable`` says which.
"""

from __future__ import annotations

import numpy as np
import torch

from frameavg.frames.cloud import periodic_graphs
from frameavg.frames.methods import PERIODIC_FRAMES
# Rows whose in-plane length is below this fraction of their length are out of plane (2D mode).
IN_PLANE = 0.5
MAX_REDUCTION_STEPS = 1000


def reduction_transform(gram: np.ndarray, tol: float) -> np.ndarray:
    """Unimodular integer T [d,d] such that the rows of ``T @ B`` are a reduced basis of the lattice
    spanned by the rows of B, computed from G = B Bᵀ [d,d] alone.

    Size reduction against the other rows and (d = 3) their sums and differences (b_i ← b_i − q v,
    q = round(b_i·v / |v|²), applied only when |b_i·v| > (½ + tol)|v|²), then a stable order by length (rows swap only when one is shorter
    by more than the relative margin ``tol``), then signs: b_2 and b_3 are turned to make an obtuse
    angle with b_1 impossible (b_k·b_1 < −tol·|b_k||b_1| flips b_k; for b_3 at a right angle to
    b_1 within tol, b_2 decides). Every decision has a margin, so T does not change when G changes
    by rounding only."""
    g0 = np.asarray(gram, dtype=np.float64)
    d = g0.shape[0]
    t = np.eye(d, dtype=np.int64)
    for _ in range(MAX_REDUCTION_STEPS):
        g = t @ g0 @ t.T
        move = _reducing_move(t, g, tol)
        if move is None:
            break
        i, combination, q = move
        t[i] -= q * combination
    for _ in range(d * d):  # bubble sort by length, with a margin
        g = t @ g0 @ t.T
        swap = next((k for k in range(d - 1) if g[k + 1, k + 1] < g[k, k] * (1 - tol)), None)
        if swap is None:
            break
        t[[swap, swap + 1]] = t[[swap + 1, swap]]
    g = t @ g0 @ t.T
    norms = np.sqrt(np.diagonal(g))
    for k in range(1, d):
        cosine = g[0, k] / (norms[0] * norms[k])
        if k == 2 and abs(cosine) <= tol:
            cosine = g[1, k] / (norms[1] * norms[k])
        if cosine < -tol:
            t[k] = -t[k]
    return t


def _reducing_move(t: np.ndarray, g: np.ndarray, tol: float):
    """The first (row i, integer combination c of the rows, q) with |b_i·v| > (½ + tol)|v|² for
    v = c·B a basis vector b_j or (d = 3) a sum b_j ± b_k of the two others, i.e. b_i − q v is
    shorter; None when the basis is reduced (Minkowski's conditions in d <= 3, with a margin)."""
    d = g.shape[0]
    eye = np.eye(d, dtype=np.int64)
    for i in range(d):
        others = [j for j in range(d) if j != i]
        combos = [eye[j] for j in others]
        if d == 3:
            combos += [eye[others[0]] + eye[others[1]], eye[others[0]] - eye[others[1]]]
        for c in combos:
            along = float(g[i] @ c)
            length = float(c @ g @ c)
            if abs(along) > (0.5 + tol) * length:
                return i, c @ t, int(round(along / length))
    return None


def lattice_bases(cell: torch.Tensor, pbc: torch.Tensor | None, num_graphs: int, dim: str, tol: float):
    """Per graph, the reduced lattice rows a frame is built from.

    The periodic rows are reduced first (``reduction_transform``); in 2D mode the rows kept are the
    reduced rows that lie mostly in the plane (|xy| >= ½|row|), projected on it, so that a slab's
    in-plane lattice is found whatever cell describes it. Returns ``rows`` [B,3,3] (float64, the
    used rows first, zero rows after; differentiable in ``cell``), ``rank`` [B] (3 or 2) and
    ``usable`` [B] bool (graphs whose lattice gives a frame)."""
    cell64 = cell.to(torch.float64).reshape(num_graphs, 3, 3)
    periodic = periodic_graphs(cell, pbc, num_graphs, cell.device)
    flags = pbc.reshape(num_graphs, 3).bool() & periodic[:, None]
    rows = torch.zeros_like(cell64)
    rank = torch.zeros(num_graphs, dtype=torch.long, device=cell.device)
    for b in torch.nonzero(flags.sum(dim=1) >= 2).flatten().tolist():
        basis = cell64[b][flags[b]]
        gram = (basis.detach() @ basis.detach().T).cpu().numpy()
        scale = float(np.trace(gram)) / gram.shape[0]
        if scale <= 0 or np.linalg.det(gram / scale) <= tol:  # (near) singular: no lattice of that rank
            continue
        reduced = torch.as_tensor(reduction_transform(gram, tol), dtype=basis.dtype, device=basis.device) @ basis
        if dim == "2D":
            norms = torch.linalg.vector_norm(reduced.detach(), dim=-1)
            in_plane = torch.linalg.vector_norm(reduced.detach()[:, :2], dim=-1) >= IN_PLANE * norms
            reduced = reduced[in_plane] * reduced.new_tensor([1.0, 1.0, 0.0])
            if reduced.shape[0] != 2:
                continue
            flat = (reduced.detach() @ reduced.detach().T).cpu().numpy()
            if np.linalg.det(flat / (np.trace(flat) / 2)) <= tol:
                continue
            # the projected in-plane rows, reduced as a 2D lattice of their own
            reduced = torch.as_tensor(reduction_transform(flat, tol), dtype=reduced.dtype, device=reduced.device) @ reduced
        rows[b, : reduced.shape[0]] = reduced
        rank[b] = reduced.shape[0]
    return rows, rank, rank >= 2


def lattice_basis_frames(rows: torch.Tensor, rank: torch.Tensor, usable: torch.Tensor, *, dim: str,
                         proper: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``lattice`` frames [K,3,3] (columns e1, e2, e3) and their graph [K] for the ``usable`` graphs,
    from the reduced rows of ``lattice_bases`` (see the module docstring); differentiable in ``rows``."""
    frames, owners = [], []
    for b in torch.nonzero(usable).flatten().tolist():
        d = int(rank[b])
        reduced = rows[b, :d]
        e1 = reduced[0] / torch.linalg.vector_norm(reduced[0])
        u2 = reduced[1] - (reduced[1] @ e1) * e1
        e2 = u2 / torch.linalg.vector_norm(u2)
        if dim == "2D":
            z = e1.new_tensor([0.0, 0.0, 1.0])
            if proper:
                e2 = torch.linalg.cross(z, e1)
            options = [torch.stack([e1, e2, z], dim=-1)]
        elif d == 3 and not proper:
            u3 = reduced[2] - (reduced[2] @ e1) * e1 - (reduced[2] @ e2) * e2
            options = [torch.stack([e1, e2, u3 / torch.linalg.vector_norm(u3)], dim=-1)]
        else:
            e3 = torch.linalg.cross(e1, e2)
            options = [torch.stack([e1, e2, e3], dim=-1)]
            if d == 2 and not proper:  # the normal's sign is not given by a 2D lattice
                options.append(torch.stack([e1, e2, -e3], dim=-1))
        frames.extend(options)
        owners.extend([b] * len(options))
    device = rows.device
    if not frames:
        return torch.zeros(0, 3, 3, dtype=torch.float64, device=device), torch.zeros(0, dtype=torch.long, device=device)
    return torch.stack(frames), torch.tensor(owners, dtype=torch.long, device=device)


def lattice_shell_cloud(rows: torch.Tensor, rank: torch.Tensor, usable: torch.Tensor):
    """``lattice-symmetric``: the shortest vectors of every usable graph's lattice, as cloud
    vectors [M,3] with their graph [M] (``frames.cloud.lattice_shell`` of the used rows)."""
    from frameavg.frames.cloud import lattice_shell

    vectors, graphs = [], []
    for b in torch.nonzero(usable).flatten().tolist():
        d = int(rank[b])
        mask = torch.zeros(3, dtype=torch.bool)
        mask[:d] = True
        shell = lattice_shell(rows[b], mask)
        vectors.append(shell)
        graphs.append(torch.full((shell.shape[0],), b, dtype=torch.long, device=rows.device))
    return torch.cat(vectors), torch.cat(graphs)
