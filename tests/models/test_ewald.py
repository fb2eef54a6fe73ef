"""Ewald message passing (``models.ewald``) in FAENet, SchNet and PaiNN: exact invariances of the
periodic block on real crystals and slabs, rotation invariance of the aperiodic block through
frame averaging, gradients, batching, and bad input."""

from __future__ import annotations

import math

import ase.db
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph
from frameavg.errors import ConfigError, DataError
from frameavg.evaluation.symmetry import model_inputs, symmetry_report, transform_structure
from frameavg.evaluation.testing import assert_symmetric
from frameavg.frames.averaging import FrameAveraging
from frameavg.models import build_model
from frameavg.models.ewald import EwaldSettings, aperiodic_grid, periodic_k_max

from .baselines import molecules as load_molecules
from .baselines import randomize_, slabs

CUTOFF = 5.0
PERIODIC_CHECKS = ("image", "cell", "translation", "permutation", "batch")
SMALL = {
    "faenet": dict(hidden_channels=32, num_filters=32, num_gaussians=16, num_interactions=2, cutoff=CUTOFF,
                   tag_hidden_channels=0, pg_hidden_channels=8, phys_embeds=False),
    "schnet": dict(hidden_channels=32, num_filters=32, num_interactions=2, cutoff=CUTOFF),
    "painn": dict(hidden_channels=32, num_interactions=2, num_rbf=8, cutoff=CUTOFF),
}


def _model(name, dtype=torch.float64, seed=0, **ewald):
    torch.manual_seed(seed)
    model = build_model(name, ewald={"k_box": [2, 2, 3], **ewald}, **SMALL[name])
    # perturbed, so the Ewald path carries weight (its up-projection starts small)
    randomize_(model.ewald, seed=seed, scale=0.1)
    return model.to(dtype).eval()


def _batch(structures):
    """One batch with neighbour lists; tags dropped unless every structure has them (mixed batches)."""
    transform = RadiusGraph(CUTOFF)
    clones = [transform(d.clone()) for d in structures]
    if not all("tags" in d for d in clones):
        for d in clones:
            d.pop("tags", None)
    return Batch.from_data_list(clones)


def _oxides(real_data, count=3, stride=37):
    """Bulk oxide crystals of the EOS set (6-atom cells of different shapes)."""
    rows = list(ase.db.connect(real_data / "oxides_eos" / "oxides.db").select())[::stride][:count]
    return [model_inputs(atoms_to_data(row.toatoms(), dtype=torch.float64)) for row in rows]


@pytest.fixture(scope="module")
def periodic_structures(real_data):
    """3 oxide crystals and 2 OC20 IS2RE slabs (65 and 24 atoms)."""
    three = slabs(real_data, torch.float64, 3)
    return _oxides(real_data) + [three[0], three[2]]


@pytest.fixture(scope="module")
def molecules(real_data):
    """4 QM9 molecules and 2 rMD17 ethanol frames."""
    return load_molecules(real_data, torch.float64)


@pytest.mark.parametrize("name", ["faenet", "schnet", "painn"])
def test_periodic_block_exactly_invariant_float64(periodic_structures, name):
    """Image shifts, unimodular changes of cell basis, translations, permutations and batching
    leave energies (1e-10 relative) and forces unchanged, without frame averaging."""
    model = _model(name)
    report = assert_symmetric(model, periodic_structures, atol=1e-10, rtol=1e-10, forces_atol=1e-9,
                              checks=PERIODIC_CHECKS, cutoff=CUTOFF, seed=1)
    assert {row.check for row in report.rows} == set(PERIODIC_CHECKS)


@pytest.mark.parametrize("name", ["schnet", "painn"])
def test_periodic_block_keeps_baselines_rotation_invariant(periodic_structures, name):
    """k rotates with the cell, so SchNet and PaiNN with periodic Ewald stay E(3)-invariant."""
    model = _model(name, variant="periodic")
    assert_symmetric(model, periodic_structures, atol=1e-10, rtol=1e-10, forces_atol=1e-9,
                     checks=("rotation", "reflection"), cutoff=CUTOFF, seed=2)


def test_periodic_block_invariant_float32(periodic_structures):
    model = _model("faenet", torch.float32)
    structures = [d.clone() for d in periodic_structures]
    for d in structures:
        d.pos, d.cell = d.pos.float(), d.cell.float()
    assert_symmetric(model, structures, rtol=1e-5, atol=1e-5, forces_atol=1e-4,
                     checks=("image", "cell", "translation"), cutoff=CUTOFF, seed=3)


