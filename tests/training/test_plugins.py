"""Registries and plugins: register_model, readers of formats outside the catalog, `plugins:`
imports (config, CLI, checkpoints), and checkpoints of earlier releases."""

import textwrap

import pytest
import torch
from torch import nn

from frameavg.cli.main import main
from frameavg.data.readers import available_formats, registry
from frameavg.errors import ConfigError
from frameavg.models import MODELS, FAENet, build_model, register_model
from frameavg.plugins import import_plugins
from frameavg.training.config import load_config, validate_model_section

PLUGIN = '''
import ase
from torch import nn

from frameavg.data.readers.registry import register
from frameavg.models import register_model


@register_model("Plugin-Linear")
class PluginLinear(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.width = width


def sniff(path):
    return path.suffix == ".onexyz"


@register("one-atom", sniff=sniff, description="one atom per file: a symbol", aliases=("single",), options=("z",))
def iterate(path, options):
    atoms = ase.Atoms(path.read_text().strip() or "H", positions=[[0.0, 0.0, 0.0]])
    atoms.info["energy"] = float(options.extra.get("z", 0))
    yield options.to_data(atoms, source=str(path), index=0)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch, forget_plugins):
    """A plugin module on sys.path (name: its module name)."""
    (tmp_path / "frameavg_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "frameavg_test_plugin"


def test_register_model_adds_to_the_registry_once(forget_plugins):
    @register_model("Tiny")
    class Tiny(nn.Module):
        pass

    assert MODELS["tiny"] is Tiny and isinstance(build_model("TINY"), Tiny)
    assert register_model("tiny")(Tiny) is Tiny  # the same class again (a re-imported module): fine
    with pytest.raises(ConfigError, match=r"model 'tiny' is already registered \(.*Tiny\); choose another name"):
        register_model("tiny")(type("Other", (nn.Module,), {}))
    with pytest.raises(ConfigError, match="model 'faenet' is already registered"):
        register_model("faenet")(Tiny)
    other = register_model("tiny", replace=True)(type("Other", (nn.Module,), {}))
    assert MODELS["tiny"] is other and MODELS["faenet"] is FAENet
    with pytest.raises(ConfigError, match="decorates an nn.Module subclass"):
        register_model("function")(lambda: None)
    with pytest.raises(ConfigError, match="non-empty string"):
        register_model(" ")


def test_reader_of_a_new_format_describes_itself(forget_plugins, tmp_path):
    from frameavg.data import detect_format, read_structures

    def sniff(path):
        return path.suffix == ".he"

    with pytest.raises(ConfigError, match="not in catalog.FORMATS: give register"):
        registry.register("helium", sniff=sniff)
    with pytest.raises(ConfigError, match=r"name\(s\) extxyz already taken by reader\(s\) ase"):
        registry.register("helium", sniff=sniff, description="x", aliases=("extxyz",))
    with pytest.raises(ConfigError, match="described in catalog.FORMATS"):
        registry.register("ase", sniff=sniff, description="mine")

    @registry.register("helium", sniff=sniff, description="a helium atom per file", aliases=("He-File",))
    def iterate(path, options):
        import ase

        yield options.to_data(ase.Atoms("He", positions=[[0.0, 0.0, 0.0]]), source=str(path), index=0)

    path = tmp_path / "one.he"
    path.write_text("He\n")
    assert detect_format(path) == "helium"
    assert read_structures(path, format="he-file")[0].atomic_numbers.tolist() == [2]
    assert available_formats()["helium"] == "a helium atom per file"
    with pytest.raises(ConfigError, match="reader 'helium' is already registered"):
        registry.register("helium", sniff=sniff, description="again")(lambda path, options: iter(()))


def test_config_plugins_register_models_and_readers_before_validation(plugin, tmp_path):
    from frameavg.data import read_structures

    with pytest.raises(ConfigError, match="unknown model 'plugin-linear'"):
        validate_model_section(load_config(None, ["model={name: plugin-linear}"]))
    config = load_config(None, [f"plugins=[{plugin}]", "model={name: plugin-linear, width: 3}"])
    validate_model_section(config)
    assert MODELS["plugin-linear"].__module__ == plugin
    with pytest.raises(ConfigError, match="model 'plugin-linear' has no argument 'widht'; did you mean 'model.width'"):
        validate_model_section(load_config(None, [f"plugins=[{plugin}]", "model={name: plugin-linear, widht: 3}"]))
    path = tmp_path / "atom.onexyz"
    path.write_text("O")
    data = read_structures(path, format="single", z=8)[0]
    assert data.atomic_numbers.tolist() == [8] and data.energy.item() == 8.0
    with pytest.raises(ConfigError, match="format 'one-atom' has no option"):
        read_structures(path, zz=8)


def test_plugin_import_errors_are_one_line_config_errors(tmp_path, monkeypatch, capsys, forget_plugins):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"config: cannot import plugin 'broken_plugin' \(RuntimeError: no GPU here\)"):
        import_plugins(["broken_plugin"])
    with pytest.raises(ConfigError, match=r"ModuleNotFoundError: No module named 'no_such_plugin'; is its folder on PYTHONPATH"):
        validate_model_section(load_config(None, ["plugins=[no_such_plugin]"]))
    assert main(["data", "formats", "--plugins", "no_such_plugin"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("frameavg: error: --plugins: cannot import plugin 'no_such_plugin'") and err.count("\n") == 1


def test_cli_plugins_option_lists_the_format(plugin, capsys):
    import json

    assert main(["data", "formats", "--json", "--plugins", plugin]) == 0
    formats = json.loads(capsys.readouterr().out)
    assert formats["one-atom"] == "one atom per file: a symbol" and "ase" in formats


def test_checkpoint_of_an_earlier_release_loads(tmp_path):
    """Checkpoints written before frames.frames became frames.dims rebuild their model."""
    from frameavg.training.module import AtomisticTask
    from frameavg.training.run import load_task
    from tiny import TINY_MODEL

    config = load_config(None, TINY_MODEL + ["frames.dims=2D", "frames.eval=se3-all"])
    state = AtomisticTask(config).state_dict()
    old = {**config, "frames": {"frames": "2D", "train": "stochastic", "eval": "se3-all"}}
    del old["plugins"]
    path = tmp_path / "old.ckpt"
    torch.save({"hyper_parameters": {"config": old}, "state_dict": state}, path)
    task = load_task(path)
    assert task.config.frames.dims == "2D" and task.config.plugins == []
    assert (task.net.eval_spec.dim, task.net.eval_spec.name) == ("2D", "se3-all")


def test_checkpoint_imports_its_plugins(plugin, tmp_path, forget_plugins):
    """A checkpoint trained with a plugin model rebuilds it in a process that never imported it."""
    import sys

    from frameavg.training.module import AtomisticTask
    from frameavg.training.run import load_task

    (tmp_path / "ckpt_plugin.py").write_text(textwrap.dedent('''
        import torch
        from frameavg.models import register_model
        from frameavg.models.base import EnergyModel


        @register_model("ckpt-model")
        class CkptModel(EnergyModel):
            def __init__(self, cutoff: float = 4.0):
                super().__init__(cutoff=cutoff)
                self.scale = torch.nn.Parameter(torch.ones(()))

            def energy(self, inputs, direct_forces):
                distance = inputs.edge_vectors().norm(dim=-1)
                energy = torch.zeros(inputs.num_graphs, dtype=distance.dtype, device=distance.device)
                return energy.index_add(0, inputs.batch[inputs.edge_index[1]], self.scale * distance), None
    '''))
    config = load_config(None, ["plugins=[ckpt_plugin]", "model={name: ckpt-model}", "frames.dims=none"])
    validate_model_section(config)
    task = AtomisticTask(config)
    with torch.no_grad():
        task.net.scale.fill_(2.5)
    path = tmp_path / "plugin.ckpt"
    torch.save({"hyper_parameters": {"config": config}, "state_dict": task.state_dict()}, path)
    forget_plugins()
    assert "ckpt-model" not in MODELS and "ckpt_plugin" not in sys.modules
    loaded = load_task(path)
    assert type(loaded.net).__name__ == "CkptModel" and loaded.net.scale.item() == 2.5
