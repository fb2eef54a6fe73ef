"""frameavg FAENet on its own: parameter counts, batch independence, element coverage, tags, forces."""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from frameavg.errors import ConfigError, DataError
from frameavg.models import MODELS, FAENet, build_model

from .conftest import PAPER_CONFIGS, to_graph


def small(**overrides) -> FAENet:
    torch.manual_seed(0)
    config = {"hidden_channels": 96, "num_filters": 64, "num_interactions": 2, "tag_hidden_channels": 16,
              "pg_hidden_channels": 16}
    return FAENet(**{**config, **overrides})


@pytest.mark.parametrize("name", sorted(PAPER_CONFIGS))
def test_parameter_counts_are_the_originals(name):
    config, expected = PAPER_CONFIGS[name]
    assert FAENet(**config).num_params == expected


def test_registry_builds_faenet_and_rejects_unknown_names():
    assert MODELS["faenet"] is FAENet
    assert build_model("FAENet", hidden_channels=128).num_params == 394_593
    with pytest.raises(ConfigError, match="faenet"):
        build_model("faenett")
    with pytest.raises(ConfigError, match="hidden_chanels"):
        build_model("faenet", hidden_chanels=3)


@pytest.mark.parametrize("name", ["is2re", "s2ef"])
def test_prediction_does_not_depend_on_the_batch(oc20_atoms, qm9_atoms, name):
    """Paper configs (s2ef: direct forces through a BatchNorm decoder, eval mode)."""
    torch.manual_seed(0)
    model = FAENet(**PAPER_CONFIGS[name][0]).eval()
    structures = oc20_atoms if name == "is2re" else qm9_atoms[:4]
    graphs = [to_graph(a).get_example(0) for a in structures]
    with torch.no_grad():
        alone = [model(Batch.from_data_list([g])) for g in graphs]
        together = model(Batch.from_data_list(graphs))
        reordered = model(Batch.from_data_list(graphs[::-1]))
    energy_alone = torch.cat([p["energy"] for p in alone])
    torch.testing.assert_close(together["energy"], energy_alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reordered["energy"], energy_alone.flip(0), rtol=1e-5, atol=1e-5)
    if "forces" in together:
        torch.testing.assert_close(together["forces"], torch.cat([p["forces"] for p in alone]), rtol=1e-5, atol=1e-5)


def test_per_graph_graph_norm_holds_in_training_mode(qm9_atoms):
    """Without batch-norm decoders, training-mode outputs are batch independent too."""
    model = small(mp_type="updownscale_base").train()
    graphs = [to_graph(a).get_example(0) for a in qm9_atoms]
    together = model(Batch.from_data_list(graphs))["energy"]
    alone = torch.cat([model(Batch.from_data_list([g]))["energy"] for g in graphs])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_lanthanides_actinides_and_heavy_elements_work(oc20_atoms):
    model = small().eval()
    crystals = {"Ce": bulk("Ce"), "Gd": bulk("Gd"), "Lu": bulk("Lu"), "Ac": bulk("Ac"), "Th": bulk("Th")}
    energies = {}
    with torch.no_grad():
        for symbol, atoms in crystals.items():
            energies[symbol] = model(to_graph(atoms.repeat((2, 2, 2))))["energy"].item()
        slab = oc20_atoms[0]
        adsorbate = slab.get_tags() == 2
        for z in range(85, 101):
            heavy = slab.copy()
            numbers = heavy.numbers.copy()
            numbers[adsorbate] = z
            heavy.numbers = numbers
            energies[z] = model(to_graph(heavy))["energy"].item()
    values = torch.tensor(list(energies.values()))
    assert torch.isfinite(values).all()
    # Heavy elements share one learned row but differ by period, group and properties.
    assert len({round(v, 6) for v in values.tolist()}) == len(values)


def test_max_atomic_number_gives_heavy_elements_their_own_rows():
    assert FAENet(max_atomic_number=100).num_params == 394_593 + 16 * 18
    with pytest.raises(ConfigError, match="max_atomic_number"):
        FAENet(max_atomic_number=101)


def test_missing_tags_mean_no_tag_input(oc20_atoms):
    model = small(tag_hidden_channels=16).eval()
    with_tags, without = to_graph(oc20_atoms[2]), to_graph(oc20_atoms[2], with_tags=False)
    assert "tags" not in without
    with torch.no_grad():
        energy_without = model(without)["energy"]
        model.embed_block.tag_embedding.weight.zero_()
        energy_zero_tag = model(with_tags)["energy"]
    torch.testing.assert_close(energy_without, energy_zero_tag, rtol=0, atol=1e-6)


