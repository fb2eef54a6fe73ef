import pytest

from frameavg.errors import ConfigError
from frameavg.training.config import DEFAULTS, load_config, parse_overrides


def test_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: faenet, hidden_channels: 64}\noptim: {lr: 0.01}\ndata: {keys: {energy: U0}}\n")
    config = load_config(path, ["optim.lr=2e-3", "--trainer.strategy", "ddp", "data.batch_size=8"])
    # FAENet's new-run defaults (training.config.NEW_RUN_MODEL_DEFAULTS) join the given keys
    assert config["model"] == {"name": "faenet", "hidden_channels": 64, "envelope": "polynomial", "norm": "layer"}
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


def test_old_frames_key_is_read_as_frames_dims_with_a_warning(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("frames: {frames: 2D, train: se3-stochastic}\n")
    with pytest.warns(FutureWarning, match=r"'frames.frames' is deprecated; write 'frames.dims'"):
        config = load_config(path)
    assert config["frames"] == {"dims": "2D", "train": "se3-stochastic", "eval": "all", "periodic": "lattice",
                                "continuous": True, "canonicalizer": {}, "cloud_cutoff": None}
    with pytest.warns(FutureWarning, match="override: 'frames.frames' is deprecated"):
        assert load_config(None, ["frames.frames=none"])["frames"]["dims"] == "none"
    with pytest.warns(FutureWarning):
        assert load_config(None, ["--frames.frames", "2D", "frames.dims=2D"])["frames"]["dims"] == "2D"
    assert load_config(None, ["frames.dims=none"])["frames"] == {"dims": "none", "train": "stochastic", "eval": "all",
                                                              "periodic": "lattice", "continuous": True,
                                                              "canonicalizer": {}, "cloud_cutoff": None}


def test_old_and_new_frames_keys_that_disagree_are_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("frames: {frames: 2D, dims: 3D}\n")
    with pytest.raises(ConfigError, match=r"'frames.frames' \(the old name of 'frames.dims'\) is '2D' but"):
        load_config(path)
    with pytest.raises(ConfigError, match="keep only 'frames.dims'"):
        load_config(None, ["frames.frames=2D", "frames.dims=3D"])
    with pytest.raises(ConfigError, match="must be one of 3D, 2D, none"):
        load_config(None, ["frames.dims=4D"])


def test_checkpoint_configs_of_earlier_releases_are_upgraded_silently(recwarn):
    from frameavg.training.config import checkpoint_config

    old = {"seed": 0, "frames": {"frames": "2D", "train": "all", "eval": "all"}, "model": {"name": "faenet"}}
    config = checkpoint_config(old, where="old.ckpt")
    # the keys it lacks are what it was trained with: cloud frames of 6 Å, plain frame sets
    assert config.frames.to_dict() == {"dims": "2D", "train": "all", "eval": "all", "periodic": "cloud",
                                       "continuous": False, "canonicalizer": {}, "cloud_cutoff": 6.0}
    assert config.plugins == []
    assert old["frames"]["frames"] == "2D"  # a copy: the checkpoint's dict is untouched
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
    with pytest.raises(ConfigError, match="old.ckpt: cannot import plugin 'no_such_plugin_module'"):
        checkpoint_config({**old, "plugins": ["no_such_plugin_module"]}, where="old.ckpt")


def test_plugins_is_a_list_of_module_names():
    assert DEFAULTS["plugins"] == [] and load_config(None)["plugins"] == []
    assert load_config(None, ["plugins=[json, ' os.path ']"])["plugins"] == ["json", "os.path"]
    with pytest.raises(ConfigError, match=r"'plugins' must be a list of module names.*; write \[json\]"):
        load_config(None, ["plugins=json"])
    for bad in ("plugins=[json, '']", "plugins=[1]", "plugins={a: b}"):
        with pytest.raises(ConfigError, match="'plugins' must be a list of module names"):
            load_config(None, [bad])


def test_data_paths_in_a_config_file_are_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    path = folder / "c.yaml"
    absolute = tmp_path / "elsewhere.xyz"
    path.write_text(f"data: {{train: ../data/train.xyz, val: {absolute}, test: shipped:rmd17_ethanol/test}}\n")
    monkeypatch.chdir(tmp_path)
    data = load_config(path)["data"]
    assert data["train"] == str(tmp_path / "project" / "data" / "train.xyz")
    assert data["val"] == str(absolute) and data["test"] == "shipped:rmd17_ethanol/test"
    path.write_text("data: {train: qm9pack}\n")
    assert load_config(path)["data"]["train"] == "qm9pack"  # a name, not a path
    # an override is the user's command line: relative to the working directory, as written
    assert load_config(path, ["data.train=mine.xyz"])["data"]["train"] == "mine.xyz"


def test_faenet_envelope_and_norm_defaults_for_new_runs_and_saved_configs(tmp_path):
    """New runs get the smooth envelope and LayerNorm; a saved config without the keys (an earlier
    release's checkpoint) rebuilds the model it was trained with; bad values suggest a spelling."""
    from frameavg.training.config import checkpoint_config, validate_model_section

    assert load_config(None, ["model.envelope=cosine"])["model"]["envelope"] == "cosine"
    assert load_config(None, ["model.name=painn"])["model"] == {"name": "painn"}
    saved = checkpoint_config({"model": {"name": "faenet", "hidden_channels": 64}}).model.arguments
    assert saved["envelope"] == "none" and saved["norm"] == "graph"
    kept = checkpoint_config({"model": {"name": "faenet", "envelope": "polynomial", "norm": "layer"}}).model.arguments
    assert kept["envelope"] == "polynomial" and kept["norm"] == "layer"
    with pytest.raises(ConfigError, match="did you mean 'polynomial'"):
        validate_model_section(load_config(None, ["model.envelope=polynomal"]))
    with pytest.raises(ConfigError, match="did you mean 'layer'"):
        validate_model_section(load_config(None, ["model.norm=layr"]))
    with pytest.raises(ConfigError, match="envelope_exponent"):
        validate_model_section(load_config(None, ["model.envelope_exponent=0"]))
