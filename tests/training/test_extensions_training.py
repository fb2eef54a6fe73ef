"""The study's extensions through the training workflow: FAENet with Ewald blocks and learned frames
trains, saves both in its checkpoint, and `frameavg symmetry` measures the trained model."""

import json

import pytest
import torch
from torch_geometric.data import Batch

from frameavg.cli.main import main
from frameavg.data import read_structures
from frameavg.data.neighbors import RadiusGraph
from frameavg.data.shipped import shipped_path
from frameavg.errors import ConfigError
from frameavg.training.config import load_config
from frameavg.training.run import load_task, train
from tiny import ETHANOL, TINY_MODEL

TINY = TINY_MODEL + ETHANOL + ["data.max_train=24", "data.val_fraction=0.1", "data.batch_size=8",
                               "optim.max_epochs=1", "frames.train=learned", "frames.eval=learned",
                               "model.ewald={num_hidden: 1}"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs")
    return train(load_config(None, TINY + [f"run_dir={run_dir}", "name=extensions"]))


def test_checkpoint_holds_ewald_blocks_and_trained_canonicaliser(trained):
    task = load_task(trained["checkpoint"])
    state = task.net.state_dict()
    assert any(".ewald.down." in name for name in state) and any(name.startswith("canonicalizer.") for name in state)
    assert task.net.eval_spec.name == "learned" and task.net.model.ewald is not None
    assert len(task.net.model.ewald) == 1 and len(task.net.model.ewald[0].residuals) == 1  # the config's


def test_symmetry_command_measures_the_trained_model(trained, capsys):
    data = shipped_path("rmd17_ethanol/test")
    code = main(["symmetry", "--checkpoint", trained["checkpoint"], "--data", str(data), "--limit", "4",
                 "--checks", "rotation,reflection,translation,permutation", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["meta"]["method"] == "learned"
    assert all(check["holds"] and check["energy_abs_max"] < 1e-10 for check in report["checks"])
    # the command evaluates the checkpoint's own canonicaliser: same energies as the task
    from frameavg.cli.symmetry_cmd import build_symmetry_model

    class Args:
        checkpoint, dims, method, seed, cutoff, max_neighbors = trained["checkpoint"], None, None, 0, None, None

    model, *_ = build_symmetry_model(Args, torch.float64)
    task = load_task(trained["checkpoint"]).to(torch.float64).eval()
    structures = [RadiusGraph(4.0)(d) for d in read_structures(data, dtype=torch.float64)[:4]]
    batch = Batch.from_data_list(structures)
    with torch.no_grad():
        torch.testing.assert_close(model(batch)["energy"], task(batch)["energy"], atol=1e-10, rtol=0)
    with pytest.raises(ConfigError, match="learned frames need the canonicaliser"):
        Args.dims = "2D"
        build_symmetry_model(Args, torch.float64)


def test_ewald_typo_in_config_is_a_did_you_mean_error(tmp_path):
    config = load_config(None, TINY + [f"run_dir={tmp_path}", "model.ewald={k_bx: [1, 1, 3]}"])
    with pytest.raises(ConfigError, match="did you mean 'ewald.k_box'"):
        train(config)
