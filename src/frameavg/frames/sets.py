"""Frame sets of frame clouds, per degeneracy class (see ``frames.compute`` for the classes and
conventions): the spectrum and its classification (``classify``), sign frames of a distinct
spectrum, in-plane harmonic frames of a degenerate pair, shell frames of a triple-degenerate one.
``frames.compute`` expands them into canonical copies; ``frames.smooth`` weights them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from frameavg.frames.cloud import FrameCloud
from frameavg.frames.linalg import symmetric_eigh
from frameavg.frames.methods import FrameMethod

#: Degeneracy classes, indexed by ``Frames.degeneracy``.
DEGENERACY = ("none", "pair", "linear", "triple", "point")
NONE, PAIR, LINEAR, TRIPLE, POINT = range(5)

DEFAULT_TOL = 1e-3
DEFAULT_MAX_FRAMES = 192
MAX_HARMONIC = 12
MAX_SHELLS = 4
# Below this second moment (Å²) a cloud has no extent at all.
ZERO_EXTENT = 1e-20
# Floor of the tolerance in geometric decisions (collinear vectors, zero-length vectors), so that
# even tol=0 (degeneracy detection effectively off) never builds a frame from a null vector.
MIN_GEOMETRIC_TOL = 1e-9
# A linear cloud whose extent across its axis is at most LINEAR_NOISE × eps(dtype) of its size
# (relative length) is exactly linear: what is left across the axis is rounding noise.
LINEAR_NOISE = 1e3

_SIGNS3 = torch.tensor([[a, b, c] for a in (1, -1) for b in (1, -1) for c in (1, -1)], dtype=torch.float64)
_SIGNS2 = torch.tensor([[a, b] for a in (1, -1) for b in (1, -1)], dtype=torch.float64)


@dataclass
class FrameSetInfo:
    """What ``expand_frames`` records about each graph's frame set ([B] tensors; see ``Frames``)."""

    eigenvalues: torch.Tensor | None
    degeneracy: torch.Tensor
    harmonic_order: torch.Tensor
    truncated: torch.Tensor
    extent: torch.Tensor | None = None
    # [B] bool: the cloud determines no frame (``point``, or exactly ``linear``); any_unresolved: any()
    unresolved: torch.Tensor | None = None
    any_unresolved: bool = False
    cloud_level: torch.Tensor | None = None
    periodic: torch.Tensor | None = None
    lattice: torch.Tensor | None = None  # [B] bool: frames from the lattice (frames.lattice_frames)


@dataclass
class Spectrum:
    """The second moment of every graph's frame cloud and its classification (``classify``).

    v [M,dim] cloud vectors (xy only in 2D), w [M] weights, g [M] graphs; values [B,dim] eigenvalues
    (descending, differentiable), vectors [B,dim,dim] eigenvectors (columns); lam: ``values``
    detached; degeneracy [B]; exactly_linear [B] bool; info: the ``FrameSetInfo`` so far."""

    v: torch.Tensor
    w: torch.Tensor
    g: torch.Tensor
    values: torch.Tensor
    vectors: torch.Tensor
    lam: torch.Tensor
    degeneracy: torch.Tensor
    exactly_linear: torch.Tensor
    info: FrameSetInfo


def classify(cloud: FrameCloud, num_graphs: int, spec: FrameMethod, *, tol: float, noise: float = 0.0) -> Spectrum:
    """Eigen-decompose every graph's cloud moment and classify its spectrum (``DEGENERACY``)."""
    device = cloud.vectors.device
    dim = 3 if spec.dim == "3D" else 2
    v = cloud.vectors if dim == 3 else cloud.vectors[:, :2]
    w, g = cloud.weight, cloud.graph
    outer = ((w[:, None] * cloud.vectors)[:, :, None] * cloud.vectors[:, None, :]).reshape(-1, 9)
    moment = torch.zeros(num_graphs, 9, dtype=torch.float64, device=device).index_add(0, g, outer).reshape(num_graphs, 3, 3)
    extent = torch.diagonal(moment.detach(), dim1=1, dim2=2).sum(-1)  # Σ w|v|², in 2D mode too
    values, vectors = symmetric_eigh(moment[:, :dim, :dim], tol)
    lam = values.detach()

    close = (lam[:, :-1] - lam[:, 1:]) <= tol * lam[:, :1]
    if dim == 3:
        c12, c23 = close[:, 0], close[:, 1]
        thin = ~c12 & (lam[:, 1] + lam[:, 2] <= tol * lam[:, 0])
        degeneracy = torch.where(c12 & c23, TRIPLE, torch.where(c12 | c23, torch.where(thin, LINEAR, PAIR), NONE))
    else:
        degeneracy = torch.where(lam[:, 0] <= tol * extent, LINEAR, torch.where(close[:, 0], PAIR, NONE))
    degeneracy = torch.where(extent <= ZERO_EXTENT, POINT, degeneracy)
    linear, point = degeneracy == LINEAR, degeneracy == POINT
    any_linear, any_point = torch.stack([linear.any(), point.any()]).tolist()
    exactly_linear = linear & _within_noise_of_axis(v, w, g, vectors, num_graphs, extent, noise) if any_linear else linear
    unresolved = exactly_linear | point
    any_unresolved = any_point or (any_linear and bool(exactly_linear.any()))
    harmonic = torch.zeros(num_graphs, dtype=torch.long, device=device)
    truncated = torch.zeros(num_graphs, dtype=torch.bool, device=device)
    info = FrameSetInfo(lam, degeneracy, harmonic, truncated, extent, unresolved, any_unresolved)
    return Spectrum(v, w, g, values, vectors, lam, degeneracy, exactly_linear, info)


