"""SchNet on our periodic edges: PyG's energies and forces with the same weights, symmetry on real
molecules and OC20 slabs, periodic images, errors and a short training run."""

from __future__ import annotations


import pytest
import torch
from torch_geometric.nn.models import SchNet as PygSchNet

from frameavg.errors import ConfigError, DataError
from frameavg.evaluation.testing import assert_batch_independent, assert_symmetric
from frameavg.models import MODELS, build_model
from frameavg.models.schnet import EQUAL_WIDTH_CONFIG, PAPER_CONFIG, SchNet

from .baselines import (all_pairs_within, as_batch, assert_frame_averaging_changes_nothing, assert_rejects_bad_atoms,
                        assert_supercell_extensive, molecules, randomize_, slabs, train_epoch_losses)

SMALL = dict(hidden_channels=64, num_filters=64, num_interactions=3, num_gaussians=25, cutoff=5.0)
#: Symmetry tolerances: |error| <= atol, or relative to |E| (energies) / the largest force norm
#: (forces) <= rtol. The randomised test models give energies up to ~60 eV and forces up to ~10 eV/Å.
SYMMETRY_TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-10, rtol=0.0)}


def small(dtype=torch.float32, **overrides) -> SchNet:
    torch.manual_seed(0)
    return randomize_(SchNet(**{**SMALL, **overrides})).to(dtype).eval()


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float64, 1e-10, 0.0), (torch.float32, 1e-5, 1e-6)])
def test_same_weights_give_the_energies_and_forces_of_pyg_schnet(real_data, dtype, atol, rtol):
    """PyG's own ``SchNet.forward`` on all pairs within the 5 Å cutoff; ours on a 6 Å neighbour
    list (the longer edges must be ignored). Energies here are 2-60 eV; measured differences:
    float64 ~1e-14 eV, float32 ~1e-5 eV (2e-7 relative, the float32 rounding of the sum)."""
    model = small(dtype)
    reference = PygSchNet(**{k: v for k, v in SMALL.items()},
                          interaction_graph=lambda pos, batch: pyg_graph(pos, batch, SMALL["cutoff"])).to(dtype)
    reference.load_state_dict(model.pyg.state_dict())
    batch = as_batch(molecules(real_data, dtype), cutoff=6.0)
    out = model(batch)
    pos = batch.pos.clone().requires_grad_(True)
    energy = reference(batch.atomic_numbers, pos, batch.batch).squeeze(-1)
    (grad,) = torch.autograd.grad(energy.sum(), pos)
    assert energy.abs().min() > 0.1  # a real comparison, not of zeros
    torch.testing.assert_close(out["energy"].detach(), energy.detach(), atol=atol, rtol=rtol)
    torch.testing.assert_close(out["forces"], -grad, atol=10 * atol, rtol=rtol)


def pyg_graph(pos, batch, cutoff):
    """What PyG's ``RadiusInteractionGraph`` returns, without torch_cluster."""
    edge_index = all_pairs_within(pos.detach(), batch, cutoff)
    row, col = edge_index
    return edge_index, (pos[row] - pos[col]).norm(dim=-1)


def test_configs_have_pygs_parameters():
    """The paper (OCP OC20 IS2RE) and equal-width models have exactly PyG SchNet's parameters."""
    for config, count in ((PAPER_CONFIG, 1_216_385), (EQUAL_WIDTH_CONFIG, 310_913)):
        model = build_model("schnet", **config)
        sizes = {k: v.shape for k, v in model.pyg.state_dict().items()}
        pyg_args = {k: v for k, v in config.items() if k not in ("max_neighbors", "regress_forces")}
        assert sizes == {k: v.shape for k, v in PygSchNet(**pyg_args).state_dict().items()}
        assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_energy_invariant_and_forces_equivariant(real_data, dtype):
    """Rotations, reflections, translations, permutations, periodic images and cell choices, on
    molecules and OC20 slabs (65 and 24 atoms, 20 neighbours). Measured max errors: float32
    4e-5 eV and 2e-4 eV/Å (2e-5 relative), float64 ~1e-13 eV and eV/Å."""
    model = small(dtype)
    assert_symmetric(model, molecules(real_data, dtype), cutoff=5.0, **SYMMETRY_TOL[dtype])
    assert_symmetric(model, slabs(real_data, dtype)[::2], cutoff=5.0, max_neighbors=20, **SYMMETRY_TOL[dtype])
    assert_batch_independent(model, molecules(real_data, dtype) + slabs(real_data, dtype, 1), cutoff=5.0,
                             atol=SYMMETRY_TOL[dtype]["atol"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_frame_averaging_around_schnet_stays_invariant_and_changes_nothing(real_data, dtype):
    assert_frame_averaging_changes_nothing(small(dtype), real_data, dtype, SYMMETRY_TOL[dtype])


def test_periodic_images_supercell_is_extensive(real_data):
    """A 6-atom bulk oxide whose atoms see several images of each other within 5 Å: the 2x2x2
    supercell has 8 times its energy and the same forces per atom."""
    assert_supercell_extensive(small(torch.float64), real_data, atol=1e-10)


def test_bad_inputs_and_configs_raise_clear_errors(real_data):
    model = small()
    batch = assert_rejects_bad_atoms(model, real_data, max_z=99)
    broken = batch.clone()
    broken.pos = broken.pos.clone()
    broken.pos[0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        model(broken)
    with pytest.raises(ConfigError, match="readout"):
        SchNet(readout="max")
    with pytest.raises(ConfigError, match="no direct force head"):
        SchNet(regress_forces="direct")
    with pytest.raises(ConfigError, match="num_blocks"):
        build_model("schnet", num_blocks=3)
    assert MODELS["schnet"] is SchNet
    # a larger table takes heavier elements, initialised like PyG's
    assert SchNet(max_z=100, **SMALL).pyg.embedding.num_embeddings == 101


def test_trains_through_the_workflow_with_its_config(tmp_path):
    """configs/schnet.yaml with a tiny model on 36 ethanol frames: the training loss goes down."""
    _, losses = train_epoch_losses("schnet", ["model.hidden_channels=32", "model.num_filters=32",
                                              "model.num_gaussians=16", "model.num_interactions=2"], tmp_path)
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0]
