"""Noisy Nodes: noise on free atoms only, seeded and resumable, never at evaluation; equivariant
denoising heads; pre-trained weights into a fine-tuning run; config errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import read_structures
from frameavg.data.neighbors import RadiusGraph, radius_graph_batch, NeighborSettings
from frameavg.errors import ConfigError
from frameavg.evaluation.symmetry import transform_structure
from frameavg.frames.averaging import FrameAveraging
from frameavg.models import build_model
from frameavg.outputs import DENOISING
from frameavg.training.config import load_config
from frameavg.training.denoising import DenoiseSettings, denoising_loss, new_generator, noised_batch
from frameavg.training.module import AtomisticTask
from frameavg.training.run import train
from tiny import ETHANOL, TINY_MODEL

CUTOFF = 5.0


def slabs(dtype=torch.float32):
    return [RadiusGraph(CUTOFF)(d) for d in read_structures("shipped:oc20_is2re/bs3", dtype=dtype)]


def test_noise_lands_only_on_free_atoms_and_the_graph_is_rebuilt():
    batch = Batch.from_data_list(slabs())
    settings = DenoiseSettings(mode="noisy_nodes", sigma=0.3)
    original = batch.pos.clone()
    noised = noised_batch(batch, settings, new_generator(settings), NeighborSettings(CUTOFF))
    fixed = batch.fixed.bool()
    assert bool(fixed.any()) and bool((~fixed).any())
    moved = (noised.batch.pos - batch.pos).norm(dim=-1)
    assert torch.equal(moved[fixed], torch.zeros_like(moved[fixed]))  # fixed atoms never move
    assert bool((moved[~fixed] > 0).all())
    assert torch.equal(batch.pos, original)  # the caller's batch is untouched
    # the target is eps / sigma on the moved atoms: unit variance
    assert torch.allclose(noised.target * settings.sigma, noised.batch.pos - batch.pos, atol=1e-6)
    assert abs(float(noised.target[~fixed].std()) - 1.0) < 0.15
    assert torch.equal(noised.mask, ~fixed)
    edge_index, _, neighbors = radius_graph_batch(noised.batch, CUTOFF)
    assert torch.equal(noised.batch.edge_index, edge_index) and torch.equal(noised.batch.neighbors, neighbors)
    # per-edge fields still read as per edge: frame averaging runs on the noised batch
    model = FrameAveraging(build_model("faenet", hidden_channels=32, num_filters=16, num_gaussians=8,
                                       num_interactions=1, pg_hidden_channels=8, phys_embeds=False, tag_hidden_channels=8),
                                 "2D", "all", cutoff=CUTOFF)
    assert model.eval()(noised.batch)["energy"].shape == (batch.num_graphs,)


def test_corrupt_ratio_prob_and_the_relaxed_target():
    batch = Batch.from_data_list(slabs())
    free = ~batch.fixed.bool()
    half = DenoiseSettings(mode="noisy_nodes", corrupt_ratio=0.5)
    noised = noised_batch(batch, half, new_generator(half), NeighborSettings(CUTOFF))
    fraction = float(noised.mask.sum()) / float(free.sum())
    assert 0.3 < fraction < 0.7 and not bool((noised.mask & ~free).any())
    never = DenoiseSettings(mode="noisy_nodes", prob=1e-9)
    assert noised_batch(batch, never, new_generator(never), NeighborSettings(CUTOFF)) is None
    relaxed = DenoiseSettings(mode="noisy_nodes", target="relaxed")
    noised = noised_batch(batch, relaxed, new_generator(relaxed), NeighborSettings(CUTOFF))
    assert torch.allclose(noised.target, batch.pos_relaxed - noised.batch.pos)
    assert torch.equal(noised.mask, free)
    assert float(denoising_loss(noised.target, noised)) == 0.0


def test_the_noise_is_seeded_and_its_stream_survives_a_checkpoint():
    batch = Batch.from_data_list(slabs())
    settings = DenoiseSettings(mode="noisy_nodes", seed=7)
    first = noised_batch(batch, settings, new_generator(settings), NeighborSettings(CUTOFF))
    again = noised_batch(batch, settings, new_generator(settings), NeighborSettings(CUTOFF))
    assert torch.equal(first.batch.pos, again.batch.pos)
    config = load_config(None, TINY_MODEL + ETHANOL + ["denoise.mode=noisy_nodes", "denoise.seed=7"])
    task = AtomisticTask(config)
    noised_batch(batch, task.denoise, task.noise_generator, NeighborSettings(CUTOFF))  # advance
    saved = {}
    task.on_save_checkpoint(saved)
    expected = noised_batch(batch, task.denoise, task.noise_generator, NeighborSettings(CUTOFF))
    resumed = AtomisticTask(config)
    resumed.on_load_checkpoint(saved)
    drawn = noised_batch(batch, resumed.denoise, resumed.noise_generator, NeighborSettings(CUTOFF))
    assert torch.equal(drawn.batch.pos, expected.batch.pos)


@pytest.mark.parametrize("name, frames", [("faenet", "3D"), ("painn", None), ("schnet", None)])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_denoising_heads_are_equivariant(name, frames, dtype, atol):
    torch.manual_seed(0)
    small = {"faenet": dict(hidden_channels=64, num_filters=32, num_gaussians=16, num_interactions=2,
                            pg_hidden_channels=8, phys_embeds=False, tag_hidden_channels=0),
             "painn": dict(hidden_channels=32, num_interactions=2),
             "schnet": dict(hidden_channels=32, num_filters=32, num_interactions=2)}[name]
    model = build_model(name, denoising_head=True, regress_forces=None, cutoff=CUTOFF, **small)
    if frames:
        model = FrameAveraging(model, frames, "all", cutoff=CUTOFF)
    model = model.to(dtype).train()  # the head predicts in training mode
    molecules = read_structures("shipped:rmd17_ethanol/test", dtype=dtype)[:3]
    rng = np.random.default_rng(0)
    for data in molecules:
        for check in ("rotation", "reflection"):
            moved = transform_structure(data, check, rng)
            prediction = model(Batch.from_data_list([RadiusGraph(CUTOFF)(data.clone())]))[DENOISING]
            rotated = model(Batch.from_data_list([RadiusGraph(CUTOFF)(moved.data)]))[DENOISING]
            rotation = torch.as_tensor(moved.rotation, dtype=dtype)
            expected = prediction[torch.as_tensor(moved.permutation)] @ rotation.T
            scale = float(prediction.abs().max())
            assert scale > 0
            assert float((rotated - expected).abs().max()) <= atol * max(1.0, scale)
    assert DENOISING not in model.eval()(Batch.from_data_list([RadiusGraph(CUTOFF)(molecules[0])]))


def test_noisy_nodes_trains_and_evaluation_never_noises(tmp_path):
    overrides = TINY_MODEL + ETHANOL + [f"run_dir={tmp_path}", "data.max_train=48", "optim.max_epochs=2",
                                        "denoise.mode=noisy_nodes", "denoise.sigma=0.05", "denoise.weight=1.0",
                                        "denoise.weight_final=0.1", "data.test=shipped:rmd17_ethanol/test"]
    result = train(load_config(None, overrides + ["name=a"]))
    again = train(load_config(None, overrides + ["name=b"]))
    assert result["test"] == again["test"]  # seeded: the same noise, the same model
    import csv

    rows = list(csv.DictReader(open(tmp_path / "a" / "logs" / "metrics.csv")))
    weights = [float(r["train/denoising_step"]) for r in rows if r.get("train/denoising_step")]
    assert weights and all(w > 0 for w in weights)
    from frameavg.evaluation.evaluate import evaluate
    from frameavg.training.run import load_task

    task = load_task(result["checkpoint"])
    assert task.denoise.enabled
    state = task.noise_generator.get_state()
    structures = read_structures("shipped:rmd17_ethanol/test")[:8]
    first, pred = evaluate(task, [RadiusGraph(4.0)(d) for d in structures])
    second, pred_again = evaluate(task, [RadiusGraph(4.0)(d) for d in structures])
    assert torch.equal(pred["energy"], pred_again["energy"]) and first == second
    assert torch.equal(task.noise_generator.get_state(), state)  # nothing drawn at evaluation


def test_pretrained_weights_load_into_a_fine_tuning_run(tmp_path):
    base = TINY_MODEL + ETHANOL + [f"run_dir={tmp_path}", "data.max_train=32", "optim.max_epochs=1"]
    pretrained = train(load_config(None, base + ["name=pre", "denoise.mode=noisy_nodes", "targets.energy=false",
                                                 "targets.forces=false"]))
    tuned = train(load_config(None, base + ["name=tune", f"model.init_from={pretrained['checkpoint']}"]))
    record = tuned["init_from"]
    assert any(name.startswith("model.interaction_blocks") for name in record["loaded"])
    assert record["skipped"] and all(name.startswith("model.denoising_head") for name in record["skipped"])
    assert not any(name.startswith("model.interaction_blocks") for name in record["new"])


def test_denoise_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'denoise.sigma'"):
        load_config(None, ["denoise.sigmaa=0.1"])
    with pytest.raises(ConfigError, match="'denoise.mode' must be one of none, noisy_nodes"):
        load_config(None, ["denoise.mode=noisy"])
    with pytest.raises(ConfigError, match="denoise.sigma"):
        load_config(None, ["denoise.mode=noisy_nodes", "denoise.sigma=0"])
    with pytest.raises(ConfigError, match="model 'dimenetpp' has no denoising head"):
        train(load_config(None, ["model.name=dimenetpp", "denoise.mode=noisy_nodes",
                                 "data.train=shipped:rmd17_ethanol/train"]))


def test_pretrain_command_and_mad_per_layer(tmp_path, capsys):
    import json

    import yaml

    from frameavg.cli.main import main

    # QM9 as the README runs it: U0 mapped to the energy, a mapping pre-training drops
    config = load_config(None, TINY_MODEL + [f"run_dir={tmp_path}", "data.train=shipped:qm9_subset",
                                             "data.options={targets: [U0]}", "data.keys={energy: U0}",
                                             "data.max_train=24", "optim.max_epochs=1", "model.num_interactions=3",
                                             "trainer.enable_progress_bar=false", "trainer.threads=1"])
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pretrain", str(path), "--json", "name=pre"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test"] is None
    from frameavg.training.run import load_task

    task = load_task(result["checkpoint"])
    assert task.denoise.enabled and not any(task.config.targets.to_dict().values()) and task.config.data.keys == {}
    assert main(["oversmoothing", "--checkpoint", result["checkpoint"], "--data", "shipped:rmd17_ethanol/test",
                 "--limit", "8", "--json"]) == 0
    mad = json.loads(capsys.readouterr().out)["mad_per_layer"]
    assert len(mad) == 4 and all(0.0 < value < 2.0 for value in mad)
    # the measure itself: identical states have MAD 0, orthogonal ones 1
    from frameavg.evaluation.oversmoothing import graph_mad

    same = torch.ones(4, 8)
    orthogonal = torch.eye(4)
    batch = torch.tensor([0, 0, 0, 0])
    assert float(graph_mad(same, batch, 1)[0]) == pytest.approx(0.0, abs=1e-12)
    assert float(graph_mad(orthogonal, batch, 1)[0]) == pytest.approx(1.0)