def frame_sets(
    cloud: FrameCloud, num_graphs: int, spec: FrameMethod, *, tol: float, max_frames: int, noise: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, FrameSetInfo]:
    """The frame set of every graph: rotations [K,3,3] float64 and their graph [K] (sorted).

    ``noise``: relative extent across the axis below which a ``linear`` cloud is exactly linear
    (see the module docstring)."""
    device = cloud.vectors.device
    spectrum = classify(cloud, num_graphs, spec, tol=tol, noise=noise)
    v, w, g, vectors, lam = spectrum.v, spectrum.w, spectrum.g, spectrum.vectors, spectrum.lam
    degeneracy, exactly_linear, info = spectrum.degeneracy, spectrum.exactly_linear, spectrum.info
    harmonic = info.harmonic_order
    planar = (degeneracy == PAIR) | (degeneracy == LINEAR)
    triple = degeneracy == TRIPLE
    any_planar, any_triple = torch.stack([planar.any(), triple.any()]).tolist()

    simple = (degeneracy == NONE) | (degeneracy == POINT)
    rotation, owner = sign_frames(v, w, g, vectors, degeneracy, simple, spec, tol, num_graphs)
    if not (any_planar or any_triple):
        return rotation, owner, info

    rotations, owners = [rotation], [owner]
    if any_planar:
        rot, own, order = plane_frames(cloud, vectors, lam, degeneracy, planar, exactly_linear, spec, tol)
        rotations.append(rot)
        owners.append(own)
        info.harmonic_order = harmonic.index_put((torch.nonzero(planar).flatten(),), order)
    if any_triple:
        for b in torch.nonzero(triple).flatten().tolist():
            rot = shell_frames(cloud.vectors[g == b], proper=spec.proper, tol=tol)
            rotations.append(rot)
            owners.append(torch.full((rot.shape[0],), b, dtype=torch.long, device=device))
    rotation, owner = torch.cat(rotations), torch.cat(owners)
    order = torch.argsort(owner, stable=True)
    rotation, owner = rotation.index_select(0, order), owner.index_select(0, order)
    size = torch.bincount(owner, minlength=num_graphs)
    if bool((size > max_frames).any()):
        info.truncated = size > max_frames
        rank = torch.arange(owner.shape[0], device=device) - (torch.cumsum(size, 0) - size)[owner]
        keep = rank < max_frames
        rotation, owner = rotation[keep], owner[keep]
    return rotation, owner, info


def _within_noise_of_axis(v, w, g, vectors, num_graphs, extent, noise):
    """[B] bool: the cloud's second moment across its axis is at most ``noise``² of its extent.

    3D: across the dominant eigenvector; 2D: the whole in-plane moment (the axis is z). Computed
    from the vectors themselves: eigenvalues resolve it only to eps·extent, not eps²·extent."""
    v = v.detach()
    if vectors.shape[-1] == 3:
        axis = vectors.detach()[:, :, 0].index_select(0, g)
        v = v - (v * axis).sum(-1, keepdim=True) * axis
    across = torch.zeros(num_graphs, dtype=v.dtype, device=v.device).index_add(0, g, w.detach() * (v * v).sum(-1))
    return across <= noise**2 * extent


