"""Learned canonicalisation (``frames.learned``): exact symmetry with one forward pass per graph,
gradients into the canonicaliser, the PCA fallback on degenerate graphs, and tiny graphs."""

from __future__ import annotations

import pytest
import torch

from frameavg.errors import ConfigError
from frameavg.evaluation.testing import assert_symmetric
from frameavg.frames.averaging import FrameAveraging
from frameavg.frames.compute import compute_frames
from frameavg.frames.learned import gram_schmidt_frames

from .structures import CUTOFF, DATASETS, graphs, load, qm7, raw_model, reference

PERIODIC = ("oc20_is2re", "oc20_s2ef", "xu_kitchin", "oxides_bulk")
#: Every real data set of the frame tests: QM9, QM7, rMD17, SchNetPack and NequIP fixtures,
#: OC20 slabs (2D), Xu–Kitchin slabs (2D), oxide crystals.
NAMES = list(DATASETS)


def _checks(name, method):
    reflection = ("reflection",) if method == "learned" else ()
    periodic = ("image", "cell") if name in PERIODIC else ()
    return ("rotation", *reflection, "translation", "permutation", *periodic)


def _learned(dtype, dim, method="learned", seed=0):
    torch.manual_seed(seed + 10)
    return FrameAveraging(raw_model(dtype, seed), dims=dim, method=method, cutoff=CUTOFF).to(dtype).eval()


@pytest.mark.parametrize("method", ["learned", "se3-learned"])
@pytest.mark.parametrize("name", NAMES)
def test_learned_frames_make_raw_model_exactly_invariant_float64(real_data, name, method):
    structures, dim = load(real_data, name)
    model = _learned(torch.float64, dim, method)
    assert_symmetric(model, structures, atol=1e-10, checks=_checks(name, method), dim=dim, cutoff=CUTOFF, seed=3)


@pytest.mark.parametrize("name", NAMES)
def test_learned_frames_make_raw_model_invariant_float32(real_data, name):
    structures, dim = load(real_data, name, dtype=torch.float32)
    model = _learned(torch.float32, dim)
    assert_symmetric(model, structures, atol=0.0, rtol=1e-5, forces_atol=1e-6, forces_rtol=1e-5,
                     checks=_checks(name, "learned"), dim=dim, cutoff=CUTOFF, seed=4)


def test_se3_learned_is_not_reflection_invariant(real_data):
    """The SO(3) variant builds e3 = e1 × e2, a pseudovector: reflections change the frame (the
    reflection check can fail, so the O(3) test above means something)."""
    structures, dim = load(real_data, "qm9")
    with pytest.raises(AssertionError, match="reflection"):
        assert_symmetric(_learned(torch.float64, dim, "se3-learned"), structures, atol=1e-6,
                         checks=("reflection",), dim=dim, cutoff=CUTOFF)


def test_one_forward_per_graph_and_no_fallback_on_generic_molecules(real_data):
    """rMD17 ethanol snapshots have no symmetry: one learned frame each, orthogonal."""
    structures, _ = load(real_data, "rmd17_ethanol")
    model = _learned(torch.float64, "3D")
    _, frames = model(graphs(structures), return_frames=True)
    assert frames.graph.tolist() == list(range(len(structures)))  # one frame copy per graph
    assert not bool(frames.fallback.any())
    assert torch.allclose(frames.rotation.transpose(1, 2) @ frames.rotation,
                          torch.eye(3, dtype=torch.float64).expand(len(structures), 3, 3), atol=1e-12)


def test_training_step_changes_the_canonicaliser(real_data):
    structures, _ = load(real_data, "rmd17_ethanol")
    model = _learned(torch.float64, "3D").train()
    before = [p.detach().clone() for p in model.canonicalizer.parameters()]
    optimiser = torch.optim.SGD(model.parameters(), lr=1e-2)
    out = model(graphs(structures))
    loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
    loss.backward()
    named = dict(model.canonicalizer.named_parameters())
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in named.values())
    optimiser.step()
    for (name, parameter), old in zip(named.items(), before):
        if name == "embedding.weight":  # only the rows of ethanol's elements (H, C, O) are used
            rows = torch.tensor([1, 6, 8])
            assert not torch.equal(old[rows], parameter[rows]) and torch.equal(old[0], parameter[0])
        else:
            assert not torch.equal(old, parameter), name


def test_canonicaliser_is_saved_with_the_weights(real_data):
    structures, _ = load(real_data, "qm9")
    model = _learned(torch.float64, "3D", seed=1)
    state = model.state_dict()
    assert any(key.startswith("canonicalizer.") for key in state)
    other = _learned(torch.float64, "3D", seed=2)
    other.load_state_dict(state)
    batch = graphs(structures)
    torch.testing.assert_close(other(batch)["energy"], model(batch)["energy"], rtol=0, atol=0)


