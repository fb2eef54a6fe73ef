"""`frameavg symmetry` through the real entry point: table, JSON, bare vs frame-averaged model, errors."""

import json

from frameavg.cli.main import main


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_report_frame_averaged_raw_model_on_slabs(real_data, capsys):
    path = real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz"
    code, out, _ = _run(capsys, ["symmetry", "--data", str(path), "--limit", "2", "--dims", "2D", "--method", "all",
                                 "--periodic", "lattice-symmetric",
                                 "--checks", "rotation,reflection,image,cell,batch", "--cutoff", "5", "--json"])
    assert code == 0
    report = json.loads(out)  # exactly one JSON document
    assert report["meta"]["model"].startswith("raw-mpnn") and report["meta"]["method"] == "all"
    assert [c["check"] for c in report["checks"]] == ["rotation", "reflection", "image", "cell", "batch"]
    for check in report["checks"]:
        assert check["expected"] is True
        assert check["energy_abs_max"] < 1e-10 and check["forces_abs_max"] < 1e-10
    assert sum(d["count"] for d in report["degeneracy"].values()) == 2


def test_lattice_frames_claim_no_invariance_to_the_choice_of_cell(real_data, capsys):
    """The default periodic frames (one lattice frame) are exact to rotations, reflections and
    images, and make no claim on how the cell is written."""
    path = real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz"
    code, out, _ = _run(capsys, ["symmetry", "--data", str(path), "--limit", "1", "--frames", "2D",
                                 "--checks", "rotation,reflection,image,cell", "--cutoff", "5", "--json"])
    assert code == 0
    checks = {c["check"]: c for c in json.loads(out)["checks"]}
    assert checks["cell"]["expected"] is False
    for name in ("rotation", "reflection", "image"):
        assert checks[name]["expected"] is True and checks[name]["energy_abs_max"] < 1e-10


def test_table_shows_bare_model_is_not_invariant(real_data, capsys):
    path = real_data / "rmd17_ethanol" / "train.xyz"
    # --frames: the flag's old name, still read
    code, out, _ = _run(capsys, ["symmetry", "--data", str(path), "--limit", "3", "--frames", "none",
                                 "--checks", "rotation,permutation", "--cutoff", "5"])
    assert code == 0
    lines = out.splitlines()
    assert "dims none" in lines[0]
    rotation = next(line for line in lines if line.startswith("rotation"))
    assert rotation.split()[1] == "no" and float(rotation.split()[4]) > 1e-4


def test_bad_input_is_a_one_line_error(real_data, capsys):
    code, _, err = _run(capsys, ["symmetry", "--data", str(real_data / "missing.xyz")])
    assert code == 1 and err.startswith("frameavg: error:") and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, ["symmetry", "--data", str(real_data / "rmd17_ethanol" / "train.xyz"),
                                 "--model", "no-such-model", "--limit", "1"])
    assert code == 1 and "unknown model 'no-such-model'" in err


def test_checkpoint_uses_its_frames_and_neighbour_settings(real_data, capsys, tmp_path):
    """A frameavg checkpoint (config + weights, as training writes it): its own 2D se3-all frames and
    cutoff/max_neighbors are used; rotations about z are exact, reflections are not claimed."""
    import torch

    from frameavg.training.config import load_config
    from frameavg.training.module import AtomisticTask

    config = load_config(None, ["model.hidden_channels=64", "model.num_filters=32", "model.num_interactions=1",
                                "model.pg_hidden_channels=8", "model.cutoff=5.0", "frames.dims=2D",
                                "frames.eval=se3-all", "data.cutoff=5.0", "data.max_neighbors=20"])
    path = tmp_path / "model.ckpt"
    torch.save({"hyper_parameters": {"config": config}, "state_dict": AtomisticTask(config).state_dict()}, path)
    data = real_data / "oc20_is2re_samples" / "is2re_bs3.extxyz"
    code, out, _ = _run(capsys, ["symmetry", "--data", str(data), "--checkpoint", str(path), "--limit", "1",
                                 "--checks", "rotation,reflection,image", "--json"])
    assert code == 0
    report = json.loads(out)
    assert (report["meta"]["dims"], report["meta"]["method"]) == ("2D", "se3-all")
    assert (report["meta"]["cutoff"], report["meta"]["max_neighbors"]) == (5.0, 20)
    rows = {c["check"]: c for c in report["checks"]}
    assert rows["rotation"]["expected"] and rows["rotation"]["energy_abs_max"] < 1e-10
    assert rows["image"]["energy_abs_max"] < 1e-10
    assert rows["reflection"]["expected"] is False


def test_invariant_baseline_claims_rotations_without_frames(real_data, capsys):
    """PaiNN is E(3)-invariant by construction: the bare model claims and shows it (FA adds nothing)."""
    path = real_data / "rmd17_ethanol" / "train.xyz"
    code, out, _ = _run(capsys, ["symmetry", "--model", "painn", "--data", str(path), "--limit", "2", "--frames", "none",
                                 "--checks", "rotation,reflection,translation", "--json"])
    assert code == 0
    for check in json.loads(out)["checks"]:
        assert check["expected"] is True
        assert check["energy_abs_max"] < 1e-10 and check["forces_abs_max"] < 1e-10
