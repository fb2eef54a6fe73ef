"""The batched relaxation engine against ASE's own optimisers (EMT ground truth, real Xu–Kitchin
slabs), its cell filter against ASE's UnitCellFilter, the batched model path against ASE's
optimiser looped over the same calculator, and per-structure statuses for bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.filters import UnitCellFilter
from ase.optimize import FIRE, LBFGS

from frameavg.data import iter_structures
from frameavg.data.atomic_data import data_to_atoms
from frameavg.frames import FrameAveraging
from frameavg.models import FAENet
from frameavg.simulation import ADSORBML_LBFGS, FrameavgCalculator, Potential, relax
from frameavg.simulation.relaxation import AseProvider

#: Xu–Kitchin slabs whose metal and adsorbate EMT models: (metal Z, adsorbate Z)
EMT_SLABS = [(29, 1), (29, 8), (46, 6), (46, 7), (47, 8), (47, 1), (78, 7), (78, 6), (79, 1), (79, 8)]


@pytest.fixture(scope="module")
def emt_slabs(real_data):
    wanted, found = set(EMT_SLABS), {}
    for data in iter_structures(real_data / "xu_kitchin_adsorption", dtype=torch.float64):
        z = data.atomic_numbers.tolist()
        metal = max(set(z), key=z.count)
        key = (metal, next(iter(set(z) - {metal})))
        if key in wanted and key not in found:
            found[key] = data_to_atoms(data)
    assert len(found) == len(EMT_SLABS)
    return [found[key] for key in EMT_SLABS]


def _ase_relax(atoms, optimizer, fmax, steps, **options):
    atoms = atoms.copy()
    atoms.calc = EMT()
    opt = optimizer(atoms, logfile=None, **options)
    converged = opt.run(fmax=fmax, steps=steps)
    return atoms, opt.nsteps, converged


@pytest.mark.parametrize("name, ase_optimizer, options", [
    ("fire", FIRE, {}),
    ("lbfgs", LBFGS, ADSORBML_LBFGS),
])
def test_engine_reproduces_ase_structure_by_structure(emt_slabs, name, ase_optimizer, options):
    """10 real fcc(111) slabs (Cu, Pd, Ag, Pt, Au with H/C/N/O), EMT forces, fmax 0.05: final
    energies within 1 meV, positions within 0.01 Å (minimum image), step counts within ±10 %,
    fixed atoms unmoved (measured: identical to ~1e-14 and the same step counts)."""
    ours = relax(emt_slabs, EMT(), optimizer=name, fmax=0.05, steps=300)
    for start, mine in zip(emt_slabs, ours):
        reference, steps, converged = _ase_relax(start, ase_optimizer, 0.05, 300, **options)
        assert mine.info["converged"] == converged and mine.info["status"] == "converged"
        assert abs(mine.info["energy"] - reference.get_potential_energy()) < 1e-3
        assert abs(mine.get_potential_energy() - mine.info["energy"]) == 0
        displacement = mine.positions - reference.positions
        frac = np.linalg.solve(mine.cell.array.T, displacement.T).T
        frac -= np.round(frac)
        assert np.abs(frac @ mine.cell.array).max() < 0.01
        assert abs(mine.info["steps"] - steps) <= max(1, 0.1 * steps)
        fixed = mine.constraints[0].get_indices()
        assert len(fixed) > 0 and np.array_equal(mine.positions[fixed], start.positions[fixed])


@pytest.mark.parametrize("name, ase_optimizer", [("fire", FIRE), ("lbfgs", LBFGS)])
def test_cell_relaxation_matches_ase_unit_cell_filter(name, ase_optimizer):
    """A strained, rattled Cu supercell relaxes, positions and cell, as ASE's UnitCellFilter does."""
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + [[0.02, 0.01, 0], [0.01, -0.01, 0], [0, 0, 0.03]]), scale_atoms=True)
    options = ADSORBML_LBFGS if name == "lbfgs" else {}
    (ours,) = relax([atoms], EMT(), optimizer=name, fmax=0.01, steps=500, relax_cell=True)
    reference = atoms.copy()
    reference.calc = EMT()
    opt = ase_optimizer(UnitCellFilter(reference), logfile=None, **options)
    assert opt.run(fmax=0.01, steps=500) and ours.info["converged"]
    assert abs(ours.info["steps"] - opt.nsteps) <= max(1, 0.1 * opt.nsteps)
    np.testing.assert_allclose(ours.cell.array, reference.cell.array, atol=1e-6)
    np.testing.assert_allclose(ours.positions, reference.positions, atol=1e-6)
    assert abs(ours.info["energy"] - reference.get_potential_energy()) < 1e-6
    stress = EMT().get_stress(ours)
    assert np.abs(stress).max() * ours.get_volume() / len(ours) < 0.011  # the cell rows' criterion


def small_faenet(dim="2D"):
    torch.manual_seed(0)
    model = FAENet(cutoff=5.0, hidden_channels=48, num_filters=32, num_interactions=2, num_gaussians=16,
                   tag_hidden_channels=8, pg_hidden_channels=8, phys_embeds=False, regress_forces=None)
    return FrameAveraging(model, dims=dim, method="all", cutoff=5.0)


