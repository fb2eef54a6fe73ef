"""Symmetry evaluation: the transforms are what they claim, the report measures real errors, and the
assertion helpers pass or fail with the offending checks named."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from frameavg.data.neighbors import edge_vectors, neighbor_list
from frameavg.data.readers import iter_structures
from frameavg.errors import ConfigError, DataError
from frameavg.evaluation.symmetry import (
    CHECKS,
    model_inputs,
    random_rotation,
    random_unimodular,
    symmetry_report,
    transform_structure,
)
from frameavg.evaluation import testing
from frameavg.evaluation.testing import (
    DEFAULT_TOLERANCES,
    assert_batch_independent,
    assert_equivariant,
    assert_invariant,
    assert_symmetric,
)
from frameavg.frames.averaging import FrameAveraging
from frameavg.models.raw_mpnn import RawCoordinateMPNN

CUTOFF = 5.0


def _read(real_data, path, count, dtype=torch.float64):
    stream = iter_structures(real_data / path, dtype=dtype)
    return [model_inputs(d) for d in itertools.islice(stream, count)]


def _model(seed=0):
    torch.manual_seed(seed)
    return RawCoordinateMPNN(hidden=16, num_layers=2, cutoff=CUTOFF).double().eval()


def _sorted_edge_lengths(data):
    edge_index, offsets = neighbor_list(data.pos, data.cell[0], data.pbc[0], CUTOFF)
    vec = edge_vectors(data.pos, edge_index, offsets, data.cell, None)
    return torch.sort(vec.norm(dim=-1)).values


@pytest.mark.parametrize("check", ["rotation", "reflection", "translation", "permutation", "image", "cell"])
def test_transforms_preserve_the_periodic_structure(real_data, check):
    """Every transform keeps all interatomic distances (periodic images included)."""
    data = _read(real_data, "oc20_is2re_samples/is2re_bs3.extxyz", 1)[0]
    moved = transform_structure(data, check, np.random.default_rng(0), dim="3D")
    assert torch.allclose(_sorted_edge_lengths(data), _sorted_edge_lengths(moved.data), atol=1e-9)
    det = np.linalg.det(moved.rotation)
    assert det == pytest.approx({"reflection": -1.0}.get(check, 1.0))
    changed = not torch.allclose(moved.data.pos, data.pos) or not torch.allclose(moved.data.cell, data.cell)
    assert changed
    if check == "cell":
        assert abs(abs(np.linalg.det(moved.data.cell[0].numpy())) - abs(np.linalg.det(data.cell[0].numpy()))) < 1e-8
        frac = moved.data.pos @ torch.linalg.inv(moved.data.cell[0])
        assert bool(((frac >= -1e-12) & (frac < 1 + 1e-12)).all())  # wrapped into the new cell


def test_random_matrices_have_the_right_group():
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert np.linalg.det(random_rotation(rng, proper=True)) == pytest.approx(1.0)
        assert np.linalg.det(random_rotation(rng, proper=False)) == pytest.approx(-1.0)
        z = random_rotation(rng, proper=False, about_z=True)
        assert np.allclose(z[:, 2], [0, 0, 1]) and np.linalg.det(z) == pytest.approx(-1.0)
        m = random_unimodular(rng, np.array([True, True, False]))
        assert abs(round(np.linalg.det(m))) == 1 and np.allclose(m[2], [0, 0, 1]) and np.allclose(m[:, 2], [0, 0, 1])


def test_report_measures_a_raw_models_errors(real_data):
    structures = _read(real_data, "qm7/qm7_first300.extxyz", 6)
    report = symmetry_report(_model(), structures, checks=CHECKS, cutoff=CUTOFF)
    assert [r.check for r in report.rows] == ["rotation", "reflection", "translation", "permutation", "batch", "repeat"]
    for check in ("rotation", "reflection", "translation"):  # raw coordinates: not invariant
        row = report.row(check)
        assert row.energy_abs_max > 1e-4 and row.forces_abs_max > 1e-4
        assert row.energy_abs_mean <= row.energy_abs_max and row.forces_rel_mean > 0
    for check in ("permutation", "batch", "repeat"):  # message passing is permutation equivariant
        assert report.row(check).energy_abs_max < 1e-12 and report.row(check).forces_abs_max < 1e-12
    assert report.degeneracy == {}  # not frame-averaged
    document = json.loads(json.dumps(report.to_dict()))
    assert document["meta"]["structures"] == 6 and len(document["checks"]) == 6
    table = report.table()
    assert "rotation" in table and "|dF| max" in table


def test_report_groups_frame_averaged_errors_by_degeneracy(real_data):
    structures = _read(real_data, "qm7/qm7_first300.extxyz", 8)
    report = symmetry_report(FrameAveraging(_model(), "3D", "all").eval(), structures, checks=("rotation",), cutoff=CUTOFF)
    assert set(report.degeneracy) == {"none", "pair", "linear", "triple"}
    assert sum(d["count"] for d in report.degeneracy.values()) == 8
    assert report.degeneracy["triple"]["frames_mean"] == 24.0  # methane
    assert all(d["energy_abs_max"] < 1e-10 for d in report.degeneracy.values())


def test_stochastic_frames_are_approximate_and_not_repeatable(real_data):
    structures = _read(real_data, "rmd17_ethanol/train.xyz", 4)
    model = FrameAveraging(_model(), "3D", "stochastic", seed=0).eval()
    report = symmetry_report(model, structures, checks=("rotation", "repeat"), cutoff=CUTOFF)
    assert report.row("rotation").energy_abs_max > 1e-6
    assert report.row("repeat").energy_abs_max > 1e-6


def test_assert_helpers_name_the_failing_checks(real_data):
    structures = _read(real_data, "rmd17_ethanol/train.xyz", 3)
    with pytest.raises(AssertionError, match=r"energy not invariant .*\n  rotation: max \|dE\|"):
        assert_invariant(_model(), structures, atol=1e-8, cutoff=CUTOFF, checks=("rotation", "permutation"))
    se3 = FrameAveraging(_model(), "3D", "se3-all").eval()
    assert_symmetric(se3, structures, atol=1e-10, cutoff=CUTOFF, checks=("rotation", "translation", "permutation"))
    with pytest.raises(AssertionError, match="reflection"):
        assert_invariant(se3, structures, atol=1e-8, cutoff=CUTOFF, checks=("reflection",))
    assert_batch_independent(se3, structures, atol=1e-12, cutoff=CUTOFF)


def test_default_tolerances_per_dtype():
    assert DEFAULT_TOLERANCES == {torch.float64: {"atol": 1e-10, "rtol": 1e-9},
                                  torch.float32: {"atol": 1e-5, "rtol": 1e-4}}
    for name in testing.__all__:  # pytest shows the calling test, not the helper, on failure
        helper = getattr(testing, name)
        if callable(helper) and name.startswith(("assert_", "check_")):
            assert "__tracebackhide__" in helper.__code__.co_varnames, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_default_tolerances_pass_exact_models_and_fail_raw_ones(real_data, dtype):
    structures = _read(real_data, "rmd17_ethanol/train.xyz", 3, dtype)
    exact = FrameAveraging(_model().to(dtype), "3D", "all").eval()
    assert_symmetric(exact, structures, cutoff=CUTOFF, checks=("rotation", "reflection", "permutation"))
    assert_batch_independent(exact, structures, cutoff=CUTOFF)
    name, tol = str(dtype).removeprefix("torch."), DEFAULT_TOLERANCES[dtype]
    raw = _model().to(dtype)
    expected = rf"\({name}; default atol={tol['atol']:g}, rtol={tol['rtol']:g}\):\n  rotation: max \|d%s\| = \d"
    with pytest.raises(AssertionError, match=expected % "E"):
        assert_invariant(raw, structures, cutoff=CUTOFF, checks=("permutation", "rotation"))
    with pytest.raises(AssertionError, match=expected % "F"):
        assert_equivariant(raw, structures, cutoff=CUTOFF, checks=("rotation",))
    with pytest.raises(AssertionError, match=expected % "E"):
        assert_symmetric(raw, structures, cutoff=CUTOFF, checks=("rotation",))
    # an explicit tolerance still wins: absolute only when rtol is not given
    assert_invariant(raw, structures, atol=1e3, cutoff=CUTOFF, checks=("rotation",))
    with pytest.raises(AssertionError, match=rf"\({name}; atol=0, rtol=1e-12\)"):
        assert_invariant(raw, structures, rtol=1e-12, cutoff=CUTOFF, checks=("rotation",))


def test_bad_arguments_are_clear_errors(real_data):
    structures = _read(real_data, "rmd17_ethanol/train.xyz", 1)
    with pytest.raises(ConfigError, match="unknown check"):
        symmetry_report(_model(), structures, checks=("rotation", "shear"), cutoff=CUTOFF)
    with pytest.raises(DataError, match="no structures"):
        symmetry_report(_model(), [], cutoff=CUTOFF)
    with pytest.raises(ConfigError, match="unknown transform"):
        transform_structure(structures[0], "batch", np.random.default_rng(0))


def test_strict_neighbour_caps_break_invariance_in_crystals_and_ties_do_not():
    """fcc Cu with max_neighbors=14 cuts inside the 6-atom second shell: a strict cut picks
    neighbours by rounding, so the graph (and the energy) depends on orientation; keeping ties
    (the default, as in training) is exact."""
    from ase.build import bulk

    from frameavg.data import atoms_to_data

    copper = [atoms_to_data(bulk("Cu"), dtype=torch.float64)]
    model = FrameAveraging(_model(), "3D", "all").eval()
    kwargs = dict(checks=("rotation",), cutoff=CUTOFF, max_neighbors=14, trials=5)
    assert_invariant(model, copper, atol=1e-10, **kwargs)
    strict = symmetry_report(model, copper, strict_neighbors=True, **kwargs).row("rotation")
    assert max(strict.energy_abs_max, strict.forces_abs_max) > 1e-6