def test_model_builds_the_graph_when_the_batch_has_none(oc20_atoms):
    model = small(cutoff=6.0, max_num_neighbors=40).eval()
    graph = to_graph(oc20_atoms[0], cutoff=6.0, max_neighbors=40)
    bare = graph.clone()
    del bare.edge_index, bare.cell_offsets
    with torch.no_grad():
        torch.testing.assert_close(model(bare)["energy"], model(graph)["energy"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forces_from_energy_are_minus_the_gradient(qm9_atoms, dtype):
    model = small(regress_forces="from_energy").to(dtype).eval()
    graph = to_graph(qm9_atoms[3], dtype=dtype)
    with torch.no_grad():  # forces still come out: the model enables autograd where it needs it
        forces = model(graph)["forces"]
    assert forces.shape == (graph.num_nodes, 3) and forces.dtype == dtype
    pos = graph.pos.clone().requires_grad_(True)
    graph.pos = pos
    (grad,) = torch.autograd.grad(model(graph)["energy"].sum(), pos)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(forces, -grad, rtol=tol, atol=tol)
    # Forces sum to zero (translation invariance of a molecule's energy).
    assert forces.sum(0).abs().max() < (1e-4 if dtype == torch.float32 else 1e-10)


def test_training_step_with_gradient_target(oc20_atoms):
    """direct_with_gradient_target: one backward through energy, forces and the detached target."""
    model = small(regress_forces="direct_with_gradient_target", energy_head="weighted-av-final-embeds").train()
    batch = Batch.from_data_list([to_graph(a).get_example(0) for a in oc20_atoms[:2]])
    out = model(batch)
    assert out["energy"].shape == (2,) and out["forces"].shape == out["gradient_forces"].shape
    loss = out["energy"].square().mean() + (out["forces"] - out["gradient_forces"]).square().mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert "gradient_forces" not in model(batch)
        assert "gradient_forces" in model(batch, compute_gradient_forces=True)


def test_bad_inputs_and_configs_raise_clear_errors(qm9_atoms):
    model = small().eval()
    graph = to_graph(qm9_atoms[0])
    bad = graph.clone()
    bad.atomic_numbers = bad.atomic_numbers.clone()
    bad.atomic_numbers[0] = 101
    with pytest.raises(DataError, match="1..100"):
        model(bad)
    bad = graph.clone()
    bad.tags = torch.full_like(bad.tags, 3)
    with pytest.raises(DataError, match="tags"):
        model(bad)
    for kwargs, pattern in (
        (dict(mp_type="att"), "mp_type"),
        (dict(skip_co="mean"), "skip_co"),
        (dict(energy_head="graclus"), "energy_head"),
        (dict(regress_forces=True), "regress_forces"),
        (dict(regress_forces="direct", force_decoder_type="transformer"), "force_decoder_type"),
        (dict(regress_forces="direct", force_decoder_model_config={"norm": "group"}), "norm"),
        (dict(act="swishh"), "activation"),
        (dict(hidden_channels=96, pg_hidden_channels=48), "hidden_channels"),
    ):
        with pytest.raises(ConfigError, match=pattern):
            FAENet(**kwargs)


def test_flat_force_decoder_config_works_unlike_the_original_default(qm9_atoms):
    """faenet 0.1.3's own default (direct forces, {"hidden_channels": 128}) fails; ours runs."""
    model = FAENet(regress_forces="direct").eval()
    assert model.decoder.model[0].out_features == 128
    assert isinstance(model.decoder.model[1], torch.nn.BatchNorm1d)
    with torch.no_grad():
        assert model(to_graph(qm9_atoms[0]))["forces"].shape == (len(qm9_atoms[0]), 3)


@pytest.mark.slow
def test_torch_compile_gives_the_eager_outputs(qm9_atoms, monkeypatch):
    """torch.compile(dynamic=True): energy-gradient forces at inference, and a training step of the
    S2EF mode (direct forces + energy-gradient target) give the eager outputs, and the training
    loss backpropagates. The gradient-target pass keeps the graph for the loss backward, which
    needs AOTAutograd's donated buffers off (docs/faenet.md)."""
    import torch._functorch.config as functorch_config

    monkeypatch.setattr(functorch_config, "donated_buffer", False)
    batch = Batch.from_data_list([to_graph(a).get_example(0) for a in qm9_atoms[:4]])
    torch._dynamo.reset()
    try:
        model = small(regress_forces="from_energy", tag_hidden_channels=0).eval()
        with torch.no_grad():
            eager, out = model(batch.clone()), torch.compile(model, dynamic=True)(batch.clone())
        for key in ("energy", "forces"):
            torch.testing.assert_close(out[key], eager[key], rtol=1e-5, atol=1e-5)

        model = small(regress_forces="direct_with_gradient_target", tag_hidden_channels=0,
                      force_decoder_type="mlp").train()
        eager, out = model(batch.clone()), torch.compile(model, dynamic=True)(batch.clone())
        for key in ("energy", "forces", "gradient_forces"):
            torch.testing.assert_close(out[key], eager[key], rtol=1e-5, atol=1e-5)
        loss = out["energy"].square().sum() + (out["forces"] - out["gradient_forces"]).square().sum()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
    finally:
        torch._dynamo.reset()
