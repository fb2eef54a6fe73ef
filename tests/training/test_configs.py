"""Every config in configs/ loads and builds; paper configs have the paper's parameter counts;
the configs on real data train for a step on the data they name."""

from pathlib import Path

import pytest

from frameavg.training.config import load_config
from frameavg.training.module import AtomisticTask
from frameavg.training.run import train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PAPER_PARAMETERS = {"is2re": 4_147_731, "qm9": 6_494_673, "s2ef": 5_742_485}
SMALL_MODEL = ["model.hidden_channels=64", "model.num_filters=16", "model.num_gaussians=8",
               "model.num_interactions=1", "optim.max_epochs=1", "trainer.enable_progress_bar=false",
               "data.max_train=8", "data.batch_size=4", "trainer.log_every_n_steps=1"]


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_builds(path):
    config = load_config(path)
    task = AtomisticTask(config)
    params = sum(p.numel() for p in task.parameters())
    if path.stem in PAPER_PARAMETERS:
        assert params == PAPER_PARAMETERS[path.stem]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qm9_subset", "xu_kitchin", "oxides"])
def test_real_data_configs_train(name, tmp_path, monkeypatch):
    """Each config trains on the data it names, from any working directory."""
    monkeypatch.chdir(tmp_path)
    config = load_config(CONFIGS / f"{name}.yaml", SMALL_MODEL + [f"run_dir={tmp_path}"])
    result = train(config)
    assert Path(result["checkpoint"]).is_file()
    if config["data"]["test_fraction"]:  # the test split held out of the training file is evaluated
        assert result["test"]["energy_mae"] > 0
        assert result["test"]["U0_mae_meV"] == pytest.approx(1000 * result["test"]["energy_mae"])
