"""`frameavg data generate-bulk` on a tiny setting: EMT labels, strains and temperatures as asked,
whole trajectories per split, deterministic, readable by `frameavg data info` and the readers."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT

from frameavg.cli.main import main
from frameavg.data import read_structures
from frameavg.simulation.bulk_data import BulkSettings, generate_bulk, random_strain

TINY = ["--size", "2", "--structures", "10", "--frames-per-trajectory", "2", "--interval", "5",
        "--equilibration", "10", "--temperatures", "300,1200", "--strain", "0.02", "--no-progress"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("bulk")
    code = main(["data", "generate-bulk", "--out", str(out), "--seed", "7", *TINY, "--json"])
    return out, code


def test_cli_writes_the_splits_and_metadata(generated, capsys):
    out, code = generated
    assert code == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["label"].startswith("synthetic") and metadata["atoms_per_structure"] == 32
    assert metadata["trajectories"] == 5 and sum(metadata["structures"].values()) == 10
    assert all(metadata["structures"][split] > 0 for split in ("train", "val", "test"))
    assert "EMT" in (out / "README.md").read_text()
    trajectories = {}
    for split in ("train", "val", "test"):
        frames = ase.io.read(out / f"{split}.extxyz", ":")
        assert len(frames) == metadata["structures"][split]
        trajectories[split] = {f.info["trajectory"] for f in frames}
        assert sorted(trajectories[split]) == metadata["split_trajectories"][split]
    assert not (trajectories["train"] & trajectories["val"] or trajectories["train"] & trajectories["test"]
                or trajectories["val"] & trajectories["test"])


def test_labels_are_emt_and_strain_and_temperature_as_asked(generated):
    out, _ = generated
    a = json.loads((out / "metadata.json").read_text())["lattice_constant_A"]
    for frame in ase.io.read(out / "train.extxyz", ":"):
        energy, forces, stress = frame.get_potential_energy(), frame.get_forces(), frame.get_stress()
        assert len(frame) == 32 and frame.pbc.all() and frame.info["label"].startswith("synthetic")
        assert frame.info["temperature_K"] == (300.0, 1200.0)[frame.info["trajectory"] % 2]
        strain = np.asarray(frame.info["strain"])
        assert np.abs(strain).max() <= 0.02 and np.abs(strain).max() > 0
        eps = np.diag(strain[:3]) + np.array([[0, strain[5], strain[4]], [strain[5], 0, strain[3]],
                                              [strain[4], strain[3], 0]])
        np.testing.assert_allclose(frame.cell.array, 2 * a * (np.eye(3) + eps), atol=1e-5)
        reference = frame.copy()
        reference.calc = EMT()
        assert energy == pytest.approx(reference.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(forces, reference.get_forces(), atol=1e-6)
        np.testing.assert_allclose(stress, reference.get_stress(), atol=1e-6)


def test_thermal_frames_are_off_the_lattice(generated):
    out, _ = generated
    forces = np.concatenate([f.get_forces() for f in ase.io.read(out / "train.extxyz", ":")])
    assert np.abs(forces).max() > 0.1  # thermal displacements: an ideal strained lattice has zero forces


def test_same_seed_same_files_other_seed_other_files(generated, tmp_path):
    out, _ = generated
    again = tmp_path / "again"
    assert main(["data", "generate-bulk", "--out", str(again), "--seed", "7", *TINY]) == 0
    for name in ("train.extxyz", "val.extxyz", "test.extxyz", "metadata.json"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    other = tmp_path / "other"
    assert main(["data", "generate-bulk", "--out", str(other), "--seed", "8", *TINY]) == 0
    assert (other / "train.extxyz").read_bytes() != (out / "train.extxyz").read_bytes()


def test_data_info_and_readers_take_it(generated, capsys):
    out, _ = generated
    capsys.readouterr()
    assert main(["data", "info", str(out / "train.extxyz"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == json.loads((out / "metadata.json").read_text())["structures"]["train"]
    assert {"energy", "forces", "stress"} <= set(info["labels"])
    data = read_structures(out / "test.extxyz", dtype=torch.float64)
    assert {"energy", "forces", "stress"} <= set(data[0].keys()) and data[0].stress.numel() in (6, 9)


def test_random_strain_is_symmetric_and_bounded():
    eps = random_strain(np.random.default_rng(0), 0.03)
    np.testing.assert_array_equal(eps, eps.T)
    assert np.abs(eps).max() <= 0.03 and len(np.unique(eps)) == 6


def test_bad_settings_are_one_line_errors(tmp_path, capsys):
    code = main(["data", "generate-bulk", "--out", str(tmp_path / "x"), "--element", "Fe", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "Fe" in err[0]
    with pytest.raises(Exception, match="temperatures"):
        BulkSettings(temperatures=(0.0,)).validated()
    code = main(["data", "generate-bulk", "--out", str(tmp_path / "x"), "--temperatures", "hot", "--no-progress"])
    assert code != 0 and "--temperatures" in capsys.readouterr().err
