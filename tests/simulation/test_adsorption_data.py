"""The EMT dense adsorption generator: deterministic, resumable, every ground-truth relaxation
converged or flagged, and the shipped folder's energies reproduced by EMT."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from frameavg.data import read_structures
from frameavg.data.adsorption import is_adsorption_folder, read_manifest, read_slabs
from frameavg.data.atomic_data import data_to_atoms
from frameavg.data.shipped import shipped_path
from frameavg.errors import ConfigError
from frameavg.simulation.adsorption_data import GenerationSettings, generate_adsorption

SMALL = GenerationSettings(metals=("Cu",), adsorbates=("O", "H"), facets=("100",), placements=1, seed=3)


def _records(folder):
    out = {}
    for path in sorted(folder.glob("*/*.lmdb")):
        out[str(path.relative_to(folder))] = read_structures(path)
    return out


@pytest.mark.slow
def test_generation_is_deterministic_and_resumes_after_an_interruption(tmp_path):
    first = generate_adsorption(tmp_path / "a", SMALL)

    class Interrupt(Exception):
        pass

    def stop_after_first(done, total, name):
        if done == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        generate_adsorption(tmp_path / "b", SMALL, progress=stop_after_first)
    assert not (tmp_path / "b" / "manifest.json").exists()  # nothing half-written
    assert len(list((tmp_path / "b" / ".partial").glob("*/*.npz"))) == 1  # the finished system is kept
    second = generate_adsorption(tmp_path / "b", SMALL)
    assert not (tmp_path / "b" / ".partial").exists()
    assert first == second == read_manifest(tmp_path / "b")
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert a.keys() == b.keys() and a
    for name in a:
        assert len(a[name]) == len(b[name]) > 0
        for x, y in zip(a[name], b[name]):
            assert x.keys() == y.keys()
            for key in x.keys():
                assert torch.equal(x[key], y[key]), (name, key)
    # another seed moves the random placements
    other = generate_adsorption(tmp_path / "c", GenerationSettings(**{**SMALL.__dict__, "seed": 4, "adsorbates": ("O",)}))
    assert [p["energy"] for p in other["systems"][0]["placements"]] != \
        [p["energy"] for p in first["systems"][0]["placements"]]


def test_shipped_folder_manifest_is_consistent():
    folder = shipped_path("emt_dense")
    assert is_adsorption_folder(folder)
    manifest = read_manifest(folder)
    assert "synthetic" in manifest["label"] and "EMT" in manifest["ground_truth"]
    settings = manifest["settings"]
    flagged = 0
    for system in manifest["systems"]:
        held_ads, held_metal = system["adsorbate"] == settings["ood_adsorbate"], system["metal"] == settings["ood_metal"]
        expected = {(True, True): "ood_both", (True, False): "ood_ads", (False, True): "ood_cat"}.get(
            (held_ads, held_metal), system["split"])
        assert system["split"] == expected and system["split"] in ("train", "id", "ood_ads", "ood_cat", "ood_both")
        rows = system["placements"]
        assert len(rows) == 4 + settings["placements"]  # 4 sites on (111) + the random ones
        for row in rows:  # every ground-truth relaxation converged, or is flagged
            assert row["status"] in ("converged", "not converged") or row["status"].startswith("failed")
            flagged += row["status"] != "converged" or bool(row["anomalies"])
        valid = [r["energy"] for r in rows if r["status"] == "converged" and not r["anomalies"]]
        assert system["ground_truth_min"] == min(valid)
        assert system["ground_truth_calls"] == sum(r["steps"] + 1 for r in rows)
        assert all(r["adsorption_energy"] == pytest.approx(r["energy"] - system["reference_energy"], abs=1e-7)
                   for r in rows)
    assert flagged == manifest["flagged_placements"] > 0  # EMT dissociates some OH placements
    for path in (folder / "s2ef").glob("*.lmdb"):
        from frameavg.data.lmdb_store import open_env, read_meta

        meta = read_meta(open_env(path), path)["metadata"]
        assert meta["synthetic"] is True and "EMT" in meta["label"]


def test_shipped_energies_are_reproduced_by_emt():
    from ase.calculators.emt import EMT

    folder = shipped_path("emt_dense")
    frames = read_structures(folder / "s2ef" / "train.lmdb", dtype=torch.float64)
    for data in frames[::15]:
        atoms = data_to_atoms(data)
        atoms.set_constraint()
        atoms.calc = EMT()
        # float32 storage: ~1e-6 relative
        assert atoms.get_potential_energy() == pytest.approx(float(data.energy), abs=2e-5)
        np.testing.assert_allclose(atoms.get_forces(), data.forces.numpy(), atol=5e-4)
    placements = read_structures(folder / "dense" / "id.lmdb", dtype=torch.float64)
    for data in placements[::3]:
        atoms = data_to_atoms(data)
        atoms.positions = data.pos_relaxed.numpy()
        atoms.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(float(data.energy_relaxed), abs=2e-4)
        assert data.tags.tolist().count(2) >= 1 and bool(data.fixed.any())
    slabs = read_slabs(folder)
    assert set(slabs) == {f"{m}-111" for m in read_manifest(folder)["settings"]["metals"]}


@pytest.mark.parametrize("options, message", [
    ({"adsorbates": ("O", "S")}, "EMT cannot model S"),
    ({"adsorbates": ("CH3",)}, "CH3: not a built-in adsorbate"),
    ({"metals": ("Fe",)}, "metal Fe: EMT models only"),
    ({"facets": ("110",)}, "facet 110"),
    ({"ood_metal": "Au"}, "held-out"),
])
def test_bad_generation_settings_name_the_problem(options, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        generate_adsorption(tmp_path / "x", GenerationSettings(**{**SMALL.__dict__, **options}))
    assert not (tmp_path / "x").exists()


def test_parallel_generation_gives_the_same_manifest(tmp_path):
    settings = GenerationSettings(**{**SMALL.__dict__, "adsorbates": ("O",), "placements": 0})
    assert generate_adsorption(tmp_path / "one", settings) == generate_adsorption(tmp_path / "two", settings, workers=2)


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "frameavg.cli.main", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_generate_and_info_from_the_cli(tmp_path):
    out = tmp_path / "dense"
    made = _cli("data", "generate-adsorption", "--out", str(out), "--metals", "Cu", "--adsorbates", "O",
                "--facets", "100", "--placements", "0", "--no-progress", "--json")
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    assert summary["systems"] == 1 and summary["placements"] == 3 and "synthetic" in summary["label"]
    info = _cli("data", "info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    assert {k: v for k, v in json.loads(info.stdout).items() if k != "seconds"} == \
        {k: v for k, v in summary.items() if k != "seconds"}
    shipped = _cli("data", "info", "shipped:emt_dense")
    assert shipped.returncode == 0 and "synthetic data: ASE EMT" in shipped.stdout and "OH" in shipped.stdout
    bad = _cli("data", "generate-adsorption", "--out", str(tmp_path / "bad"), "--adsorbates", "O,S")
    assert bad.returncode != 0 and "EMT cannot model S" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


def test_s2ef_frames_carry_their_placements_relaxed_positions(tmp_path):
    """Each trajectory frame stores the relaxed positions of its placement (``pos_relaxed``, the
    IS2RS target of Noisy Nodes' ``relaxed`` mode), in generated folders and the shipped one."""
    generated = tmp_path / "gen"
    generate_adsorption(generated, SMALL)
    for folder in (generated, shipped_path("emt_dense")):
        for dense_file in sorted((folder / "dense").glob("*.lmdb")):
            relaxed = {(int(d.system_index), int(d.placement)): d.pos_relaxed for d in read_structures(dense_file)}
            frames = read_structures(folder / "s2ef" / dense_file.name)
            assert frames
            for frame in frames:
                target = relaxed[(int(frame.system_index), int(frame.placement))]
                torch.testing.assert_close(frame.pos_relaxed.double(), target.double(), atol=1e-5, rtol=0)
            # the frames of a trajectory move towards the relaxed positions they carry
            first = [f for f in frames if int(f.frame) == 0][0]
            assert float((first.pos_relaxed - first.pos).abs().max()) > 1e-3
