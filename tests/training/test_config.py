import pytest

from frameavg.errors import ConfigError
from frameavg.training.config import DEFAULTS, load_config, parse_overrides


def test_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: faenet, hidden_channels: 64}\noptim: {lr: 0.01}\ndata: {keys: {energy: U0}}\n")
    config = load_config(path, ["optim.lr=2e-3", "--trainer.strategy", "ddp", "data.batch_size=8"])
    assert config["model"] == {"name": "faenet", "hidden_channels": 64}
    assert config["optim"]["lr"] == pytest.approx(2e-3)
    assert config["trainer"]["strategy"] == "ddp"
    assert config["data"]["batch_size"] == 8 and config["data"]["keys"] == {"energy": "U0"}
    assert config["loss"] == DEFAULTS["loss"]  # untouched sections keep their defaults


def test_unknown_key_suggests_close_match(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {learning_rate: 0.1, lr: 1}\n")
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate'"):
        load_config(path)
    with pytest.raises(ConfigError, match="did you mean 'data.batch_size'"):
        load_config(None, ["data.batchsize=3"])
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        load_config(None, ["optimm.lr=3"])


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["lr"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(None, ["optim=3"])


def test_yaml_exponent_numbers_are_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 1e-3}\n")
    assert load_config(path)["optim"]["lr"] == pytest.approx(1e-3)
    path.write_text("optim: {lr: fast}\n")
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(path)
