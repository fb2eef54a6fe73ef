"""The typed configuration (``training.config_sections``): one frozen dataclass per section, the
document <-> typed round trip on every shipped config, and the checks across sections."""

import dataclasses
import warnings
from pathlib import Path

import pytest

from frameavg.data.neighbors import NeighborSettings
from frameavg.errors import ConfigError
from frameavg.training.config import DEFAULTS, checkpoint_config, load_config, load_run_config
from frameavg.training.config_sections import RunConfig
from frameavg.training.network import build_network

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
TINY = ["model.hidden_channels=16", "model.num_filters=16", "model.num_gaussians=8", "model.num_interactions=1",
        "model.pg_hidden_channels=4", "model.tag_hidden_channels=4", "model.phys_embeds=false"]


def test_every_key_has_a_rule_a_meaning_and_the_defaults_come_from_the_sections():
    for name, section in RunConfig.SECTIONS.items():
        assert section.section == name
        for item in dataclasses.fields(section):
            assert item.metadata["doc"] and item.metadata["rule"].kind, f"{name}.{item.name}"
        assert DEFAULTS[name] == section().to_dict()
    assert RunConfig().to_dict() == DEFAULTS
    units = {row["key"]: row["unit"] for section in RunConfig.SECTIONS.values() for row in section.describe()}
    assert units["data.cutoff"] == "Å" and units["denoise.sigma"] == "Å" and units["frames.cloud_cutoff"] == "Å"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_round_trips(path):
    typed = load_run_config(path)
    assert RunConfig.from_dict(typed.to_dict()) == typed
    assert typed.to_dict() == load_config(path)
    assert isinstance(typed.data.neighbors, NeighborSettings) and typed.data.neighbors.cutoff == typed.data.cutoff


def test_sections_are_frozen_and_typed_values_are_canonical():
    config = RunConfig.from_dict({"optim": {"max_epochs": 10.0, "lr": "2e-3"}, "trainer": {"gradient_clip_algorithm": "value"}})
    assert config.optim.max_epochs == 10 and isinstance(config.optim.max_epochs, int) and config.optim.lr == 0.002
    assert config.trainer.lightning == {"gradient_clip_algorithm": "value"}  # passed on to Lightning as written
    assert config.to_dict()["trainer"]["gradient_clip_algorithm"] == "value"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.data = None


@pytest.mark.parametrize("document, message", [
    ({"data": {"cutof": 5.0}}, r"unknown config key 'data.cutof'; did you mean 'data.cutoff'\?"),
    ({"optimm": {}}, r"unknown config key 'optimm'; did you mean 'optim'\?"),
    ({"data": {"cutoff": 0}}, r"'data.cutoff' must be > 0"),
    ({"frames": {"cloud_cutoff": -1}}, r"'frames.cloud_cutoff' must be > 0"),
    ({"frames": {"train": "stochastc"}}, r"'frames.train' must be one of .*, got 'stochastc'; did you mean 'stochastic'\?"),
    ({"loss": "mae"}, r"'loss' must be a mapping"),
    ({"optim": {"warmup_steps": 5, "warmup_fraction": 0.1}}, "set one of 'optim.warmup_steps' and"),
    ({"trainer": {"precision": "16-mixed"}}, "16-mixed .* needs a CUDA device but trainer.accelerator is cpu"),
    ({"trainer": {"devices": 0}}, "'trainer.devices' must be a positive integer"),
])
def test_bad_documents_name_the_key(document, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(document)


def test_the_model_cutoff_is_checked_against_the_neighbour_list():
    too_long = RunConfig.from_dict(load_config(None, TINY + ["model.cutoff=6.0", "data.cutoff=5.0"]))
    with pytest.raises(ConfigError, match=r"model.cutoff 6 Å exceeds data.cutoff 5 Å.*set data.cutoff: 6"):
        too_long.check_model()
    # the constructor's default counts when the model section leaves it out (FAENet: 6 Å)
    with pytest.raises(ConfigError, match="model.cutoff 6 Å exceeds data.cutoff 4 Å"):
        RunConfig.from_dict(load_config(None, TINY + ["data.cutoff=4.0"])).check_model()
    with pytest.warns(UserWarning, match="data.cutoff 7 Å is longer than model.cutoff 6 Å"):
        RunConfig.from_dict(load_config(None, TINY + ["data.cutoff=7.0"])).check_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RunConfig.from_dict(load_config(None, TINY + ["model.cutoff=5.0", "data.cutoff=5.0"])).check_model()


def test_frames_are_checked_against_the_model_invariances():
    with pytest.warns(UserWarning, match="'faenet' is not rotation-invariant by construction .* frames.dims is none"):
        RunConfig.from_dict(load_config(None, TINY + ["frames.dims=none"])).check_model()
    with warnings.catch_warnings():  # SchNet is invariant: no frames needed
        warnings.simplefilter("error")
        RunConfig.from_dict(load_config(None, ["model.name=schnet", "model.cutoff=6.0", "frames.dims=none"])).check_model()
    with pytest.raises(ConfigError, match="model 'faenet' has no argument 'hiden_channels'; did you mean 'model.hidden_channels'"):
        RunConfig.from_dict(load_config(None, ["model.hiden_channels=8"])).check_model()


def test_the_periodic_frame_cloud_takes_its_cutoff_from_the_config():
    five = load_config(None, TINY + ["model.cutoff=5.0", "data.cutoff=5.0"])
    assert build_network(five).cutoff == 5.0  # new runs: data.cutoff (was 6 Å whatever the data)
    assert build_network(load_config(None, TINY + ["frames.cloud_cutoff=8.0"])).cutoff == 8.0
    # a checkpoint saved before the key: the 6 Å it was trained with
    saved = {key: value for key, value in five.items()}
    saved["frames"] = {k: v for k, v in five["frames"].items() if k != "cloud_cutoff"}
    assert build_network(checkpoint_config(saved)).cutoff == 6.0

