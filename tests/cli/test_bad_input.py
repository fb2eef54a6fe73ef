"""The bad-input table: every hostile input found by trying the tool as a hostile user gets a clear
one-line error (exit 1, or 2 for usage errors) or a per-structure status, never a traceback, and
never loses what is already written. One test per case."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import ase.io
import lmdb
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.build import add_adsorbate, fcc111

from frameavg.cli.main import main
from frameavg.data import read_structures, write_lmdb
from frameavg.data.lmdb_store import META_KEY, encode_data
from frameavg.data.shipped import shipped_path
from frameavg.files import remove_stale_temporaries
from frameavg.training.config import load_config
from frameavg.training.run import train
from tiny import ETHANOL, TINY_MODEL

TINY = TINY_MODEL + ETHANOL + ["data.max_train=16", "data.val_fraction=0.05", "data.batch_size=8",
                               "optim.max_epochs=1", "trainer.enable_progress_bar=false"]


def one_line_error(capsys, code: int, expected_code: int = 1) -> str:
    """The stderr of a failed command: one line, no traceback; returns it."""
    err = capsys.readouterr().err
    assert code == expected_code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs")
    result = train(load_config(None, TINY + [f"run_dir={run_dir}", "name=tiny"]))
    return result["checkpoint"], result["run_dir"]


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "runs"), "name": "cli"}))
    return path


# --------------------------------------------------------------------------- training command line
@pytest.mark.parametrize("form", [["--resume", "{ckpt}"], ["--resume={ckpt}"]])
def test_resume_is_accepted_after_the_config_and_overrides(tmp_path, config_file, capsys, form):
    """The README's `frameavg train CONFIG ... --resume CKPT` (the flag after the config)."""
    assert main(["train", str(config_file), *TINY]) == 0
    ckpt = tmp_path / "runs" / "cli" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    flags = [f.format(ckpt=ckpt) for f in form]
    assert main(["train", str(config_file), *TINY, "optim.max_epochs=2", *flags, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epochs"] == 2 and result["run_dir"] == str(tmp_path / "runs" / "cli")


def test_failed_resume_keeps_the_old_config(tmp_path, config_file, capsys):
    assert main(["train", str(config_file), *TINY]) == 0
    saved = tmp_path / "runs" / "cli" / "config.yaml"
    before = saved.read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(os.urandom(256))
    capsys.readouterr()
    code = main(["train", str(config_file), *TINY, "optim.lr=0.5", "--resume", str(broken)])
    message = one_line_error(capsys, code)
    assert "cannot read checkpoint safely" in message and "weights_only" not in message
    assert saved.read_bytes() == before


def test_resume_with_another_model_is_refused_before_writing(tmp_path, config_file, capsys, checkpoint):
    code = main(["train", str(config_file), *TINY, "model.hidden_channels=48", "--resume", checkpoint[0]])
    assert "cannot resume: the checkpoint's 'model' section" in one_line_error(capsys, code)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=-4", "'data.batch_size' must be >= 1, got -4"),
    ("data.batch_size=abc", "'data.batch_size' must be an integer >= 1, got 'abc'"),
    ("optim.max_epochs=two", "'optim.max_epochs' must be an integer >= 1, got 'two'"),
    ("optim.scheduler=cosin", "did you mean 'cosine'?"),
    ("loss.forces=l1", "'loss.forces' must be one of l2mae, mae, mse"),
    ("model.hiden_channels=64", "has no argument 'hiden_channels'; did you mean 'model.hidden_channels'?"),
    ("model.name=fanet", "unknown model 'fanet'; did you mean 'faenet'?"),
])
def test_bad_config_values_fail_before_any_run_folder(tmp_path, config_file, capsys, override, message):
    code = main(["train", str(config_file), *TINY, override])
    assert message in one_line_error(capsys, code)
    assert not (tmp_path / "runs").exists()


def test_config_file_with_a_string_epoch_count(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "runs"), "optim": {"max_epochs": "two"}}))
    assert "'optim.max_epochs' must be an integer" in one_line_error(capsys, main(["train", str(path)]))
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- structures and data files
def _cube(size: float) -> Atoms:
    return Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * size, pbc=True)


def test_cell_smaller_than_the_minimum_distance(tmp_path, capsys):
    """0.02 Å cell: every atom sits on its own images (used to exhaust memory inside vesin)."""
    path = tmp_path / "tiny_cell.extxyz"
    ase.io.write(path, _cube(0.02))
    message = one_line_error(capsys, main(["data", "info", str(path)]))
    assert "tiny_cell.extxyz, structure 0: cell too small: every atom is 0.02 Å from its own periodic image" in message


