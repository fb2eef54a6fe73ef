"""Weighted frames whose average is a continuous function of the positions (``continuous=True``).

No canonicalisation of point clouds is continuous (Dym, Lawrence & Siegel, ICML 2024): the PCA
frame set of ``frames.compute`` switches whenever an eigenvalue gap or a harmonic moment crosses
its tolerance, and a model that is not exactly invariant then jumps. Following their *weighted
frames*, every frame here carries a weight that goes continuously to zero before the frame leaves
the set or stops being well defined; the weighted average of any continuous model is then
continuous, and it stays exactly invariant because every weight is a function of invariants.

Construction, per graph, with S(x) = smootherstep((x − tol)/width) (0 below tol, 1 above
tol + width, C² in between):

* 3D, eigenvalues λ1 >= λ2 >= λ3 of the cloud moment, gaps g12 = (λ1−λ2)/λ1, g23 = (λ2−λ3)/λ1,
  a = S(g23), b = S(g12). Two *plane options*: A = (axis u3, plane u1u2), weight a(1 − b/2), needs
  only λ3 to be separate; B = (axis u1, plane u2u3), weight b(1 − a/2), needs only λ1 to be
  separate. The rest, (1 − a)(1 − b) (a nearly triple-degenerate spectrum), goes to the shell
  frames of ``compute.shell_frames``.
* 2D (slabs): one option, plane xy and axis z, weight 1.
* Inside an option's plane (any orthonormal basis b1, b2 of it): complex moments
  m_p = Σ w (x + iy)^p and r_p = |m_p| / Σ w |x + iy|^p, p = 1..12. Order p gets the weight
  c_p = S(r_p) · Π_{q<p} (1 − S(r_q)) (a soft "smallest decisive order") and gives the p in-plane
  directions e1 = arg(m_p)/p + 2πj/p, hence the frames [e1, h·(s·a × e1), s·a] of
  ``compute.plane_frames`` (axis signs s, handedness h unless proper), each with
  weight option × c_p / (p · #choices). What no order takes, Π (1 − S(r_q)), goes to the
  directions of the innermost in-plane shell. For a distinct spectrum, p = 2 in either plane gives
  the 8 sign frames [±u1, ±u2, ±u3] of plain PCA; equal frames of the two options are merged.

Still discontinuous (documented, measured in docs/frames.md): the nearly triple-degenerate
remainder (shell frames), exactly linear clouds, the innermost-shell remainder, the widening of a
periodic cloud to another level, and truncation at ``max_frames``. Periodic graphs avoid all of
these with lattice frames (``frames.lattice_frames``).
"""

from __future__ import annotations

import math

import torch

from frameavg.frames.cloud import FrameCloud
from frameavg.frames.methods import FrameMethod
from frameavg.frames.sets import (
    MAX_HARMONIC,
    POINT,
    classify,
    direction_frames,
    innermost_directions,
    plane_frames,
    shell_frames,
    sign_frames,
)

#: Width of the blending zones above ``tol`` (relative gap or relative harmonic moment).
DEFAULT_BLEND_WIDTH = 0.05
MERGE_ATOL = 1e-9


def smootherstep(x: torch.Tensor) -> torch.Tensor:
    """0 for x <= 0, 1 for x >= 1, 6x⁵ − 15x⁴ + 10x³ between (C², flat at both ends)."""
    x = x.clamp(0.0, 1.0)
    return x * x * x * (x * (6.0 * x - 15.0) + 10.0)