def test_batched_model_path_equals_ase_looped_over_the_calculator(real_data):
    """The same random FAENet (all 2D frames, float64): one batch per step for 6 slabs, or ASE's
    FIRE with the FrameavgCalculator per slab — the same relaxation, step for step."""
    structures = [data_to_atoms(d) for d in iter_structures(real_data / "oc20_is2re_samples" / "is2re_bs8.extxyz",
                                                             dtype=torch.float64)][:6]
    potential = Potential(small_faenet(), cutoff=5.0)
    ours = relax(structures, potential, optimizer="fire", fmax=0.2, steps=25)
    calc = FrameavgCalculator(potential=potential)
    for start, mine in zip(structures, ours):
        reference = start.copy()
        reference.calc = calc
        opt = FIRE(reference, logfile=None)
        converged = opt.run(fmax=0.2, steps=25)
        assert mine.info["converged"] == converged and mine.info["steps"] == opt.nsteps
        np.testing.assert_allclose(mine.positions, reference.positions, atol=1e-8)
        assert abs(mine.info["energy"] - reference.get_potential_energy()) < 1e-8


class FlakyEMT(Calculator):
    """EMT, except that structures with oxygen get NaN forces (a model blowing up)."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        emt = EMT()
        self.results = {"energy": emt.get_potential_energy(self.atoms), "forces": emt.get_forces(self.atoms)}
        if 8 in self.atoms.numbers:
            self.results["forces"] = self.results["forces"] * np.nan


def test_one_bad_structure_gets_a_status_and_the_others_go_on(emt_slabs):
    results = relax(emt_slabs[:4], FlakyEMT(), optimizer="fire", fmax=0.05, steps=300)
    statuses = [r.info["status"] for r in results]
    assert statuses == ["converged", "failed: non-finite energy or forces", "converged", "converged"]
    assert math.isnan(results[1].info["energy"]) and results[1].info["steps"] == 0


def test_not_converged_within_the_step_budget_is_reported(emt_slabs):
    (result,) = relax(emt_slabs[:1], EMT(), optimizer="fire", fmax=0.05, steps=3)
    assert result.info["status"] == "not converged" and not result.info["converged"] and result.info["steps"] == 3
    assert result.info["fmax"] > 0.05


def test_relax_cell_on_a_molecule_and_unsupported_elements_are_statuses(emt_slabs):
    results = relax([molecule("H2O"), emt_slabs[0]], EMT(), relax_cell=True, steps=2)
    assert results[0].info["status"].startswith("failed: relax_cell needs a structure periodic")
    assert results[1].info["status"] in ("converged", "not converged")
    heavy = Atoms("CuMd", positions=[[0, 0, 0], [0, 0, 2.5]])
    light = Atoms("CuO", positions=[[0, 0, 0], [0, 0, 1.8]])
    out = relax([heavy, light], Potential(small_faenet("3D"), cutoff=5.0), steps=2)
    assert "atomic number 101 (Md): FAENet embeds Z = 1..100" in out[0].info["status"]
    assert out[1].info["status"] in ("converged", "not converged")


class SmallMemoryProvider(AseProvider):
    """EMT that refuses (MemoryError) to evaluate more than two structures at once."""

    def evaluate(self, keys, positions, cells, stress):
        if len(keys) > 2:
            raise MemoryError("not enough memory")
        return super().evaluate(keys, positions, cells, stress)


def test_a_batch_that_does_not_fit_is_split_and_continued(emt_slabs):
    split = relax(emt_slabs[:5], SmallMemoryProvider(EMT()), optimizer="lbfgs", fmax=0.05)
    whole = relax(emt_slabs[:5], EMT(), optimizer="lbfgs", fmax=0.05)
    for a, b in zip(split, whole):
        assert a.info["steps"] == b.info["steps"] and np.allclose(a.positions, b.positions, atol=1e-12)


def test_atom_budget_and_trajectories(emt_slabs, tmp_path):
    """With room for two slabs at a time, waiting slabs join as others converge; trajectories go
    to info or to DIR/NAME.traj."""
    budget = 2 * len(emt_slabs[0]) + 1
    results = relax(emt_slabs[:4], EMT(), max_atoms_per_batch=budget, trajectory=True)
    free = relax(emt_slabs[:4], EMT())
    assert [r.info["steps"] for r in results] == [r.info["steps"] for r in free]
    assert all(len(r.info["trajectory"]) == r.info["steps"] + 1 for r in results)
    relax(emt_slabs[:2], EMT(), trajectory=tmp_path / "traj", names=["a", "b"])
    import ase.io

    frames = ase.io.read(tmp_path / "traj" / "b.traj", ":")
    assert len(frames) >= 2 and frames[-1].get_potential_energy() < frames[0].get_potential_energy()


def test_relax_status_reads_back_every_status_text():
    from frameavg.simulation import RelaxStatus

    assert RelaxStatus.of("converged") is RelaxStatus.CONVERGED
    assert RelaxStatus.of("not converged") is RelaxStatus.NOT_CONVERGED
    assert RelaxStatus.of(RelaxStatus.FAILED.with_reason("non-finite stress")) is RelaxStatus.FAILED
    assert RelaxStatus.FAILED.with_reason("x") == "failed: x" and RelaxStatus.CONVERGED.with_reason("x") == "converged"
    with pytest.raises(ValueError):
        RelaxStatus.of("finished")