def test_ewald_changes_the_output_and_is_differentiable(periodic_structures):
    """The block is not a no-op, and conservative forces through it match finite differences."""
    model = _model("schnet")
    batch = _batch(periodic_structures[:1])
    with_ewald = model(batch)
    plain = build_model("schnet", **SMALL["schnet"]).double().eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("ewald.")})
    assert abs(float(with_ewald["energy"].detach() - plain(batch)["energy"].detach())) > 1e-3
    pos = batch.pos.clone()
    step = 1e-5
    atom, axis = 1, 2
    energies = []
    for sign in (1, -1):
        moved = batch.clone()
        moved.pos = pos.clone()
        moved.pos[atom, axis] += sign * step
        energies.append(float(model(moved)["energy"]))
    numeric = -(energies[0] - energies[1]) / (2 * step)
    assert math.isclose(float(with_ewald["forces"][atom, axis]), numeric, rel_tol=1e-6, abs_tol=1e-8)


def test_stress_through_ewald_is_independent_of_cell_basis(periodic_structures):
    from frameavg.derivatives import with_derivatives

    model = _model("schnet")
    oxide = periodic_structures[0]
    moved = transform_structure(oxide, "cell", np.random.default_rng(4)).data
    stresses = [with_derivatives(model, _batch([d]), forces=True, stress=True)["stress"] for d in (oxide, moved)]
    assert torch.isfinite(stresses[0]).all()
    torch.testing.assert_close(stresses[0], stresses[1], atol=1e-10, rtol=1e-9)


def test_aperiodic_faenet_with_all_frames_is_rotation_invariant(molecules):
    faenet = _model("faenet", variant="aperiodic", k_cutoff=0.6, delta_k=0.2)
    model = FrameAveraging(faenet, dims="3D", method="all").eval()
    assert_symmetric(model, molecules, atol=1e-10, rtol=1e-10, forces_atol=1e-9,
                     checks=("rotation", "reflection", "translation", "permutation", "batch"),
                     cutoff=CUTOFF, seed=5)


def test_aperiodic_block_sees_orientation_without_frames(molecules):
    """The reason frame averaging is needed: SchNet is invariant, SchNet + aperiodic Ewald is not
    (and says so in its ``invariances``)."""
    plain = build_model("schnet", **SMALL["schnet"]).double().eval()
    ewald = _model("schnet", variant="auto")
    assert "rotation" not in ewald.invariances and "rotation" in plain.invariances
    errors = {}
    for label, model in (("plain", plain), ("ewald", ewald)):
        report = symmetry_report(model, molecules[:4], checks=("rotation", "translation"), cutoff=CUTOFF, seed=6)
        errors[label] = {row.check: row.energy_abs_max for row in report.rows}
    assert errors["plain"]["rotation"] < 1e-10
    assert errors["ewald"]["rotation"] > 1e-6
    assert errors["ewald"]["translation"] < 1e-10


def test_auto_mixes_molecules_and_crystals_in_one_batch(molecules, periodic_structures):
    """variant auto: each graph of a mixed batch gets its own variant, as when evaluated alone."""
    model = _model("faenet")
    structures = [molecules[0], periodic_structures[0], molecules[1], periodic_structures[3]]
    together = model(_batch(structures))["energy"]
    alone = torch.cat([model(_batch([d]))["energy"] for d in structures])
    torch.testing.assert_close(together, alone, atol=1e-10, rtol=1e-10)


def test_periodic_variant_on_a_molecule_is_a_clear_error(molecules, periodic_structures):
    model = _model("faenet", variant="periodic")
    with pytest.raises(DataError, match="structure 1 of the batch has no cell.*variant 'auto'"):
        model(_batch([periodic_structures[0], molecules[0]]))


def test_huge_k_box_is_refused_before_allocating(periodic_structures):
    model = _model("faenet", k_box=[400, 400, 400])
    with pytest.raises(ConfigError, match=r"Ewald k-space too large: .* GiB .*max_memory_gb"):
        model(_batch(periodic_structures[:2]))
    with pytest.raises(ConfigError, match="aperiodic grid"):
        EwaldSettings(k_cutoff=20.0, delta_k=0.01)


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match="did you mean 'ewald.k_box'"):
        build_model("faenet", ewald={"k_bx": [1, 1, 3]})
    with pytest.raises(ConfigError, match="variant"):
        EwaldSettings(variant="spherical")
    with pytest.raises(ConfigError, match="k_box"):
        EwaldSettings(k_box=(1, -1, 2))


