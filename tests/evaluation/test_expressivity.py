"""Expressivity suite: the pairs have the invariants the papers claim, and models separate (or
provably cannot separate) them under the suite's reduced settings."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from frameavg.cli.main import main
from frameavg.evaluation.expressivity import (
    COUNTEREXAMPLES,
    SuiteSettings,
    counterexample_pair,
    k_chain_pair,
    markdown_tables,
    run_suite,
    star_pair,
    train_and_test,
)
from frameavg.evaluation.expressivity.harness import score
from frameavg.models import MODELS

F64 = torch.float64
#: Reduced settings of the CI checks (2 seeds, 4 test copies per graph and column).
CI = SuiteSettings(seeds=2, steps=120, test_copies=4)


# ------------------------------------------------------------------ the geometric graphs
def neighbour_vectors(pair, index):
    pos = pair.graphs[index].pos.numpy()
    return pos[1:] - pos[0]


def body_scalars(vectors: np.ndarray, order: int) -> list:
    """Sorted multiset of Gram matrices of ordered (order-1)-tuples of distinct neighbours: the
    ``order``-body scalars of a centre environment (distances, angles, ...)."""
    out = []
    for idx in itertools.permutations(range(len(vectors)), order - 1):
        gram = vectors[list(idx)] @ vectors[list(idx)].T
        out.append(tuple(np.round(gram[np.triu_indices(order - 1)], 6)))
    return sorted(out)


def congruences(a: np.ndarray, b: np.ndarray) -> set[int]:
    """Determinants (+1 rotation, -1 reflection) of the orthogonal maps taking neighbour set a onto
    b for some permutation (empty: not congruent)."""
    found = set()
    for perm in itertools.permutations(range(len(b))):
        bp = b[list(perm)]
        if np.allclose(a @ a.T, bp @ bp.T, atol=1e-9):
            rotation = np.linalg.lstsq(a, bp, rcond=None)[0]
            found.add(int(round(np.linalg.det(rotation))))
    return found


def test_counterexamples_have_equal_lower_order_scalars_and_are_distinct():
    orders = {"2-body": 2, "3-body": 3, "4-body non-chiral": 4, "4-body chiral": 4}
    for case, order in orders.items():
        pair = counterexample_pair(case, F64)
        a, b = neighbour_vectors(pair, 0), neighbour_vectors(pair, 1)
        for lower in range(2, order + 1):
            assert body_scalars(a, lower) == body_scalars(b, lower), (case, lower)
        if order < 4:  # the next body order tells them apart
            assert body_scalars(a, order + 1) != body_scalars(b, order + 1), case
        expected = {-1} if case == "4-body chiral" else set()
        assert congruences(a, b) == expected, case  # chiral: mirror images only; others: distinct


def test_k_chains_have_equal_bonds_and_angles_but_differ():
    for k in (4, 6):
        pair = k_chain_pair(k, F64)
        a, b = (g.pos.numpy() for g in pair.graphs)
        assert a.shape == (k + 2, 3) and torch.equal(pair.graphs[0].edge_index, pair.graphs[1].edge_index)
        for pos in (a, b):
            bonds = np.linalg.norm(np.diff(pos, axis=0), axis=1)
            np.testing.assert_allclose(bonds, 5.0, atol=1e-12)
        cos = [[float(np.dot(p[i - 1] - p[i], p[i + 1] - p[i])) for i in range(1, k + 1)] for p in (a, b)]
        assert sorted(np.round(cos[0], 9)) == sorted(np.round(cos[1], 9))
        ends = [np.linalg.norm(p[0] - p[-1]) for p in (a, b)]
        assert abs(ends[0] - ends[1]) > 1.0  # not congruent


def test_stars_are_symmetric_and_rotated_by_a_non_symmetry():
    for fold in (2, 3, 5, 10):
        pair = star_pair(fold, F64)
        a, b = (g.pos.numpy() for g in pair.graphs)
        turn = 2 * math.pi / fold
        rot = np.array([[math.cos(turn), -math.sin(turn), 0], [math.sin(turn), math.cos(turn), 0], [0, 0, 1]])
        assert set(map(tuple, np.round(a @ rot.T, 9) + 0.0)) == set(map(tuple, np.round(a, 9) + 0.0))
        assert set(map(tuple, np.round(a, 9) + 0.0)) != set(map(tuple, np.round(b, 9) + 0.0))
        assert pair.centre == 0 and pair.graphs[0].edge_index.shape == (2, 2 * fold)


# ------------------------------------------------------------------- separations
def accuracy(pair, model, layers=1, readout="energy", settings=CI):
    results = [train_and_test(pair, model, layers, seed, settings, readout) for seed in range(settings.seeds)]
    return tuple(float(np.mean([r[column] for r in results])) for column in (0, 1))


def needs(name):
    return pytest.mark.skipif(name not in MODELS, reason=f"model {name!r} not registered")


@needs("schnet")
def test_schnet_cannot_separate_two_body_pair_or_k_chains():
    """Distance-only message passing: both graphs of each pair are the same distance-labelled graph."""
    assert accuracy(counterexample_pair("2-body", F64), "schnet") == (50.0, 50.0)
    assert accuracy(k_chain_pair(4, F64), "schnet", layers=3) == (50.0, 50.0)


def test_fa_separates_k4_chains_with_one_layer_and_stays_invariant():
    given, rotated = accuracy(k_chain_pair(4, F64), "faenet-fa", layers=1)
    assert given >= 90 and rotated == given


def test_chirality_o3_frames_cannot_se3_frames_can():
    pair = counterexample_pair("4-body chiral", F64)
    assert accuracy(pair, "faenet-fa") == (50.0, 50.0)  # O(3) frames: mirror images are equivalent
    given, rotated = accuracy(pair, "faenet-se3")
    assert given >= 90 and rotated >= 90


@needs("painn")
def test_painn_is_reflection_invariant_on_the_chiral_pair():
    assert accuracy(counterexample_pair("4-body chiral", F64), "painn") == (50.0, 50.0)


def test_star_centre_vector_vanishes_under_full_frame_averaging():
    """The frame set of an L-fold star maps onto itself under the star's symmetries, so the
    frame-averaged vector output at the centre is zero for both orientations (chance)."""
    for fold in (2, 5):
        assert accuracy(star_pair(fold, F64), "faenet-fa", readout="centre-vector") == (50.0, 50.0)


def test_score_counts_undecided_logits_as_half():
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert score(torch.tensor([-2.0, 3.0, 1e-4, -1e-4]), labels, margin=1e-3) == 75.0
    assert score(torch.tensor([0.5, 0.5, 0.5, 0.5]), labels, margin=1e-3) == 50.0


# ---------------------------------------------------------------------- API and CLI
def test_unregistered_models_are_skipped_with_a_reason():
    settings = SuiteSettings(seeds=1, steps=20, tests=("counterexamples",), counterexamples=("2-body",), test_copies=2)
    result = run_suite(["faenet-se3", "no-such-model"], settings)
    assert "not registered" in result.skipped["no-such-model"]
    assert {(r.model, r.rotated) for r in result.records} == {("faenet-se3", False), ("faenet-se3", True)}
    assert "| faenet-se3 |" in markdown_tables(result.records)


def test_cli_json_records_and_docs(tmp_path, capsys):
    code = main(["expressivity", "--models", "faenet-fa,unknown-model", "--tests", "counterexamples", "--seeds", "1",
                 "--steps", "40", "--json", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0 and "skipping unknown-model" in captured.err
    records = json.loads(captured.out)
    assert {r["case"] for r in records} == set(COUNTEREXAMPLES)
    assert all(set(r) == {"test", "case", "model", "layers", "rotated", "mean", "std", "seeds"} for r in records)
    assert (tmp_path / "expressivity.png").stat().st_size > 10_000
    doc = (tmp_path / "expressivity.md").read_text()
    assert "4-body chiral" in doc and "expressivity.png" in doc


def test_cli_rejects_bad_seeds(capsys):
    assert main(["expressivity", "--seeds", "0"]) == 1
    assert "--seeds must be >= 1" in capsys.readouterr().err
