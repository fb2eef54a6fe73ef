"""Frame sets: sizes, orthogonality, invariance of canonical positions, degeneracy classes, periodic
image invariance, batching, randomness, and bad input — on real structures."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.errors import ConfigError, DataError
from frameavg.evaluation.symmetry import random_rotation, transform_structure
from frameavg.frames import FrameMethod, compute_frames, frames_for_batch
from frameavg.frames.linalg import random_orthogonal, random_z_rotations

from .structures import graphs, load, qm7, reference


def _frames(data, method="all", dim="3D", **kwargs):
    return frames_for_batch(graphs([data]), method, dim, **kwargs)


@pytest.mark.parametrize(
    "method, used, set_size",
    [("all", 8, 8), ("se3-all", 4, 4), ("det", 1, 1), ("se3-det", 1, 1), ("stochastic", 1, 8), ("se3-stochastic", 1, 4)],
)
def test_frame_counts_on_generic_molecule(ethanol, method, used, set_size):
    frames = _frames(ethanol[0], method)
    assert frames.degeneracy_names() == ["none"]
    assert int(frames.num_frames[0]) == used
    assert int(frames.set_size[0]) == set_size


@pytest.mark.parametrize("method", ["all", "se3-all", "det", "se3-det", "stochastic", "DA", "se3-DA"])
@pytest.mark.parametrize("dim", ["3D", "2D"])
def test_frames_are_orthogonal_and_define_canonical_copies(real_data, method, dim):
    structures, _ = load(real_data, "oc20_is2re")
    batch = graphs(structures)
    frames = frames_for_batch(batch, method, dim, generator=torch.Generator().manual_seed(0))
    u = frames.rotation
    eye = torch.eye(3, dtype=u.dtype).expand_as(u)
    assert torch.allclose(u.transpose(1, 2) @ u, eye, atol=1e-12)
    det = torch.linalg.det(u)
    assert torch.allclose(det.abs(), torch.ones_like(det), atol=1e-12)
    if method.startswith("se3"):
        assert bool((det > 0).all())
    if dim == "2D":  # z is kept
        assert torch.allclose(u[:, 2], torch.tensor([0.0, 0.0, 1.0], dtype=u.dtype).expand(u.shape[0], 3))
    # canonical positions and cells are the input rotated by the frame
    t = frames.translation[frames.graph][frames.batch]
    expected = ((batch.pos[frames.node_index] - t).unsqueeze(1) @ u[frames.batch]).squeeze(1)
    assert torch.allclose(frames.pos, expected, atol=1e-12)
    assert torch.allclose(frames.cell, batch.cell[frames.graph] @ u, atol=1e-12)
    assert torch.allclose(torch.zeros(3, dtype=u.dtype).index_add(0, frames.graph, frames.weight), torch.ones(3, dtype=u.dtype))


def _canonical_copies(frames) -> list[np.ndarray]:
    return [frames.pos[frames.batch == g].numpy() for g in range(frames.graph.shape[0])]


def _align(reference_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows`` reordered to match ``reference_rows`` (atoms may be permuted)."""
    order = [int(np.argmin(np.linalg.norm(rows - r, axis=1))) for r in reference_rows]
    return rows[order]


@pytest.mark.parametrize("method", ["all", "det", "se3-all", "se3-det"])
def test_canonical_positions_invariant_under_rotation_translation_permutation(ethanol, method):
    """The set of canonical copies is the same after a random rigid motion and atom reordering."""
    rng = np.random.default_rng(0)
    checks = ("rotation", "translation", "permutation") + (() if method.startswith("se3") else ("reflection",))
    for data in ethanol:
        moved = data
        for check in checks:
            moved = transform_structure(moved, check, rng).data
        before, after = _canonical_copies(_frames(data, method)), _canonical_copies(_frames(moved, method))
        assert len(before) == len(after)
        for copy in before:
            assert min(np.abs(_align(copy, other) - copy).max() for other in after) < 1e-10


def test_det_frame_is_rotation_invariant_unlike_coordinate_sum_rule(ethanol):
    """Our det frame: one frame, identical canonical positions after a rotation. The original rule
    (sign of the sum of coordinates) picks a different frame for the same rotated structures."""
    rng = np.random.default_rng(1)
    changed_by_sum_rule = 0
    for data in ethanol:
        before = _frames(data, "det")
        step = transform_structure(data, "rotation", rng)
        after = _frames(step.data, "det")
        assert int(before.num_frames[0]) == int(after.num_frames[0]) == 1
        assert torch.allclose(before.pos, after.pos, atol=1e-10)

        def sum_rule(pos):
            centred = pos - pos.mean(0)
            _, vectors = torch.linalg.eigh(centred.T @ centred)
            signs = torch.sign((centred @ vectors).sum(0))  # the original's rule
            return centred @ (vectors * signs)

        changed_by_sum_rule += not torch.allclose(sum_rule(data.pos), sum_rule(step.data.pos), atol=1e-6)
    assert changed_by_sum_rule > 0


