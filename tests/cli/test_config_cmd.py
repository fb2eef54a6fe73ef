"""`frameavg config`: the resolved, checked configuration of a run, and the key reference."""

import dataclasses
import json
from pathlib import Path

import yaml

from frameavg.cli.main import main
from frameavg.training.config import load_config
from frameavg.training.config_sections import RunConfig

CONFIG = str(Path(__file__).parents[2] / "configs" / "emt_dense.yaml")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_config_resolved_with_overrides_is_what_the_run_reads(capsys):
    code, out, err = run(capsys, "config", CONFIG, "optim.lr=2e-3", "--json")
    assert code == 0 and err == ""
    document = json.loads(out)
    assert document == load_config(CONFIG, ["optim.lr=2e-3"]) and document["optim"]["lr"] == 0.002
    assert document["frames"]["cloud_cutoff"] is None and document["data"]["cutoff"] == 6.0
    code, out, _ = run(capsys, "config", CONFIG)
    assert code == 0 and yaml.safe_load(out) == load_config(CONFIG)


def test_the_key_reference_lists_every_key_with_its_unit(capsys):
    code, out, _ = run(capsys, "config", "--keys", "--json")
    rows = {row["key"]: row for row in json.loads(out)["keys"]}
    assert code == 0
    expected = {f"{name}.{item.name}" for name, section in RunConfig.SECTIONS.items()
                for item in dataclasses.fields(section) if not item.metadata["written_as"]}
    assert expected <= set(rows) and {"name", "seed", "run_dir", "plugins"} <= set(rows)
    # the model's and Lightning's own arguments are written beside the typed keys, not under a key
    assert {"model.<constructor argument>", "trainer.<lightning.Trainer argument>"} <= set(rows)
    assert "model.arguments" not in rows and "trainer.lightning" not in rows
    assert rows["data.cutoff"]["unit"] == "Å" and rows["data.cutoff"]["default"] == 6.0
    code, out, _ = run(capsys, "config", "--keys")
    assert code == 0 and len(out.splitlines()) == len(rows)


def test_a_config_that_would_fail_a_run_is_one_line_on_stderr(capsys):
    code, out, err = run(capsys, "config", CONFIG, "data.cutoff=4.0")
    assert code != 0 and out == ""
    assert err.strip().count("\n") == 0 and "model.cutoff 6 Å exceeds data.cutoff 4 Å" in err
    code, _, err = run(capsys, "config", CONFIG, "optim.lrr=1")
    assert code != 0 and "did you mean 'optim.lr'" in err
