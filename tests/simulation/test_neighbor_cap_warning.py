"""A potential with a hard neighbour cap warns once, naming the consequence; without a cap, silence."""

from __future__ import annotations

import warnings

import pytest
import torch
from ase.build import bulk

from frameavg.simulation import FrameavgCalculator
from frameavg.simulation.potential import Potential
from frameavg.training.config import load_config
from frameavg.training.run import train
from tiny import ETHANOL, TINY_MODEL


@pytest.fixture(scope="module")
def capped_checkpoint(tmp_path_factory):
    """A one-epoch tiny FAENet trained with a hard cap of 6 neighbours."""
    run_dir = tmp_path_factory.mktemp("runs")
    overrides = TINY_MODEL + ETHANOL + ["data.max_neighbors=6", "data.max_train=16", "data.val_fraction=0.25",
                                        "optim.max_epochs=1", f"run_dir={run_dir}"]
    return train(load_config(None, overrides))["checkpoint"]


def _cap_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "max_neighbors" in str(w.message)]


def test_capped_checkpoint_warns_once_per_potential(capped_checkpoint):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        calc = FrameavgCalculator(capped_checkpoint)
        atoms = bulk("Cu", "fcc", a=3.61).repeat(2)
        atoms.calc = calc
        for step in range(3):  # repeated evaluations add no warning
            atoms.positions[0, 0] += 0.01
            atoms.get_forces()
    messages = _cap_warnings(record)
    assert len(messages) == 1
    assert "caps neighbours at 6" in messages[0] and "(k+1)-th neighbours (k = 6) swap" in messages[0]
    assert "MD will not conserve energy" in messages[0] and "max_neighbors: null" in messages[0]


def test_uncapped_potential_does_not_warn():
    model = torch.nn.Linear(1, 1)  # never evaluated: only the construction is checked
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        Potential(model, cutoff=4.0, max_neighbors=None)
        Potential(model, cutoff=4.0, max_neighbors=12)
    messages = _cap_warnings(record)
    assert len(messages) == 1 and "caps neighbours at 12" in messages[0]


def test_the_potential_keeps_its_checkpoint_s_neighbour_settings_and_the_old_frames_keyword(capped_checkpoint):
    """``Potential.from_checkpoint`` builds its graphs from the checkpoint's ``data.neighbors``;
    ``frames=`` (the old name of ``frame_method``) still selects the evaluation frame method."""
    from frameavg.training.checkpoint_io import load_trained_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the cap's own warning
        with pytest.warns(FutureWarning, match="frames= is deprecated; write frame_method="):
            potential = Potential.from_checkpoint(capped_checkpoint, frames="det")
    assert potential.neighbors == load_trained_model(capped_checkpoint).config.data.neighbors
    assert (potential.cutoff, potential.max_neighbors) == (potential.neighbors.cutoff, 6)
    assert potential.net.eval_spec.name == "det"