def smooth_frame_sets(cloud: FrameCloud, num_graphs: int, spec: FrameMethod, *, tol: float, width: float,
                      max_frames: int, noise: float = 0.0):
    """Weighted frame sets: rotations [K,3,3], graph [K] (sorted), weight [K] (float64, sums to 1
    per graph, differentiable) and the ``FrameSetInfo`` (see the module docstring)."""
    spectrum = classify(cloud, num_graphs, spec, tol=tol, noise=noise)
    device, info = cloud.vectors.device, spectrum.info
    hard = spectrum.exactly_linear | (spectrum.degeneracy == POINT)
    parts = []
    if bool(hard.any()):  # no continuous choice exists: the frames of frames.compute, equal weights
        rot, own = sign_frames(spectrum.v, spectrum.w, spectrum.g, spectrum.vectors, spectrum.degeneracy,
                                spectrum.degeneracy == POINT, spec, tol, num_graphs)
        parts.append(_uniform(rot, own))
        if bool(spectrum.exactly_linear.any()):
            rot, own, _ = plane_frames(cloud, spectrum.vectors, spectrum.lam, spectrum.degeneracy,
                                        spectrum.exactly_linear, spectrum.exactly_linear, spec, tol)
            parts.append(_uniform(rot, own))
    soft = ~hard
    values = spectrum.values
    if spec.dim == "3D":
        top = values[:, 0].clamp(min=torch.finfo(values.dtype).tiny)
        a = smootherstep(((values[:, 1] - values[:, 2]) / top - tol) / width)
        b = smootherstep(((values[:, 0] - values[:, 1]) / top - tol) / width)
        u = spectrum.vectors
        options = [(u, a * (1 - b / 2), True), (u[:, :, [1, 2, 0]], b * (1 - a / 2), False)]
        remainder = (1 - a) * (1 - b)
    else:
        eye = torch.eye(3, dtype=torch.float64, device=device).expand(num_graphs, 3, 3)
        options = [(eye, torch.ones(num_graphs, dtype=torch.float64, device=device), True)]
        remainder = torch.zeros(num_graphs, dtype=torch.float64, device=device)
    for basis, weight, axis_last in options:
        chosen = soft & (weight.detach() > 0)
        if bool(chosen.any()):
            parts.append(_weightedplane_frames(cloud, chosen, basis, weight, axis_last, spec, tol, width, info))
    for graph in torch.nonzero(soft & (remainder.detach() > 0)).flatten().tolist():
        rot = shell_frames(cloud.vectors[cloud.graph == graph], proper=spec.proper, tol=tol)
        own = torch.full((rot.shape[0],), graph, dtype=torch.long, device=device)
        parts.append((rot, own, remainder[graph].expand(rot.shape[0]) / rot.shape[0]))
    rotation, owner, weight = (torch.cat(items) for items in zip(*parts))
    rotation, owner, weight = merge_equal_frames(rotation, owner, weight)
    return (*_truncate(rotation, owner, weight, num_graphs, max_frames, info), info)


def _uniform(rotation: torch.Tensor, owner: torch.Tensor):
    counts = torch.bincount(owner)
    return rotation, owner, (1.0 / counts.to(torch.float64)).index_select(0, owner)


def _weightedplane_frames(cloud, chosen, basis, option_weight, axis_last, spec, tol, width, info):
    """Frames and weights of one plane option for the ``chosen`` graphs [B] bool: ``basis``
    [B,3,3] holds (b1, b2, axis) as columns; frame columns are [e1, e2, axis] (``axis_last``) or
    [axis, e1, e2]."""
    device = cloud.vectors.device
    idx = torch.nonzero(chosen).flatten()
    local = torch.full((chosen.shape[0],), -1, dtype=torch.long, device=device)
    local[idx] = torch.arange(idx.shape[0], device=device)
    member = local.index_select(0, cloud.graph)
    rows = torch.nonzero(member >= 0).flatten()
    owner = member.index_select(0, rows)
    plane = basis.index_select(0, idx)
    proj = (cloud.vectors.index_select(0, rows)[:, :, None] * plane.index_select(0, owner)).sum(1)
    w = cloud.weight.index_select(0, rows)
    z = torch.complex(proj[:, 0], proj[:, 1])
    powers = torch.cumprod(z[:, None].expand(-1, MAX_HARMONIC), dim=1)
    radii = torch.cumprod(torch.sqrt(proj[:, 0] ** 2 + proj[:, 1] ** 2 + 1e-300)[:, None].expand(-1, MAX_HARMONIC), dim=1)
    count = idx.shape[0]
    moments = torch.zeros(count, MAX_HARMONIC, dtype=powers.dtype, device=device).index_add(0, owner, w[:, None] * powers)
    norms = torch.zeros(count, MAX_HARMONIC, dtype=radii.dtype, device=device).index_add(0, owner, w[:, None] * radii)
    ratio = torch.sqrt(moments.real**2 + moments.imag**2 + 1e-300) / norms.clamp(min=1e-300)
    decisive = smootherstep((ratio - tol) / width)
    undecided = torch.cumprod(1 - decisive, dim=1)
    order_weight = decisive * torch.cat([torch.ones_like(undecided[:, :1]), undecided[:, :-1]], dim=1)
    info.harmonic_order[idx] = torch.argmax(order_weight.detach(), dim=1) + 1

    k, p_index = torch.nonzero(order_weight.detach() > 0, as_tuple=True)
    p = p_index + 1
    phase = torch.angle(moments[k, p_index]) / p.to(torch.float64)
    which = torch.repeat_interleave(torch.arange(k.shape[0], device=device), p)
    j = torch.arange(which.shape[0], device=device) - (torch.cumsum(p, 0) - p).index_select(0, which)
    angle = phase.index_select(0, which) + 2 * math.pi * j.to(torch.float64) / p.index_select(0, which).to(torch.float64)
    graph_of = k.index_select(0, which)
    direction_weight = (order_weight[k, p_index] / p.to(torch.float64)).index_select(0, which)
    b1, b2 = plane[:, :, 0].index_select(0, graph_of), plane[:, :, 1].index_select(0, graph_of)
    e1 = torch.cos(angle)[:, None] * b1 + torch.sin(angle)[:, None] * b2
    e1s, graphs, weights = [e1], [graph_of], [direction_weight]
    rest = undecided[:, -1]
    for g in torch.nonzero(rest.detach() > 0).flatten().tolist():  # no decisive order: innermost shell
        sel = owner == g
        dirs = innermost_directions(proj[sel, 0], proj[sel, 1], tol)
        e1s.append(dirs[:, :1] * plane[g, :, 0] + dirs[:, 1:] * plane[g, :, 1])
        graphs.append(torch.full((dirs.shape[0],), g, dtype=torch.long, device=device))
        weights.append(rest[g].expand(dirs.shape[0]) / dirs.shape[0])
    e1, graph_of, direction_weight = torch.cat(e1s), torch.cat(graphs), torch.cat(weights)
    return _frames_from_directions(e1, plane[:, :, 2].index_select(0, graph_of), idx.index_select(0, graph_of),
                                   direction_weight * option_weight.index_select(0, idx.index_select(0, graph_of)),
                                   axis_last, spec)


