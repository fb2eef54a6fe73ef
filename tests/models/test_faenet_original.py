"""frameavg's FAENet against the original ``faenet`` 0.1.3 with the same weights, on real structures."""

from __future__ import annotations

import copy

import pytest
import torch
from torch_geometric.data import Batch

from frameavg.models import FAENet
from frameavg.models.elements import element_table
from frameavg.models.faenet_checkpoint import load_original_state_dict

from .conftest import PAPER_CONFIGS, patch_local_env, to_graph

# Energies: |a - b| <= ATOL + RTOL |b| (absolute term for near-zero energies of random weights).
RTOL, ATOL = 1e-5, 1e-5

OPTION_VARIANTS = {
    "simple": dict(mp_type="simple"),
    "updownscale": dict(mp_type="updownscale"),
    "updown_local_env": dict(mp_type="updown_local_env"),
    "base_no_graph_norm": dict(mp_type="base", graph_norm=False),
    "skip_add": dict(skip_co="add"),
    "skip_concat_atom": dict(skip_co="concat_atom"),
    "initial_embeds_head": dict(energy_head="weighted-av-initial-embeds", complex_mp=True),
    "learned_phys": dict(phys_hidden_channels=8),
    "relu": dict(act="relu", second_layer_MLP=False),
    "from_energy": dict(regress_forces="from_energy"),
    # no second edge layer: distance half of the edge states computed once per edge pair
    "is2re_from_energy": {**PAPER_CONFIGS["is2re"][0], "regress_forces": "from_energy"},
    "res_layer_norm": dict(regress_forces="direct", force_decoder_type="res",
                           force_decoder_model_config={"res": {"hidden_channels": 64, "norm": "layer"}}),
    "res_updown_no_norm": dict(regress_forces="direct", force_decoder_type="res_updown",
                               force_decoder_model_config={"res_updown": {"hidden_channels": 64, "norm": ""}}),
    "simple_decoder": dict(regress_forces="direct", force_decoder_type="simple",
                           force_decoder_model_config={"simple": {"hidden_channels": 64}}),
}
ALL_CONFIGS = {**{k: v[0] for k, v in PAPER_CONFIGS.items()}, **OPTION_VARIANTS}


def pair(original_faenet, config, seed=0):
    torch.manual_seed(seed)
    original = patch_local_env(original_faenet.FAENet(**config))
    ours = load_original_state_dict(original.state_dict(), config)
    return original, ours


def assert_same(original_preds, ours_preds, check_forces=True):
    torch.testing.assert_close(ours_preds["energy"], original_preds["energy"].view(-1), rtol=RTOL, atol=ATOL)
    if check_forces and original_preds.get("forces") is not None:
        torch.testing.assert_close(ours_preds["forces"], original_preds["forces"], rtol=1e-5, atol=1e-5)


def test_element_normalisation_is_the_originals(original_faenet):
    physics = original_faenet.embedding.PhysEmbedding(props=True, pg=True)
    table = element_table()
    assert physics.properties_list == list(table.property_names) and physics.n_properties == 14
    torch.testing.assert_close(physics.properties, table.properties[:86].float(), rtol=0, atol=1e-6)
    assert torch.equal(physics.period, table.period) and torch.equal(physics.group, table.group)
    assert (physics.period_size, physics.group_size) == (7, 19)


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_parameter_count_and_names_match_original(original_faenet, name):
    config, expected = PAPER_CONFIGS[name]
    original, ours = pair(original_faenet, config)
    assert original.num_params == ours.num_params == expected
    theirs = {k: tuple(p.shape) for k, p in original.named_parameters()}
    mine = {k: tuple(p.shape) for k, p in ours.named_parameters()}
    renamed = {"embed_block.phys_emb.properties": "embed_block.phys_properties"}
    assert {renamed.get(k, k): v for k, v in theirs.items()} == mine


@pytest.mark.parametrize("name", sorted(ALL_CONFIGS))
def test_single_graph_outputs_match_original(original_faenet, oc20_atoms, qm9_atoms, name):
    config = ALL_CONFIGS[name]
    original, ours = pair(original_faenet, config)
    original.eval(), ours.eval()
    for atoms in (oc20_atoms[0], qm9_atoms[1]):
        graph = to_graph(atoms)
        expected = original(graph.clone(), mode="inference")
        assert_same(expected, ours(graph.clone()))