@pytest.mark.parametrize(
    "index, name, degeneracy, frames, order",
    [(0, "methane", "triple", 24, 0), (1, "ethane", "pair", 24, 6), (3, "acetylene", "linear", 8, 2),
     (238, "benzene", "pair", 24, 6), (65, "neopentane", "triple", 24, 0)],
)
def test_degeneracy_classes_of_real_qm7_molecules(real_data, index, name, degeneracy, frames, order):
    f = _frames(qm7(real_data, index))
    assert f.degeneracy_names() == [degeneracy], name
    assert int(f.num_frames[0]) == frames
    assert int(f.harmonic_order[0]) == order


@pytest.mark.parametrize(
    "name, degeneracy, frames",
    [("C6H6", "pair", 24), ("CH4", "triple", 24), ("CO2", "linear", 8), ("NH3", "pair", 12), ("H2O", "none", 8),
     ("H2CO", "none", 8), ("C60", "triple", 120), ("Cu", "triple", 48), ("NaCl", "triple", 48), ("Cu_cubic", "triple", 48)],
)
def test_frame_set_sizes_of_symmetric_structures(name, degeneracy, frames):
    """Exactly symmetric reference geometries: the frame set is the symmetry group's size or a
    small multiple (methane 24 = |Td|, C60 120 = |Ih|, fcc Cu 48 = |Oh|); planar H2O/H2CO keep
    the plain 8 PCA frames."""
    f = _frames(reference(name))
    assert f.degeneracy_names() == [degeneracy]
    assert int(f.num_frames[0]) == frames
    assert not bool(f.truncated.any())


def _same_set(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-10) -> bool:
    """Same sets of matrices [K,3,3], in any order."""
    distance = ((a[:, None] - b[None, :]).abs().amax((2, 3)))
    return a.shape == b.shape and bool((distance.amin(1) < atol).all()) and bool((distance.amin(0) < atol).all())


def test_periodic_frames_unchanged_by_image_shifts_and_cell_choice(real_data):
    structures, _ = load(real_data, "oc20_is2re")
    oxides, _ = load(real_data, "oxides_bulk")
    rng = np.random.default_rng(2)
    for data, dim in [(d, "2D") for d in structures] + [(d, "3D") for d in oxides]:
        before = _frames(data, "all", dim)
        for check in ("image", "cell"):
            moved = transform_structure(data, check, rng).data
            assert not torch.allclose(moved.pos, data.pos) or check == "cell"
            after = _frames(moved, "all", dim)
            assert torch.equal(before.num_frames, after.num_frames)
            assert _same_set(before.rotation, after.rotation), (check, before.degeneracy_names())


def test_wrapped_position_pca_is_not_image_invariant(real_data):
    """The reason for the periodic cloud: plain PCA of wrapped positions changes with images."""
    data = load(real_data, "oc20_is2re")[0][0]
    moved = transform_structure(data, "image", np.random.default_rng(3)).data
    plain = [compute_frames(d.pos, method="all", dim="2D").rotation for d in (data, moved)]
    assert not torch.allclose(plain[0], plain[1], atol=1e-3)


def test_batched_frames_equal_per_graph_frames(real_data):
    molecules, _ = load(real_data, "qm7")
    molecules += [qm7(real_data, 238)]
    crystals, _ = load(real_data, "oxides_bulk")
    mixed = molecules + crystals
    together = frames_for_batch(graphs(mixed), "all", "3D")
    start = 0
    for i, data in enumerate(mixed):
        alone = _frames(data, "all", "3D")
        count = int(alone.num_frames[0])
        assert int(together.num_frames[i]) == count
        assert torch.allclose(together.rotation[start:start + count], alone.rotation, atol=1e-12)
        start += count


def test_stochastic_frames_are_seeded_draws_from_the_full_set(ethanol):
    data = ethanol[0]
    full = _frames(data, "all").rotation
    draws = [
        _frames(data, "stochastic", generator=torch.Generator().manual_seed(seed)).rotation[0] for seed in range(64)
    ]
    again = _frames(data, "stochastic", generator=torch.Generator().manual_seed(5)).rotation[0]
    assert torch.equal(again, draws[5])
    hits = [int(torch.argmin(((full - d) ** 2).sum((1, 2)))) for d in draws]
    assert all(torch.allclose(full[h], d) for h, d in zip(hits, draws))
    assert set(hits) == set(range(8))  # every frame of the set is reachable


def test_random_rotations_are_haar_distributed():
    """Moments of the Haar measure: E[R_ij] = 0 and E[R_ij²] = 1/3 on O(3) and SO(3);
    E[tr R] = 0 and E[(tr R)²] = 1 on SO(3) (for QR without the sign fix, E[tr R] ≠ 0)."""
    gen = torch.Generator().manual_seed(0)
    n = 20000
    for proper in (True, False):
        r = random_orthogonal(n, proper=proper, generator=gen)
        det = torch.linalg.det(r)
        assert bool(((det > 0) == proper).all()) if proper else 0.4 < float((det > 0).double().mean()) < 0.6
        assert float(r.mean(0).abs().max()) < 0.02
        assert float(((r**2).mean(0) - 1 / 3).abs().max()) < 0.02
        if proper:
            trace = torch.diagonal(r, dim1=1, dim2=2).sum(-1)
            assert abs(float(trace.mean())) < 0.03 and abs(float((trace**2).mean()) - 1) < 0.05
    z = random_z_rotations(1000, proper=False, generator=gen)
    assert torch.allclose(z[:, 2], torch.tensor([0.0, 0.0, 1.0], dtype=z.dtype).expand(1000, 3))
    angle = torch.atan2(z[:, 1, 0], z[:, 0, 0])
    assert abs(float(torch.cos(angle).mean())) < 0.1 and abs(float(torch.sin(angle).mean())) < 0.1


