"""Memory-budgeted batches (frameavg.data.budget): estimates, packing, refusals, and evaluation
that does not depend on how it was batched."""

import ase.build
import pytest
import torch

from frameavg.data import atoms_to_data, read_structures
from frameavg.data.budget import (MemoryBudget, batches_by_budget, check_training_batches, estimated_edges,
                                  frames_per_graph)
from frameavg.data.neighbors import RadiusGraph
from frameavg.errors import ConfigError, DataError
from frameavg.frames.averaging import FrameAveraging
from frameavg.training.config import load_config
from tiny import ETHANOL, TINY_MODEL


def _cu_cell(size=3):
    return atoms_to_data(ase.build.bulk("Cu", "fcc", a=3.61, cubic=True).repeat(size))


def _ethanol(n=30):
    return [RadiusGraph(4.0)(d) for d in read_structures("shipped:rmd17_ethanol/test")[:n]]


def test_estimated_edges_of_a_metal_match_the_neighbour_list_within_a_fifth():
    cell = _cu_cell()  # 108 atoms, 12 + 6 + 24 = 42 neighbours within 5 Å
    built = RadiusGraph(5.0)(cell.clone()).edge_index.shape[1]
    assert built == 108 * 42
    assert abs(estimated_edges(cell, 5.0) - built) < 0.2 * built
    assert estimated_edges(cell, 5.0, max_neighbors=12) == 108 * 12


def test_frames_per_graph_follows_the_frame_method():
    model = torch.nn.Linear(3, 3)
    assert frames_per_graph(model, periodic=False) == 1
    cases = [(dict(method="stochastic", eval_method="all"), 8, 1),
             (dict(method="se3-all"), 4, 4), (dict(method="3"), 3, 3),
             (dict(method="all", continuous=True), 16, 16), (dict(method="all", frames="2D"), 4, 4)]
    for kwargs, evaluating, training in cases:
        net = FrameAveraging(model, **kwargs)
        assert frames_per_graph(net, periodic=False) == evaluating, kwargs
        assert frames_per_graph(net, periodic=False, training=True) == training, kwargs
    assert frames_per_graph(FrameAveraging(model, periodic="lattice"), periodic=True) == 1
    assert frames_per_graph(FrameAveraging(model, periodic="cloud"), periodic=True) == 8


def test_batches_are_consecutive_within_the_count_and_the_budget():
    cell = _cu_cell(2)
    structures = [cell] * 10
    budget = MemoryBudget(limit=0.0, frames_periodic=8)
    cost = budget.cost(cell)
    budget = MemoryBudget(limit=budget.base + 3.5 * cost, frames_periodic=8)
    batches = list(batches_by_budget(structures, budget, max_structures=100))
    assert batches == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert list(batches_by_budget(structures, budget, max_structures=2))[:2] == [[0, 1], [2, 3]]
    assert list(batches_by_budget(structures, None, max_structures=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    # eight frames cost eight times one frame
    assert MemoryBudget(limit=1.0, frames_periodic=1).cost(cell) * 8 == pytest.approx(cost)


def test_a_structure_that_alone_does_not_fit_is_named_with_its_estimate():
    small, big = _ethanol(1)[0], _cu_cell(4)
    budget = MemoryBudget(limit=2e9, frames_periodic=8)
    with pytest.raises(DataError, match=r"^val\.extxyz, structure 2: needs an estimated \d+\.\d\d GB alone"):
        list(batches_by_budget([small, small, big], budget, source="val.extxyz"))


def test_training_batch_size_is_refused_naming_the_key():
    cell = _cu_cell()
    budget = MemoryBudget(limit=0.0, frames_periodic=1, training=True)
    budget = MemoryBudget(limit=budget.base + 4.5 * budget.cost(cell), frames_periodic=1, training=True)
    check_training_batches([cell] * 10, budget, batch_size=4)
    with pytest.raises(ConfigError, match=r"^data\.batch_size=16: .* GB.*lower data\.batch_size to 4 or less$"):
        check_training_batches([cell] * 10, budget, batch_size=16)


def test_evaluation_split_by_the_budget_equals_one_structure_at_a_time():
    from frameavg.evaluation.evaluate import evaluate
    from frameavg.training.module import AtomisticTask

    task = AtomisticTask(load_config(None, TINY_MODEL + ETHANOL + ["frames.eval=all"]))
    structures = _ethanol(30)
    per_structure = MemoryBudget.for_network(task.net, cutoff=4.0, available=1e12).cost(structures[0])
    budget = MemoryBudget.for_network(task.net, cutoff=4.0, available=1e12)
    budget = MemoryBudget(**{**budget.__dict__, "limit": budget.base + 7.5 * per_structure})
    batches = list(batches_by_budget(structures, budget, max_structures=100))
    assert [len(b) for b in batches] == [7, 7, 7, 7, 2]
    split, pred_split = evaluate(task, structures, batch_size=100, budget=budget)
    alone, pred_alone = evaluate(task, structures, batch_size=1)
    assert split.keys() == alone.keys() and "forces_mae" in split
    for key in split:
        assert split[key] == pytest.approx(alone[key], rel=1e-6, abs=1e-9), key
    assert torch.allclose(pred_split["energy"], pred_alone["energy"], rtol=1e-6, atol=1e-9)


def test_training_refuses_a_batch_size_that_does_not_fit_before_the_run_folder(tmp_path):
    from frameavg.training.run import train

    config = load_config(None, TINY_MODEL + ETHANOL + [f"run_dir={tmp_path / 'run'}", "data.memory_fraction=1e-9"])
    with pytest.raises(ConfigError, match=r"^data\.batch_size=32: .* needs an estimated"):
        train(config)
    assert not (tmp_path / "run").exists()


def test_validation_batches_are_cut_by_the_budget_below_eval_batch_size():
    from frameavg.training.data_module import AtomisticDataModule
    from frameavg.training.module import AtomisticTask

    from frameavg.training.config import load_run_config

    config = load_run_config(None, TINY_MODEL + ETHANOL + ["data.val_fraction=0.2", "data.eval_batch_size=8"])
    data = AtomisticDataModule(config.data, config.targets)
    data.setup("fit")
    assert [b.num_graphs for b in data.val_dataloader()][:2] == [8, 8]  # no budget: by count
    net = AtomisticTask(config).net
    data.check_budgets(net)  # this machine holds far more than these molecules
    budget = MemoryBudget.for_config(net, config.data, available=1e12)
    data.eval_budget = MemoryBudget(**{**budget.__dict__, "limit": budget.base + 3.5 * budget.cost(data.val_set[0])})
    sizes = [b.num_graphs for b in data.val_dataloader()]
    assert max(sizes) == 3 and sum(sizes) == len(data.val_set)
