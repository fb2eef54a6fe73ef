"""Original FAENet checkpoints -> frameavg: `frameavg convert-checkpoint` and the loaders."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import yaml

from frameavg.cli.main import main
from frameavg.errors import ConfigError
from frameavg.models import FAENet
from frameavg.models.faenet_checkpoint import load_converted, load_original_state_dict, normalise_original_config

from .conftest import PAPER_CONFIGS, to_graph

IS2RE = PAPER_CONFIGS["is2re"][0]
# What the authors' OCP fork stores as model attributes besides the faenet arguments.
OCP_EXTRAS = dict(name="faenet", use_pbc=True, graph_rewiring="", edge_embed_type="all_rij", att_heads=1,
                  dropout_lin=0.0, dropout_edge=0.0, first_trainable_layer="", max_num_neighbors=40,
                  regress_forces="")


@pytest.fixture(scope="module")
def original_is2re(original_faenet):
    torch.manual_seed(7)
    return original_faenet.FAENet(**IS2RE).eval()


def ocp_checkpoint(original, path):
    state = {f"module.module.{k}": v for k, v in original.state_dict().items()}
    torch.save({"state_dict": state, "config": {"model": {**IS2RE, **OCP_EXTRAS}, "optim": {"lr_initial": 2e-3}},
                "epoch": 3, "step": 1200}, path)


def test_convert_ocp_checkpoint_round_trip(original_is2re, oc20_atoms, tmp_path, capsys):
    source, target = tmp_path / "ocp.pt", tmp_path / "frameavg.pt"
    ocp_checkpoint(original_is2re, source)
    assert main(["convert-checkpoint", str(source), str(target), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"] == 4_147_731 and report["config"]["mp_type"] == "base"
    model = load_converted(target).eval()
    graph = to_graph(oc20_atoms[1])
    expected = original_is2re(graph.clone(), mode="inference")["energy"].view(-1)
    with torch.no_grad():
        torch.testing.assert_close(model(graph)["energy"], expected, rtol=1e-5, atol=1e-5)
    # The converted file needs no unpickling of code.
    assert torch.load(target, weights_only=True)["format"] == "frameavg.faenet"


def test_bare_state_dict_needs_a_config_file(original_is2re, tmp_path, capsys):
    source, target = tmp_path / "weights.pth", tmp_path / "out.pt"
    torch.save(original_is2re.state_dict(), source)
    assert main(["convert-checkpoint", str(source), str(target)]) == 1
    assert "pass --config" in capsys.readouterr().err
    config = tmp_path / "faenet.yaml"
    config.write_text(yaml.safe_dump(IS2RE))
    assert main(["convert-checkpoint", str(source), str(target), "--config", str(config)]) == 0
    assert load_converted(target).num_params == 4_147_731


def test_mismatched_config_and_unsafe_files_are_refused(original_is2re, tmp_path, capsys):
    source = tmp_path / "weights.pth"
    torch.save(original_is2re.state_dict(), source)
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({**IS2RE, "hidden_channels": 256}))
    assert main(["convert-checkpoint", str(source), str(tmp_path / "x.pt"), "--config", str(wrong)]) == 1
    assert "does not match the configuration" in capsys.readouterr().err
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": original_is2re.state_dict(), "args": argparse.Namespace(lr=1)}, unsafe)
    assert main(["convert-checkpoint", str(unsafe), str(tmp_path / "y.pt"), "--config", str(wrong)]) == 1
    assert "weights-only" in capsys.readouterr().err
    assert main(["convert-checkpoint", str(tmp_path / "absent.pt"), str(tmp_path / "z.pt")]) == 1


def test_ocp_fork_variants_beyond_the_original_are_rejected():
    assert normalise_original_config({"model": {**IS2RE, **OCP_EXTRAS}}) == {**IS2RE, "max_num_neighbors": 40,
                                                                             "regress_forces": ""}
    with pytest.raises(ConfigError, match="edge_embed_type"):
        normalise_original_config({**IS2RE, "edge_embed_type": "sh"})
    with pytest.raises(ConfigError, match="graph_rewiring"):
        normalise_original_config({**IS2RE, "graph_rewiring": "remove-tag-0"})
    with pytest.raises(ConfigError, match="unknown FAENet configuration key 'hiden_channels'"):
        normalise_original_config({"hiden_channels": 3})


def test_from_original_state_dict_into_a_model_with_heavy_element_rows(original_is2re, oc20_atoms):
    model = load_original_state_dict(original_is2re.state_dict(), dict(IS2RE, max_atomic_number=100)).eval()
    assert model.embed_block.emb.weight.shape[0] == 101
    graph = to_graph(oc20_atoms[0])
    expected = original_is2re(graph.clone(), mode="inference")["energy"].view(-1)
    with torch.no_grad():
        torch.testing.assert_close(model(graph)["energy"], expected, rtol=1e-5, atol=1e-5)