def test_cell_far_smaller_than_the_cutoff_hits_the_memory_guard(tmp_path, capsys):
    """0.5 Å cell at a 6 Å cutoff: ~7,200 neighbours per atom (used to be built silently)."""
    path = tmp_path / "small_cell.extxyz"
    ase.io.write(path, _cube(0.5))
    message = one_line_error(capsys, main(["data", "info", str(path), "--cutoff", "6"]))
    assert "cell too small for cutoff 6 Å" in message and "neighbours in a cutoff sphere (cap 2000 per atom)" in message
    assert main(["data", "info", str(path), "--cutoff", "1.2"]) == 0  # a cutoff the cell can take


def _raw_lmdb(path, records):
    """An LMDB in our layout holding ``records`` exactly as given (write_lmdb would refuse them)."""
    env = lmdb.open(str(path), subdir=False, lock=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, data in enumerate(records):
            txn.put(str(i).encode(), encode_data(data))
        txn.put(META_KEY, json.dumps({"format": "frameavg-lmdb", "schema_version": 1, "length": len(records),
                                      "metadata": {}}).encode())
    env.close()


@pytest.mark.parametrize("defect, message", [
    ("z200", "invalid record: unknown element: atomic number 200"),
    ("nan", "invalid record: non-finite position (NaN or inf) for atom 2"),
    ("no_cell", "invalid record: missing field 'cell' or 'pbc'"),
    ("tags", "invalid record: tag 7"),
])
def test_our_lmdb_records_are_validated_on_read(tmp_path, capsys, defect, message):
    good = read_structures(shipped_path("rmd17_ethanol/train"))[:3]
    bad = good[1].clone()
    if defect == "z200":
        bad.atomic_numbers[0] = 200
    elif defect == "nan":
        bad.pos[2, 1] = float("nan")
    elif defect == "no_cell":
        del bad.cell
    else:
        bad.tags = torch.full((9,), 7)
    path = tmp_path / "bad.lmdb"
    _raw_lmdb(path, [good[0], bad, good[2]])
    line = one_line_error(capsys, main(["data", "info", str(path)]))
    assert f"bad.lmdb, structure 1: {message}" in line


def test_writing_into_an_unwritable_folder(tmp_path, capsys):
    source = shipped_path("rmd17_ethanol/test")
    code = main(["data", "convert", str(source), "/proc/frameavg-out.lmdb", "--limit", "3", "--no-progress"])
    assert "cannot write /proc/frameavg-out.lmdb" in one_line_error(capsys, code)


@pytest.mark.parametrize("text", ['{"1": 5}', '{"1": {"numbers": [1]}}', '{"ids": [1], "nextid": 2}', "[1, 2"])
def test_garbage_json_files(tmp_path, capsys, text):
    path = tmp_path / "garbage.json"
    path.write_text(text)
    assert "garbage.json" in one_line_error(capsys, main(["data", "info", str(path)]))


def test_pymatgen_style_json_is_read(tmp_path, capsys):
    """A list of pymatgen Structure dicts, as materials data sets ship them (was a 28-line traceback)."""
    structure = {"@module": "pymatgen.core.structure", "@class": "Structure",
                 "lattice": {"matrix": [[0, 1.8, 1.8], [1.8, 0, 1.8], [1.8, 1.8, 0]], "pbc": [True, True, True]},
                 "sites": [{"species": [{"element": "Cu", "occu": 1}], "abc": [0, 0, 0], "xyz": [0, 0, 0]}]}
    path = tmp_path / "structures.json"
    path.write_text(json.dumps([structure, structure]))
    assert main(["data", "info", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "pymatgen-json" and summary["count"] == 2 and summary["elements"] == {"Cu": 2}


@pytest.mark.parametrize("argv, message", [
    (["data", "info", "{data}", "--limit", "-1"], "argument --limit: expected an integer >= 0, got -1"),
    (["symmetry", "--data", "{data}", "--limit", "-3"], "argument --limit: expected an integer >= 0, got -3"),
    (["data", "convert", "{data}", "x.lmdb", "--max-neighbors", "0"], "expected an integer >= 1, got 0"),
])
def test_negative_counts_are_usage_errors(capsys, argv, message):
    data = str(shipped_path("rmd17_ethanol/test"))
    with pytest.raises(SystemExit) as stop:
        main([a.format(data=data) for a in argv])
    assert message in one_line_error(capsys, stop.value.code, expected_code=2)


def test_output_piped_into_head_is_not_an_error():
    command = (f"{sys.executable} -m frameavg.cli.main data info {shipped_path('rmd17_ethanol/test')} --cutoff 0 "
               "| head -n 1")
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().endswith("(format: ase)") and done.stderr == "", done.stderr


def test_stale_temporary_files_are_removed_and_ignored(tmp_path, capsys):
    """A killed writer leaves ``.NAME.tmp-PID-XXXX``: the next write of NAME removes it, and a folder
    of LMDBs never reads it."""
    structures = read_structures(shipped_path("rmd17_ethanol/train"))[:4]
    target = tmp_path / "part.lmdb"
    stale = tmp_path / ".part.lmdb.tmp-999999999-dead"  # no such process
    stale.write_bytes(b"half written")
    live = tmp_path / f".part.lmdb.tmp-{os.getpid()}-live"
    live.write_bytes(b"being written")
    write_lmdb(structures, target)
    assert not stale.exists() and live.exists()
    assert main(["data", "info", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 4
    live.unlink()
    assert remove_stale_temporaries(target) == []


def test_outputs_respect_the_umask(tmp_path, capsys, checkpoint):
    out = tmp_path / "pred.extxyz"
    old = os.umask(0o022)
    try:
        assert main(["predict", "--checkpoint", checkpoint[0], "--data", str(shipped_path("rmd17_ethanol/test")),
                     "--out", str(out), "--batch-size", "256"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_step_checkpoints_are_named_step_n(tmp_path):
    result = train(load_config(None, TINY + [f"run_dir={tmp_path}", "trainer.checkpoint_every_n_steps=1"]))
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*.ckpt"))
    assert names and all(name[len("step-"):-len(".ckpt")].isdigit() for name in names), names
    assert result["checkpoint"].endswith("last.ckpt")


# --------------------------------------------------------------------------- checkpoints and models
def test_checkpoint_whose_weights_do_not_fit_its_config(tmp_path, capsys, checkpoint):
    saved = torch.load(checkpoint[0], map_location="cpu", weights_only=True)
    saved["hyper_parameters"]["config"]["model"]["hidden_channels"] = 48
    edited = tmp_path / "edited.ckpt"
    torch.save(saved, edited)
    code = main(["test", "--checkpoint", str(edited), "--data", str(shipped_path("rmd17_ethanol/test"))])
    assert "weights do not fit the checkpoint's model config" in one_line_error(capsys, code)


def test_random_bytes_as_checkpoint(tmp_path, capsys):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(4096))
    code = main(["test", "--checkpoint", str(junk), "--data", str(shipped_path("rmd17_ethanol/test"))])
    message = one_line_error(capsys, code)
    assert "junk.ckpt: cannot read checkpoint safely (not a PyTorch checkpoint" in message
    assert "weights_only" not in message


def test_unsupported_element_is_a_status_naming_file_structure_and_both_ranges(tmp_path, capsys, checkpoint):
    """Structure 2 holds a mendelevium atom (Z 101: the readers accept it, FAENet does not embed it):
    a warning naming file, structure and both ranges; the other structures are predicted."""
    frames = ase.io.read(shipped_path("rmd17_ethanol/test"), ":4")
    numbers = frames[2].numbers.copy()
    numbers[0] = 101
    frames[2].numbers = numbers
    data = tmp_path / "with_md.extxyz"
    ase.io.write(data, frames)
    out = tmp_path / "pred.extxyz"
    assert main(["predict", "--checkpoint", checkpoint[0], "--data", str(data), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"{data}, structure 2: atomic number 101 (Md): FAENet embeds Z = 1..100 (the readers accept 1..118)" in err
    predicted = ase.io.read(out, ":")
    assert [a.info["status"] == "ok" for a in predicted] == [True, True, False, True]
    assert np.isnan(predicted[2].get_potential_energy()) and np.isfinite(predicted[3].get_potential_energy())


def test_ase_surface_tags_are_read_as_oc20_tags(tmp_path):
    """ASE's fcc111 numbers layers 1 (top) .. 3 and gives adsorbates tag 0 (used to be rejected)."""
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=8.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    path = tmp_path / "slab.extxyz"
    ase.io.write(path, slab)
    (data,) = read_structures(path)
    assert data.tags.tolist() == [0] * 8 + [1] * 4 + [2]
    (as_given,) = read_structures(path, tags="ignore")
    assert "tags" not in as_given


def test_frameavg_help_and_data_formats_import_no_torch():
    code = (
        "import sys\n"
        "from frameavg.cli.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "main(['data', 'formats'])\n"
        "heavy = [m for m in ('torch', 'torch_geometric', 'lightning', 'ase') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "frameavg-lmdb" in done.stdout and "pymatgen-json" in done.stdout
