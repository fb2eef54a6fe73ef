"""The continuity check: smooth potentials on real structures show no jump, a planted step
discontinuity is found at the step where it is, and `frameavg symmetry --continuity` prints JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT

from frameavg.cli.main import main
from frameavg.data import atoms_to_data
from frameavg.evaluation.continuity import (REFERENCE_STRUCTURES, continuity_check, path_direction,
                                            reference_structures, step_statistics)
from frameavg.frames import FrameAveraging
from frameavg.models import build_model


class EMTModel(torch.nn.Module):
    """EMT energies [B] (eV) of a batch; builds its own neighbour list (cutoff=None)."""

    def forward(self, batch):
        energies = []
        for b in range(batch.num_graphs):
            mask = batch.batch == b
            atoms = Atoms(numbers=batch.atomic_numbers[mask].numpy(), positions=batch.pos[mask].double().numpy(),
                          cell=batch.cell[b].double().numpy(), pbc=batch.pbc[b].numpy())
            atoms.calc = EMT()
            energies.append(atoms.get_potential_energy())
        return {"energy": torch.tensor(energies, dtype=torch.float64)}


class SteppedEMT(EMTModel):
    """EMT plus ``height`` eV once atom 0 is past the plane x = ``plane`` (Å) on the side of ``sign``."""

    def __init__(self, plane: float, sign: float, height: float = 1.0):
        super().__init__()
        self.plane, self.sign, self.height = plane, sign, height

    def forward(self, batch):
        out = super().forward(batch)
        past = self.sign * (batch.pos[batch.ptr[:-1], 0] - self.plane) > 0
        return {"energy": out["energy"] + self.height * past.double()}


@pytest.fixture(scope="module")
def structures():
    return reference_structures(seed=0, md_steps=100)


def _data(atoms):
    return atoms_to_data(atoms, dtype=torch.float64)


def test_reference_structures_are_the_issues(structures):
    assert tuple(structures) == REFERENCE_STRUCTURES
    bulk = structures["bulk_thermal"]
    assert len(bulk) == 108 and bulk.pbc.all()
    offset = np.linalg.norm(bulk.positions - structures["bulk_ideal"].positions, axis=1)
    assert 0.03 < np.sqrt((offset ** 2).mean()) < 0.4  # thermal, not melted
    slab = structures["slab_adsorbate"]
    assert list(slab.pbc) == [True, True, False] and slab.get_chemical_symbols()[-1] == "O"
    tags = slab.get_tags()
    assert sorted(set(tags)) == [0, 1, 2] and (tags == 2).sum() == 1
    data = _data(slab)
    assert data.fixed.tolist() == (tags == 0).tolist() and data.tags.tolist() == tags.tolist()
    assert structures["ethanol"].get_chemical_formula() == "C2H6O"
    again = reference_structures(seed=0, md_steps=100)
    np.testing.assert_array_equal(again["bulk_thermal"].positions, bulk.positions)


def test_step_statistics_definition():
    energies = np.cumsum(np.r_[0.0, np.full(20, 1e-3)])
    energies[12:] += 0.5  # a jump between structures 11 and 12
    stats = step_statistics(energies, factor=10, window=3)
    assert stats["jumps"] == 1 and stats["jump_steps"] == [11] and stats["largest_step"] == 11
    assert stats["max_abs_step_eV"] == pytest.approx(0.501)
    assert stats["max_over_median"] == pytest.approx(501.0)
    assert step_statistics(np.linspace(0, 1, 30) ** 2, factor=10)["jumps"] == 0


@pytest.mark.parametrize("name", ["bulk_thermal", "slab_adsorbate"])
def test_emt_on_real_structures_has_no_jump(structures, name):
    result = continuity_check(EMTModel(), _data(structures[name]), steps=60, step=0.005, seed=1, cutoff=None)
    assert result.steps == 60 and len(result.energies) == 61 and result.periodic
    assert result.jumps == 0, result.to_dict()
    assert result.median_abs_step_eV > 0 and result.frame_changes is None


def test_planted_discontinuity_is_found_at_its_step(structures):
    data = _data(structures["bulk_thermal"])
    steps, step, seed = 60, 0.001, 1
    direction = path_direction(data.num_nodes, seed)
    x = data.pos[0, 0].item() + np.arange(steps + 1) * step * direction[0, 0]
    model = SteppedEMT(0.5 * (x[37] + x[38]), np.sign(direction[0, 0]))  # crossed between 37 and 38
    result = continuity_check(model, data, steps=steps, step=step, seed=seed, cutoff=None)
    assert result.jumps >= 1 and 37 in result.jump_steps and result.largest_step == 37
    assert result.max_over_local > 10


def test_smooth_frame_averaged_model_counts_frames(structures):
    torch.manual_seed(0)
    painn = build_model("painn", hidden_channels=16, num_interactions=2, cutoff=4.0, regress_forces=None)
    model = FrameAveraging(painn, dims="3D", method="all").double().eval()
    result = continuity_check(model, _data(structures["bulk_thermal"]), steps=20, step=0.002, seed=2, cutoff=4.0)
    assert result.jumps == 0, result.to_dict()
    assert result.frame_changes is not None and 0 <= result.frame_changes <= 20
    assert result.frame_set_sizes and all(size >= 1 for size in result.frame_set_sizes)


def test_cli_prints_one_json_document(capsys):
    assert main(["symmetry", "--continuity", "--data", "shipped:rmd17_ethanol/test", "--model", "schnet",
                 "--steps", "12", "--step", "0.003", "--seed", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["structures"]) == 1 and report["meta"]["dtype"] == "float64"
    row = report["structures"][0]
    for key in ("steps", "max_abs_step_eV", "median_abs_step_eV", "max_over_median", "max_over_local", "jumps",
                "jump_steps", "frame_changes", "frame_set_sizes"):
        assert key in row
    assert row["steps"] == 12 and row["atoms"] == 9 and not row["periodic"]
    assert report["jumps"] == row["jumps"] == 0 and row["frame_set_sizes"] == [8]
    assert row["max_over_median"] == pytest.approx(row["max_abs_step_eV"] / row["median_abs_step_eV"])


def test_cli_hard_neighbour_cap_jumps_and_strict_fails(capsys):
    """A hard cap of 3 neighbours (cut arbitrarily at ties) swaps neighbours along the path: jumps."""
    code = main(["symmetry", "--continuity", "--data", "shipped:rmd17_ethanol/test", "--model", "schnet",
                 "--max-neighbors", "3", "--strict-neighbors", "--steps", "100", "--step", "0.003", "--json",
                 "--strict"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    row = report["structures"][0]
    assert code == 1 and report["jumps"] >= 1 and report["meta"]["max_neighbors"] == 3
    assert row["largest_step"] in row["jump_steps"] and row["max_over_local"] > 10
    assert [line for line in captured.err.splitlines() if line.strip()] == [
        f"frameavg: warning: the energy jumped {report['jumps']} time(s) along the path"]