def _third_moment_rule(v, w, g, axes, num_graphs, tol):
    """Per graph and axis: sign of Σ w (v·u)³ and whether it is decisive (|Σ| > tol·Σ w|v·u|³).

    Projections on the principal axes are rotation invariant, so the rule is too (unlike the sum
    of coordinates used by the original implementation)."""
    proj = torch.einsum("md,mdk->mk", v.detach(), axes.detach()[g])
    dim = axes.shape[-1]
    third = torch.zeros(num_graphs, dim, dtype=torch.float64, device=v.device).index_add(0, g, w[:, None] * proj**3)
    norm = torch.zeros_like(third).index_add(0, g, w[:, None] * proj.abs() ** 3)
    decisive = third.abs() > tol * norm
    strength = torch.where(norm > 0, third.abs() / norm.clamp(min=1e-300), torch.zeros_like(norm))
    return torch.sign(third), decisive, strength


def sign_frames(v, w, g, vectors, degeneracy, selected, spec, tol, num_graphs):
    """Sign-flip frames of graphs with a distinct spectrum (identity basis for ``point``)."""
    device = v.device
    dim = vectors.shape[-1]
    eye = torch.eye(dim, dtype=torch.float64, device=device).expand_as(vectors)
    axes = torch.where((degeneracy == POINT)[:, None, None], eye, vectors)
    signs = (_SIGNS3 if dim == 3 else _SIGNS2).to(device)
    mask = selected[:, None].expand(-1, signs.shape[0]).clone()
    if spec.proper:
        det = torch.linalg.det(axes.detach())
        mask &= (det[:, None] * signs.prod(-1)[None, :]) > 0
    if spec.kind == "det":
        rule, decisive, strength = _third_moment_rule(v, w, g, axes, num_graphs, tol)
        if spec.proper:
            # fix the dim−1 most decisive axes; the last sign follows from det = +1
            rank = torch.argsort(torch.argsort(-strength, dim=1), dim=1)
            decisive = decisive & (rank < dim - 1)
        agree = (signs[None, :, :] == rule[:, None, :]) | ~decisive[:, None, :]
        mask &= agree.all(-1)
    frames = axes[:, None, :, :] * signs[None, :, None, :]
    if dim == 2:
        full = torch.zeros(*frames.shape[:2], 3, 3, dtype=frames.dtype, device=device)
        full[..., :2, :2] = frames
        full[..., 2, 2] = 1.0
        frames = full
    owner = torch.arange(num_graphs, device=device)[:, None].expand_as(mask)
    return frames[mask], owner[mask]


def plane_frames(cloud, vectors, lam, degeneracy, planar, exactly_linear, spec, tol):
    """Frames of graphs with a degenerate pair (``pair``) or (almost) no extent inside it (``linear``).

    Per graph: a basis (b1, b2, axis) whose first two vectors span the degenerate plane (any
    orthonormal pair: the result does not depend on it), in-plane directions e1 from harmonic
    moments (exactly linear clouds: ±b1), then frames [e1, h·(s·axis × e1), s·axis] for the axis
    signs s (3D only) and handedness h (both unless proper), columns ordered like the eigenvalues.
    """
    device = vectors.device
    idx = torch.nonzero(planar).flatten()
    count = idx.shape[0]
    local = torch.full((planar.shape[0],), -1, dtype=torch.long, device=device)
    local[idx] = torch.arange(count, device=device)
    if spec.dim == "3D":
        # the distinct eigenvalue is the last one (λ1≈λ2) or the first one (λ2≈λ3)
        lam_p = lam.index_select(0, idx)
        axis_last = (lam_p[:, 0] - lam_p[:, 1]) <= tol * lam_p[:, 0]
        columns = torch.where(axis_last[:, None], torch.tensor([0, 1, 2], device=device), torch.tensor([1, 2, 0], device=device))
        basis = vectors.index_select(0, idx).gather(2, columns[:, None, :].expand(-1, 3, -1))
    else:
        axis_last = torch.ones(count, dtype=torch.bool, device=device)
        basis = torch.eye(3, dtype=torch.float64, device=device).expand(count, 3, 3)
    linear = exactly_linear.index_select(0, idx)

    member = local.index_select(0, cloud.graph)
    rows = torch.nonzero(member >= 0).flatten()
    owner = member.index_select(0, rows)
    v, w = cloud.vectors.index_select(0, rows), cloud.weight.index_select(0, rows)
    proj = (v[:, :, None] * basis.index_select(0, owner)).sum(1)  # (x, y, height) in the basis

    order, phase = harmonic_orientation(proj[:, 0], proj[:, 1], w, owner, count, ~linear, tol)
    order = torch.where(linear, 2, order)  # exactly linear: directions ±b1
    unresolved = (order == 0).tolist()

    b1, b2, axis = basis[:, :, 0], basis[:, :, 1], basis[:, :, 2]
    reps = torch.where(order == 0, 0, order)
    which = torch.repeat_interleave(torch.arange(count, device=device), reps)
    j = torch.arange(which.shape[0], device=device) - (torch.cumsum(reps, 0) - reps).index_select(0, which)
    angle = phase.index_select(0, which) + 2 * math.pi * j.to(torch.float64) / reps.index_select(0, which).to(torch.float64)
    e1 = torch.cos(angle)[:, None] * b1.index_select(0, which) + torch.sin(angle)[:, None] * b2.index_select(0, which)
    if any(unresolved):  # no harmonic up to MAX_HARMONIC: directions of the innermost in-plane shell
        e1, which = [e1], [which]
        for k in [k for k, u in enumerate(unresolved) if u]:
            sel = owner == k
            dirs = innermost_directions(proj[sel, 0], proj[sel, 1], tol)
            e1.append(dirs[:, :1] * b1[k] + dirs[:, 1:] * b2[k])
            which.append(torch.full((dirs.shape[0],), k, dtype=torch.long, device=device))
            order[k] = dirs.shape[0]
        e1, which = torch.cat(e1), torch.cat(which)

    # choices (axis sign s, handedness h); det mode fixes s by the third moment along the axis
    frames, choices = direction_frames(e1, axis.index_select(0, which), spec)  # columns e1, e2, axis
    keep = torch.ones(which.shape[0], choices.shape[0], dtype=torch.bool, device=device)
    if spec.kind == "det" and spec.dim == "3D":
        rule, decisive, _ = _third_moment_rule(v, w, owner, axis[:, :, None], count, tol)
        keep = ~decisive[which] | (choices[None, :, 0] == rule[which])
    frames = torch.where(axis_last.index_select(0, which)[:, None, None, None], frames, frames[..., [2, 0, 1]])
    frame_owner = idx.index_select(0, which)[:, None].expand_as(keep)
    return frames[keep], frame_owner[keep], order


