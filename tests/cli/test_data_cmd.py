"""`frameavg data info|convert|formats` through the real entry point: JSON output and exit codes."""

import json
import pickle

import lmdb
import pytest
import torch

from frameavg.cli.main import main
from frameavg.data import LmdbDataset, read_structures
from frameavg.data.neighbors import neighbor_list


def _json(capsys, argv):
    code = main(argv)
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)  # exactly one JSON document on stdout


def test_info_json_on_periodic_slabs(real_data, capsys):
    path = real_data / "oc20_is2re_samples" / "is2re_bs8.extxyz"
    info = _json(capsys, ["data", "info", str(path), "--cutoff", "6", "--json"])
    structures = read_structures(path)
    assert info["format"] == "ase" and info["count"] == 8
    natoms = sorted(int(d.natoms) for d in structures)
    assert info["atoms_per_structure"]["min"] == natoms[0] and info["atoms_per_structure"]["max"] == natoms[-1]
    assert info["periodicity"] == {"TTT": 8}
    assert set(info["labels"]) == {"y_init", "y_relaxed", "pos_relaxed", "force_init", "sid"}
    assert info["labels"]["pos_relaxed"] == {"count": 8, "level": "atom"}
    assert info["tags"]["structures"] == 8 and set(info["tags"]["atoms_per_tag"]) == {"0", "1", "2"}
    edges = sum(neighbor_list(d.pos, d.cell[0], d.pbc[0], 6.0)[0].shape[1] for d in structures)
    assert info["edges_per_atom"]["mean"] == pytest.approx(edges / sum(natoms))
    assert sum(info["elements"].values()) == sum(natoms)


def test_info_text_on_molecules_with_key_mapping(real_data, capsys):
    path = real_data / "qm9_subset" / "qm9_random2000_seed0.extxyz"
    code = main(["data", "info", str(path), "--keys", "energy=U0", "--option", "targets=U0,gap", "--limit", "50"])
    text = capsys.readouterr().out
    assert code == 0 and "structures        50" in text and "energy" in text and "gap" in text
    assert "pbc FFF: 50" in text and "edges per atom" in text


def test_convert_with_edges_then_info_on_the_result(real_data, tmp_path, capsys):
    source = real_data / "xu_kitchin_adsorption"
    out = tmp_path / "xu.lmdb"
    result = _json(capsys, ["data", "convert", str(source), str(out), "--cutoff", "6", "--max-neighbors", "30",
                            "--limit", "40", "--no-progress", "--json"])
    assert result["count"] == 40 and result["format"] == "xu-kitchin" and out.is_file()
    dataset = LmdbDataset(out)
    assert dataset.metadata["metadata"]["cutoff"] == 6.0 and dataset.metadata["metadata"]["source_format"] == "xu-kitchin"
    originals = read_structures(source)[:40]
    for i in (0, 39):
        expected, offsets = neighbor_list(originals[i].pos, originals[i].cell[0], originals[i].pbc[0], 6.0, 30)
        assert torch.equal(dataset[i].edge_index, expected) and torch.equal(dataset[i].cell_offsets, offsets)
        assert dataset[i].name == originals[i].name and torch.equal(dataset[i].tags, originals[i].tags)
    info = _json(capsys, ["data", "info", str(out), "--json"])
    assert info["format"] == "frameavg-lmdb" and info["count"] == 40 and info["labels"]["energy"]["count"] == 40


def test_convert_legacy_needs_trusted(real_data, tmp_path, capsys):
    structures = read_structures(real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz")
    legacy = tmp_path / "legacy.lmdb"
    env = lmdb.open(str(legacy), subdir=False, lock=False)
    with env.begin(write=True) as txn:
        for i, d in enumerate(structures):
            obj = {"pos": d.pos, "atomic_numbers": d.atomic_numbers.float(), "cell": d.cell, "y_relaxed": float(d.y_relaxed),
                   "tags": d.tags, "fixed": d.fixed.float()}
            txn.put(str(i).encode(), pickle.dumps(obj))
    env.close()
    out = tmp_path / "ours.lmdb"
    assert main(["data", "convert", str(legacy), str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "frameavg: error:" in err and "--trusted" in err and "Traceback" not in err and not out.exists()
    assert main(["data", "convert", str(legacy), str(out), "--trusted", "--no-progress"]) == 0
    capsys.readouterr()
    converted = read_structures(out, required=("energy",))  # pickle-free from here on
    assert [d.energy.item() for d in converted] == pytest.approx([d.y_relaxed.item() for d in structures])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "info", "{data}/nowhere.xyz"], "no such file or directory"),
        (["data", "info", "{data}/qm7/qm7_first300.extxyz", "--keys", "energy=hof_pbe0"], "did you mean 'hof_pbe0_kcal_mol'"),
        (["data", "info", "{data}/qm7/qm7_first300.extxyz", "--keys", "energy"], "expected FIELD=KEY"),
        (["data", "info", "{data}/qm7/qm7_first300.extxyz", "--required", "forces"], "structure 0: missing required label"),
        (["data", "info", "{data}/qm7/qm7_first300.extxyz", "--format", "pdbx"], "unknown format 'pdbx'"),
        (["data", "info", "{data}/qm7/qm7_first300.extxyz", "--option", "targets=U0"], "format 'ase' has no option(s) targets"),
    ],
)
def test_errors_exit_1_with_one_line(real_data, capsys, argv, message):
    argv = [a.replace("{data}", str(real_data)) for a in argv]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err and captured.out == ""


def test_formats_json(capsys):
    formats = _json(capsys, ["data", "formats", "--json"])
    assert {"ase", "ase-db", "frameavg-lmdb", "oc20-lmdb", "qm9", "xu-kitchin"} <= set(formats)