@pytest.mark.parametrize("name, degenerate", [("CH4", True), ("C6H6", True), ("CO2", True), ("Cu", True),
                                              ("CH3CH2OH", True), ("CH3CH2OH-distorted", False)])
def test_symmetric_structures_fall_back_to_exact_pca_frames(name, degenerate):
    """An equivariant vector of methane (Td), benzene (D6h), CO2 (D∞h), fcc Cu (Oh) or ASE's
    ethanol (Cs: every polar vector lies in the mirror plane) is constrained by the symmetry, so
    no canonicaliser can give them a frame: they use the PCA set, and stay exact. Ethanol moved
    off its mirror plane gets a learned frame."""
    distorted = name.endswith("-distorted")
    name = name.removesuffix("-distorted")
    data = reference(name)
    if distorted:
        data.pos = data.pos + 0.05 * torch.randn(data.pos.shape, generator=torch.Generator().manual_seed(0),
                                                 dtype=torch.float64)
    model = _learned(torch.float64, "3D")
    _, frames = model(graphs([data]), return_frames=True)
    assert bool(frames.fallback[0]) is degenerate
    assert (int(frames.num_frames[0]) > 1) is degenerate
    periodic = name == "Cu"
    checks = ("rotation", "reflection") + (("image", "cell") if periodic else ())
    assert_symmetric(model, [data], atol=1e-10, checks=checks, cutoff=CUTOFF, trials=3)


@pytest.mark.parametrize("atoms", [1, 2])
def test_one_and_two_atom_graphs_fall_back_and_stay_exact(real_data, atoms):
    """A single atom has no edge (all vectors zero); a dimer's vectors all lie on its axis: both
    are degenerate by the rule and get the PCA frames (point / linear), batched with ethane."""
    from ase import Atoms

    from frameavg.data import atoms_to_data

    positions = [[0.1, 0.2, 0.3], [0.4, -0.8, 0.7]][:atoms]
    tiny = atoms_to_data(Atoms("CO"[:atoms], positions=positions), dtype=torch.float64)
    model = _learned(torch.float64, "3D")
    _, frames = model(graphs([tiny, qm7(real_data, 1)]), return_frames=True)
    assert frames.fallback.tolist()[0] is True
    assert_symmetric(model, [tiny], atol=1e-10, checks=("rotation", "reflection", "translation"), cutoff=CUTOFF)


def test_gram_schmidt_rules():
    vectors = torch.tensor([[[2.0, 0, 0], [1, 3, 0], [1, 1, -4]]], dtype=torch.float64)
    frame, degenerate = gram_schmidt_frames(vectors, torch.ones(1, dtype=torch.float64), proper=False, dim="3D",
                                            tol=1e-3)
    torch.testing.assert_close(frame[0], torch.diag(torch.tensor([1.0, 1, -1], dtype=torch.float64)))
    assert not degenerate.item()  # O(3): det −1 follows the vectors' handedness
    proper, _ = gram_schmidt_frames(vectors, torch.ones(1, dtype=torch.float64), proper=True, dim="3D", tol=1e-3)
    assert torch.linalg.det(proper[0]).item() == pytest.approx(1.0)
    parallel = torch.tensor([[[1.0, 0, 0], [2, 1e-6, 0], [0, 0, 1]]], dtype=torch.float64)
    _, degenerate = gram_schmidt_frames(parallel, torch.ones(1, dtype=torch.float64) * 3, proper=False, dim="3D",
                                        tol=1e-3)
    assert degenerate.item()


def test_compute_frames_refuses_learned_and_eval_learned_needs_a_canonicaliser(real_data):
    structures, _ = load(real_data, "qm9")
    with pytest.raises(ConfigError, match="canonicaliser"):
        compute_frames(structures[0].pos, method="learned")
    with pytest.raises(ConfigError, match="canonicaliser"):
        FrameAveraging(raw_model(), "3D", "all").with_eval_method("learned")
    with pytest.raises(ConfigError, match="canonicalizer"):
        FrameAveraging(raw_model(), "3D", "learned", canonicalizer={"widht": 3})


def test_symmetry_command_reports_learned_frames(real_data, capsys):
    import json

    from frameavg.cli.main import main

    code = main(["symmetry", "--data", str(real_data / "rmd17_ethanol" / "train.xyz"), "--limit", "4",
                 "--method", "learned", "--checks", "rotation,reflection", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["meta"]["method"] == "learned"
    assert all(check["holds"] and check["energy_abs_max"] < 1e-10 for check in report["checks"])