def test_k_sets_match_the_reference_sizes():
    """The aperiodic grid of the reference's settings, and about as many lattice vectors as the
    reference's (1, 1, 3) box (31) for an OC20-like slab cell."""
    grid = aperiodic_grid(0.4, 0.2)
    assert grid.shape[0] == 16  # half of the 32 non-zero grid points with |k| <= 0.4, spacing 0.2
    assert bool((grid.norm(dim=-1) <= 0.4 + 1e-12).all())
    cell = torch.tensor([[[11.0, 0.0, 0.0], [5.5, 9.5, 0.0], [0.0, 0.0, 30.0]]], dtype=torch.float64)
    k_max = periodic_k_max(cell, (1, 1, 3))
    reciprocal = 2 * math.pi * torch.linalg.inv(cell[0]).T
    n = torch.cartesian_prod(*[torch.arange(-12, 13, dtype=torch.float64)] * 3)
    inside = int(((n @ reciprocal).norm(dim=-1) <= k_max).sum()) - 1  # without k = 0
    assert 25 <= inside // 2 <= 40


@pytest.mark.parametrize("name", ["faenet", "schnet", "painn"])
def test_ewald_block_sees_an_atom_beyond_the_cutoff_and_the_short_range_model_does_not(molecules, name):
    """Ablation: an oxygen atom 7 Å, then 9 Å from every atom of an ethanol frame (beyond the 5 Å
    cutoff, so no edge reaches it). The short-range model alone gives the same energy and no force
    on it at both places; with the Ewald block the energy differs and the far atom feels a force,
    i.e. the block carries information past the cutoff (a block that only saw edges, or whose
    output were dropped, would fail)."""
    ethanol = molecules[4]
    span = float(ethanol.pos[:, 0].max())

    def with_far_oxygen(distance):
        far = ethanol.clone()
        extra = torch.tensor([[span + distance, 0.0, 0.0]], dtype=ethanol.pos.dtype)
        far.pos = torch.cat([ethanol.pos, extra]).requires_grad_(True)
        far.atomic_numbers = torch.cat([ethanol.atomic_numbers, torch.tensor([8])])
        far.natoms = torch.tensor([far.pos.shape[0]])
        return far

    def energy_and_far_force(model, distance):
        far = with_far_oxygen(distance)
        assert float(torch.cdist(far.pos[-1:], far.pos[:-1]).min()) > CUTOFF
        batch = _batch([far])
        assert not bool((batch.edge_index == far.pos.shape[0] - 1).any())  # no edge reaches the far atom
        energy = model(batch)["energy"].sum()
        (gradient,) = torch.autograd.grad(energy, batch.pos)
        return energy.item(), gradient[-1].norm().item()

    torch.manual_seed(0)
    short = build_model(name, **SMALL[name]).to(torch.float64).eval()
    near, far = energy_and_far_force(short, 7.0), energy_and_far_force(short, 9.0)
    assert near[0] == pytest.approx(far[0], rel=0, abs=1e-10) and near[1] == far[1] == 0.0
    ewald = _model(name)
    near, far = energy_and_far_force(ewald, 7.0), energy_and_far_force(ewald, 9.0)
    assert abs(near[0] - far[0]) > 1e-6 * abs(near[0]) and near[1] > 1e-8 and far[1] > 1e-8


@pytest.mark.parametrize("which", ["molecules", "periodic_structures"])
def test_bf16_autocast_runs_and_stays_close_to_float32(which, request):
    """Mixed precision: the k-space phases stay float32; bf16 products keep energies within 3 %
    and direct forces within 10 % (measured 0.2-0.6 % and 2-4 % on these batches)."""
    structures = [d.clone() for d in request.getfixturevalue(which)]
    for d in structures:
        d.pos, d.cell = d.pos.float(), d.cell.float()
    torch.manual_seed(0)
    faenet = build_model("faenet", ewald={}, regress_forces="direct", **SMALL["faenet"])
    model = FrameAveraging(faenet, dims="3D", method="stochastic", eval_method="all")
    batch = _batch(structures)
    reference = model.eval()(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(batch)
    for key, tol in (("energy", 0.03), ("forces", 0.1)):
        assert low[key].dtype == torch.float32 and torch.isfinite(low[key]).all()
        assert float((low[key] - reference[key]).norm() / reference[key].norm()) < tol
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.train()(batch)
    (out["energy"].sum() + out["forces"].square().sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in faenet.ewald.parameters())