def _frames_from_directions(e1, axis, owner, weight, axis_last, spec):
    """``sets.direction_frames`` of every direction, each with ``weight`` / #choices, flattened;
    columns reordered to [axis, e1, e2] unless ``axis_last``."""
    frames, choices = direction_frames(e1, axis, spec)
    if not axis_last:
        frames = frames[..., [2, 0, 1]]
    count = choices.shape[0]
    return (frames.reshape(-1, 3, 3), owner.repeat_interleave(count),
            (weight / count).repeat_interleave(count))


def merge_equal_frames(rotation: torch.Tensor, owner: torch.Tensor, weight: torch.Tensor):
    """Sort by graph and merge the frames of a graph that are equal (max |ΔU| <= MERGE_ATOL) into
    the first of them, adding their weights: the same frame reached by two options runs once."""
    order = torch.argsort(owner, stable=True)
    rotation, owner, weight = rotation.index_select(0, order), owner.index_select(0, order), weight.index_select(0, order)
    size = torch.bincount(owner)
    start = torch.cumsum(size, 0) - size
    reps = size.index_select(0, owner)
    first = torch.repeat_interleave(torch.arange(owner.shape[0], device=owner.device), reps)
    offset = torch.arange(first.shape[0], device=owner.device) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
    second = start.index_select(0, owner.index_select(0, first)) + offset
    earlier = second < first
    first, second = first[earlier], second[earlier]
    equal = (rotation.detach()[first] - rotation.detach()[second]).abs().amax(dim=(1, 2)) <= MERGE_ATOL
    first, second = first[equal], second[equal]
    root = torch.arange(owner.shape[0], device=owner.device).scatter_reduce(0, first, second, reduce="amin")
    keep = root == torch.arange(owner.shape[0], device=owner.device)
    merged = torch.zeros_like(weight).index_add(0, root, weight)
    return rotation[keep], owner[keep], merged[keep]


def _truncate(rotation, owner, weight, num_graphs, max_frames, info):
    """At most ``max_frames`` frames per graph: the heaviest, weights renormalised (``truncated``)."""
    size = torch.bincount(owner, minlength=num_graphs)
    if not bool((size > max_frames).any()):
        return rotation, owner, weight
    info.truncated = size > max_frames
    order = torch.argsort(owner.to(torch.float64) * 4.0 - weight.detach(), stable=True)  # by graph, then heaviest
    rotation, owner, weight = rotation[order], owner[order], weight[order]
    rank = torch.arange(owner.shape[0], device=owner.device) - (torch.cumsum(size, 0) - size).index_select(0, owner)
    keep = rank < max_frames
    rotation, owner, weight = rotation[keep], owner[keep], weight[keep]
    total = torch.zeros(num_graphs, dtype=weight.dtype, device=weight.device).index_add(0, owner, weight)
    return rotation, owner, weight / total.index_select(0, owner)