def test_float64_outputs_match_to_rounding(original_faenet, qm9_atoms):
    config = PAPER_CONFIGS["qm9"][0]
    original, ours = pair(original_faenet, config)
    original.double().eval(), ours.double().eval()
    graph = to_graph(qm9_atoms[2], dtype=torch.float64)
    expected = original(graph.clone(), mode="inference")["energy"].view(-1)
    torch.testing.assert_close(ours(graph.clone())["energy"], expected, rtol=1e-11, atol=1e-11)


def test_training_mode_gradient_target_matches_original(original_faenet, qm9_atoms):
    """direct_with_gradient_target in training: direct forces and -dE/dpos as the original's."""
    config = PAPER_CONFIGS["s2ef"][0]
    original, ours = pair(original_faenet, config)
    original.train(), ours.train()
    graph = to_graph(qm9_atoms[4])
    expected = original(graph.clone(), mode="train")
    got = ours(graph.clone())
    assert_same(expected, got)
    torch.testing.assert_close(got["gradient_forces"], expected["forces_grad_target"], rtol=1e-5, atol=1e-5)
    assert not got["gradient_forces"].requires_grad and got["forces"].requires_grad


@pytest.mark.slow
def test_original_is_batch_dependent_and_ours_is_not(original_faenet, oc20_atoms):
    """The documented difference: the original's GraphNorm mixes the graphs of a batch."""
    original, ours = pair(original_faenet, PAPER_CONFIGS["default"][0])
    original.eval(), ours.eval()
    graphs = [to_graph(a) for a in oc20_atoms]
    batch = Batch.from_data_list([g.get_example(0) for g in graphs])
    alone_original = torch.cat([original(g.clone(), mode="inference")["energy"].view(-1) for g in graphs])
    batched_original = original(batch.clone(), mode="inference")["energy"].view(-1)
    batched_ours = ours(batch.clone())["energy"]
    torch.testing.assert_close(batched_ours, alone_original, rtol=RTOL, atol=ATOL)
    assert (batched_original - alone_original).abs().max() > 1e-3


def test_original_state_dict_survives_prefixes_and_deepcopy(original_faenet, qm9_atoms):
    config = PAPER_CONFIGS["default"][0]
    original, _ = pair(original_faenet, config, seed=3)
    wrapped = {f"module.module.{k}": v for k, v in copy.deepcopy(original.state_dict()).items()}
    ours = load_original_state_dict(wrapped, config)
    original.eval(), ours.eval()
    graph = to_graph(qm9_atoms[0])
    assert_same(original(graph.clone(), mode="inference"), ours(graph.clone()))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qm9", "is2re", "s2ef"])
def test_training_gradients_match_original(original_faenet, qm9_atoms, name):
    """Parameter gradients of one training step equal the original's (fused backward included).

    float64, so that the comparison sees the math and not float32 rounding of long sums."""
    config = PAPER_CONFIGS[name][0]
    original, ours = pair(original_faenet, config)
    original.double().train(), ours.double().train()
    graph = to_graph(qm9_atoms[5], dtype=torch.float64)
    expected = original(graph.clone(), mode="train")
    got = ours(graph.clone())
    for preds in (expected, got):
        loss = preds["energy"].square().sum()
        if "forces" in preds and preds["forces"] is not None:
            loss = loss + preds["forces"].square().sum()
        loss.backward()
    theirs = dict(original.named_parameters())
    renamed = {"embed_block.phys_properties": "embed_block.phys_emb.properties"}
    for key, parameter in ours.named_parameters():
        reference = theirs[renamed.get(key, key)].grad
        if reference is None:
            assert parameter.grad is None or not parameter.grad.any(), key
            continue
        scale = reference.abs().max().clamp(min=1e-3)
        torch.testing.assert_close(parameter.grad / scale, reference / scale, rtol=0, atol=1e-9, msg=key)