def direction_frames(e1: torch.Tensor, axis: torch.Tensor, spec: FrameMethod) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [K,C,3,3] with columns [e1, h·(s·axis × e1), s·axis] from in-plane directions e1 [K,3]
    and axes [K,3], for the C choices [C,2] of axis sign s (3D only) and handedness h (both unless
    proper); returns the frames and the choices."""
    s_values = [1.0, -1.0] if spec.dim == "3D" else [1.0]
    h_values = [1.0] if spec.proper else [1.0, -1.0]
    choices = torch.tensor([[a, h] for a in s_values for h in h_values], dtype=torch.float64, device=e1.device)
    a = choices[None, :, 0, None] * axis[:, None, :]
    first = e1[:, None, :].expand_as(a)
    second = choices[None, :, 1, None] * torch.linalg.cross(a, first)
    return torch.stack([first, second, a], dim=-1), choices


def harmonic_orientation(x, y, w, owner, count, active, tol):
    """Smallest harmonic order p with |m_p| > tol·Σ w r^p, and arg(m_p)/p (0 where none)."""
    z = torch.complex(x, y)
    powers = torch.cumprod(z[:, None].expand(-1, MAX_HARMONIC), dim=1)  # z, z², ..., exact gradients at 0
    radii = torch.cumprod(z.detach().abs()[:, None].expand(-1, MAX_HARMONIC), dim=1)
    moments = torch.zeros(count, MAX_HARMONIC, dtype=powers.dtype, device=x.device).index_add(0, owner, w[:, None] * powers)
    norm = torch.zeros(count, MAX_HARMONIC, dtype=radii.dtype, device=x.device).index_add(0, owner, w.detach()[:, None] * radii)
    ok = (moments.detach().abs() > tol * norm) & (norm > 0) & active[:, None]
    found = ok.any(dim=1)
    first = torch.argmax(ok.to(torch.int8), dim=1)
    order = torch.where(found, first + 1, torch.zeros_like(first))
    pick = moments.gather(1, first[:, None]).squeeze(1)
    pick = torch.where(found, pick, torch.ones_like(pick))  # no angle (nor its gradient) of 0
    phase = torch.where(found, torch.angle(pick) / (first + 1).to(torch.float64), torch.zeros_like(pick.real))
    return order, phase


def innermost_directions(x, y, tol):
    """Unit in-plane directions [k,2] of the innermost non-zero shell of in-plane radii."""
    radius = torch.sqrt(x**2 + y**2)
    nonzero = radius.detach() > max(tol, MIN_GEOMETRIC_TOL) * radius.detach().max()
    r = radius[nonzero]
    inner = r.detach() <= r.detach().min() * (1 + tol)
    return torch.stack([x[nonzero][inner], y[nonzero][inner]], -1) / r[inner][:, None]


def shell_frames(vectors: torch.Tensor, *, proper: bool, tol: float, max_shells: int = MAX_SHELLS) -> torch.Tensor:
    """Frames [K,3,3] of a cloud without a preferred direction (triple-degenerate spectrum).

    Shells are groups of cloud vectors with equal length (within tol). Among the ``max_shells``
    innermost shells that contain two non-collinear vectors, the one giving the fewest frames is
    used; every ordered pair (a, b) of its vectors at the smallest angle (within tol) gives the
    frame [â, b⊥, â×b⊥] (columns), plus the mirror image [â, b⊥, −â×b⊥] unless ``proper``.
    If no single shell qualifies, a is taken from the innermost shell and b from the nearest
    shell holding a vector non-collinear with it.
    """
    norms = torch.linalg.vector_norm(vectors, dim=-1)
    nonzero = norms.detach() > max(tol, MIN_GEOMETRIC_TOL) * norms.detach().max()
    vectors, norms = vectors[nonzero], norms[nonzero]
    order = torch.argsort(norms.detach())
    vectors, norms = vectors[order], norms[order]
    radii = norms.detach()
    new_shell = torch.ones_like(radii, dtype=torch.bool)
    new_shell[1:] = radii[1:] > radii[:-1] * (1 + tol)
    shell_id = torch.cumsum(new_shell.long(), 0) - 1

    def shell_vectors(shell: int) -> torch.Tensor:
        """The shell's distinct vectors [k,3]. Equal vectors (e.g. the same neighbour direction
        seen from several equivalent reference atoms of a crystal) would only repeat frames; each
        group of them (equal within tol) is replaced by its mean, so that the frames, and their
        gradients, do not depend on which atoms the kept copy came from."""
        members = vectors[shell_id == shell]
        gap = torch.cdist(members.detach(), members.detach())
        twin = gap <= tol * float(radii[shell_id == shell].max())
        merged = (twin.to(members.dtype) @ members) / twin.sum(1, keepdim=True).to(members.dtype)
        first = ~(twin & torch.ones_like(twin).tril(diagonal=-1)).any(dim=1)
        return merged[first]

    def unit(v: torch.Tensor) -> torch.Tensor:
        return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)

    num_shells = int(shell_id.max()) + 1
    best = None
    for s in range(min(max_shells, num_shells)):
        members = shell_vectors(s)
        pairs = _closest_pairs(unit(members).detach(), unit(members).detach(), tol)
        if pairs is None:
            continue
        count = pairs[0].shape[0] * (1 if proper else 2)
        if best is None or count < best[0]:
            best = (count, members[pairs[0]], members[pairs[1]])
    if best is None:
        first = shell_vectors(0)
        for s in range(1, num_shells):
            members = shell_vectors(s)
            pairs = _closest_pairs(unit(first).detach(), unit(members).detach(), tol)
            if pairs is not None:
                best = (None, first[pairs[0]], members[pairs[1]])
                break
    if best is None:  # only reachable for collinear clouds, which are never triple-degenerate
        eye = torch.eye(3, dtype=vectors.dtype, device=vectors.device)
        return eye[None] if proper else torch.stack([eye, eye * eye.new_tensor([1.0, 1.0, -1.0])])
    _, a, b = best
    e1 = unit(a)
    b_perp = b - (b * e1).sum(-1, keepdim=True) * e1
    e2 = b_perp / torch.linalg.vector_norm(b_perp, dim=-1, keepdim=True)
    e3 = torch.linalg.cross(e1, e2)
    frames = torch.stack([e1, e2, e3], dim=-1)
    if not proper:
        frames = torch.cat([frames, torch.stack([e1, e2, -e3], dim=-1)])
    return frames


def _closest_pairs(unit_a: torch.Tensor, unit_b: torch.Tensor, tol: float):
    """Index pairs (i, j) of non-collinear a_i, b_j at the smallest angle (within tol), or None."""
    cos = unit_a @ unit_b.T
    noncollinear = cos.abs() < 1 - max(tol, MIN_GEOMETRIC_TOL)
    if not bool(noncollinear.any()):
        return None
    best = cos[noncollinear].max()
    ia, ib = torch.nonzero(noncollinear & (cos >= best - tol), as_tuple=True)
    return ia, ib
