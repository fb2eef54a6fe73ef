"""The relaxation engine's atom budget, observed on the batches the model is actually called with
(real OC20 IS2RE slabs, a small random FAENet)."""

from __future__ import annotations

import math

import pytest
import torch

from frameavg.data import iter_structures
from frameavg.data.atomic_data import data_to_atoms
from frameavg.frames import FrameAveraging
from frameavg.models import FAENet
from frameavg.simulation import Potential, relax
from frameavg.simulation.relaxation import search_budget


class RecordingPotential(Potential):
    """A ``Potential`` that records the atoms and structures of every batch it evaluates."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int]] = []  # (atoms, structures) per model call

    def __call__(self, batch, **kwargs):
        self.calls.append((int(batch.num_nodes), int(batch.num_graphs)))
        return super().__call__(batch, **kwargs)


def recording_potential() -> RecordingPotential:
    torch.manual_seed(0)
    model = FAENet(cutoff=5.0, hidden_channels=16, num_filters=16, num_interactions=1, num_gaussians=8,
                   tag_hidden_channels=4, pg_hidden_channels=4, phys_embeds=False, regress_forces=None)
    return RecordingPotential(FrameAveraging(model, dims="2D", method="all", cutoff=5.0), cutoff=5.0,
                              dtype="float32")


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: small batches on a shared, loaded CPU are far slower with more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def oc20_slabs(real_data):
    """The 8 OC20 IS2RE sample slabs: 65, 172, 24, 49, 52, 54, 78, 93 atoms (587 in all)."""
    path = real_data / "oc20_is2re_samples" / "is2re_bs8.extxyz"
    return [data_to_atoms(d) for d in iter_structures(path, dtype=torch.float64)]


@pytest.mark.parametrize("budget", [150, 100])
def test_no_batch_exceeds_the_atom_budget(oc20_slabs, budget):
    """Every model call holds at most ``budget`` atoms, unless one structure alone exceeds it
    (the 172-atom slab); every slab is still relaxed for its steps."""
    potential = recording_potential()
    results = relax(oc20_slabs, potential, optimizer="fire", fmax=1e-9, steps=3, max_atoms_per_batch=budget)
    sizes = sorted(len(a) for a in oc20_slabs)
    assert potential.calls and all(atoms <= budget or structures == 1 for atoms, structures in potential.calls), \
        potential.calls
    assert max(structures for _, structures in potential.calls) < len(oc20_slabs)
    assert sum(structures for _, structures in potential.calls) == len(oc20_slabs) * 4  # 3 steps + final forces
    assert all(r.info["steps"] == 3 for r in results)
    assert sizes[-1] > budget  # the case of a structure alone over the budget is exercised


def test_cpu_budget_is_measured_once_per_model_and_kept(oc20_slabs):
    """Without ``max_atoms_per_batch`` a CPU model's budget is measured (a few extra model calls)
    on the first run, kept for the next one, reported in ``info``, and honoured by every call."""
    potential = recording_potential()
    first = relax(oc20_slabs, potential, optimizer="lbfgs", fmax=1e-9, steps=2)
    engine_calls = len(oc20_slabs) * 3  # structures evaluated by the engine: 2 steps + final forces
    assert sum(structures for _, structures in potential.calls) > engine_calls  # the measurement
    assert {r.info["budget_source"] for r in first} <= {"measured", "all"}
    potential.calls.clear()
    second = relax(oc20_slabs, potential, optimizer="lbfgs", fmax=1e-9, steps=2)
    budget = second[0].info["max_atoms_per_batch"]
    assert sum(structures for _, structures in potential.calls) == engine_calls  # no second measurement
    assert all(atoms <= budget or structures == 1 for atoms, structures in potential.calls), (budget, potential.calls)
    if first[0].info["budget_source"] == "measured":
        assert second[0].info["budget_source"] == "cached" and budget == first[0].info["max_atoms_per_batch"]
    given = relax(oc20_slabs[:2], recording_potential(), steps=0, max_atoms_per_batch=77)
    assert given[0].info["max_atoms_per_batch"] == 77 and given[0].info["budget_source"] == "given"


@pytest.mark.parametrize("best, sizes, expected", [
    (8, (1, 2, 4, 8, 16, 32), (8, True)),  # time per atom falls up to 8 structures, then rises
    (1, (1, 2, 4, 8, 16, 32), (1, True)),  # one structure at a time is fastest
    (64, (1, 2, 4, 8), (8, False)),  # still falling when the sizes run out
])
def test_search_budget_stops_where_time_per_atom_stops_falling(best, sizes, expected):
    """A synthetic cost curve (10 atoms per structure, time per atom lowest at ``best`` structures)."""
    def seconds(k):
        return 10 * k * (1.0 + abs(math.log2(k / best))), 10 * k

    assert search_budget(seconds, sizes) == expected


def test_search_budget_is_not_stopped_by_one_noisy_size():
    """Time per atom 10, then a noisy 10.5 at 2 structures, then falling to 3 at 8: the first-stop
    rule would keep 1 structure; the batch of 8 is the smallest within 5 % of the lowest."""
    per_atom = {1: 10.0, 2: 10.5, 4: 5.0, 8: 3.0, 16: 3.05, 32: 3.1}
    assert search_budget(lambda k: (per_atom[k] * 10 * k, 10 * k), tuple(per_atom)) == (8, True)


def test_search_budget_ignores_gains_below_the_threshold():
    """A 1 % gain per doubling is noise: the smallest batch is kept."""
    assert search_budget(lambda k: (10 * k * 0.99 ** math.log2(k), 10 * k), (1, 2, 4, 8), gain=0.05) == (1, True)