def test_da_method_gives_one_random_rotation_per_graph(real_data):
    structures, _ = load(real_data, "qm9")
    frames = frames_for_batch(graphs(structures), "se3-DA", "3D", generator=torch.Generator().manual_seed(1))
    assert frames.num_frames.tolist() == [1] * len(structures)
    assert bool((torch.linalg.det(frames.rotation) > 0).all())


# ------------------------------------------------------------------------------------------
# bad or extreme input


def test_single_atom_is_a_point_with_identity_frames(real_data):
    data = reference("H")  # ASE's isolated H atom
    frames = _frames(data)
    assert frames.degeneracy_names() == ["point"]
    assert torch.allclose(frames.pos, torch.zeros_like(frames.pos))


def test_two_atoms_are_linear_and_exact(real_data):
    data = reference("H2")
    frames = _frames(data)
    assert frames.degeneracy_names() == ["linear"] and int(frames.num_frames[0]) == 8
    rotated = transform_structure(data, "rotation", np.random.default_rng(0)).data
    a, b = frames.pos.reshape(8, 2, 3), _frames(rotated).pos.reshape(8, 2, 3)
    assert torch.allclose(a[:, :, 0].abs(), b[:, :, 0].abs(), atol=1e-12)
    assert float(a[:, :, 1:].abs().max()) < 1e-12 and float(b[:, :, 1:].abs().max()) < 1e-12


def test_all_atoms_at_one_point_is_a_clear_error(ethanol):
    data = ethanol[0].clone()
    data.pos = torch.zeros_like(data.pos) + 1.5
    with pytest.raises(DataError, match=r"graph\(s\) \[0\]: all atoms are at the same position"):
        _frames(data)


def test_nan_positions_are_a_clear_error(real_data):
    structures, _ = load(real_data, "qm9")
    batch = graphs(structures[:3])
    batch.pos[batch.ptr[2] + 1, 1] = float("nan")
    with pytest.raises(DataError, match=r"non-finite position .* in graph\(s\) \[2\]"):
        frames_for_batch(batch)


def test_unsorted_batch_and_empty_graphs_are_errors(ethanol):
    pos = ethanol[0].pos
    with pytest.raises(DataError, match="sorted"):
        compute_frames(pos, torch.tensor([1, 0] * 4 + [1]), 2)
    with pytest.raises(DataError, match="no atoms"):
        compute_frames(pos, torch.zeros(9, dtype=torch.long), 2)


def test_unknown_methods_are_config_errors():
    with pytest.raises(ConfigError, match="unknown frame method 'everything'"):
        FrameMethod.parse("everything")
    with pytest.raises(ConfigError, match="unknown frame dimension '4D'"):
        FrameMethod.parse("all", "4D")


@pytest.mark.parametrize("k", [2, 4])
def test_k_random_frames_are_distinct_members_of_the_frame_set_drawn_uniformly(k):
    """frames method "k": k distinct frames of each graph's full set per call, weights 1/k, every
    frame of the set equally likely (400 draws: each of the 8 frames near 400 k / 8)."""
    generator = torch.Generator().manual_seed(0)
    pos = torch.randn(24, 3, generator=generator, dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(2), 12)
    full = compute_frames(pos, batch, 2, method=FrameMethod.parse("all", "3D"))
    members = {tuple(r.flatten().round(decimals=9).tolist()) for r in full.rotation[full.graph == 0]}
    assert len(members) == 8
    counts = dict.fromkeys(members, 0)
    for _ in range(400):
        frames = compute_frames(pos, batch, 2, method=FrameMethod.parse(str(k), "3D"), generator=generator)
        assert torch.bincount(frames.graph).tolist() == [k, k]
        assert torch.allclose(frames.weight, torch.full_like(frames.weight, 1.0 / k))
        drawn = [tuple(r.flatten().round(decimals=9).tolist()) for r in frames.rotation[frames.graph == 0]]
        assert len(set(drawn)) == k and set(drawn) <= members
        for key in drawn:
            counts[key] += 1
    expected = 400 * k / 8
    assert all(abs(c - expected) < 5 * math.sqrt(expected) for c in counts.values()), counts
    assert FrameMethod.parse(str(k)).name == str(k) and FrameMethod.parse(f"se3-{k}").proper
    with pytest.raises(ConfigError, match="k = 2..8"):
        FrameMethod.parse("9")
