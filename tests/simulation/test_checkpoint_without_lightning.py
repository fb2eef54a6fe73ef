"""Inference from a checkpoint imports no Lightning: ``Potential.from_checkpoint``, ``frameavg
predict`` and ``frameavg test`` in a fresh interpreter, with the numbers of the training task."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
import torch
from torch_geometric.data import Batch

from frameavg.data import read_structures
from frameavg.data.shipped import shipped_path
from frameavg.simulation.potential import Potential
from frameavg.training.checkpoint_io import load_trained_model
from frameavg.training.config import load_config
from frameavg.training.network import graph_transform
from frameavg.training.run import load_task, train
from tiny import ETHANOL, TINY_MODEL

LIGHTNING = ("lightning", "lightning.pytorch", "pytorch_lightning")

#: Run in a fresh interpreter: argv = checkpoint, structures file, output folder; prints JSON.
CHILD = """
import json, sys
from pathlib import Path
import ase.io

def lightning():
    return sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))

checkpoint, data, out = sys.argv[1:4]
from frameavg.simulation.potential import Potential
potential = Potential.from_checkpoint(checkpoint)
graphs = [potential.graph(potential.to_data(atoms)) for atoms in ase.io.read(data, ":")]
result = potential(potential.batch(graphs))
report = {"energy": result["energy"].tolist(), "forces": result["forces"].tolist(), "after_potential": lightning()}
from frameavg.cli.main import main
assert main(["predict", "--checkpoint", checkpoint, "--data", data, "--out", str(Path(out) / "p.extxyz")]) == 0
report["after_predict"] = lightning()
assert main(["test", "--checkpoint", checkpoint, "--data", data, "--json"]) == 0
report["after_test"] = lightning()
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("runs")
    overrides = [o for o in TINY_MODEL if "regress_forces" not in o] + ["model.regress_forces=null"] + ETHANOL + [
        "data.max_train=32", "data.val_fraction=0.1", "optim.max_epochs=1", f"run_dir={run_dir}"]
    return train(load_config(None, overrides))["checkpoint"]


@pytest.fixture(scope="module")
def structures_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "ethanol.extxyz"
    ase.io.write(path, ase.io.read(shipped_path("rmd17_ethanol/test"), ":3"))
    return path


def test_inference_imports_no_lightning_and_matches_the_task(checkpoint, structures_file, tmp_path):
    run = subprocess.run([sys.executable, "-c", CHILD, checkpoint, str(structures_file), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("REPORT "))[7:])
    for stage in ("after_potential", "after_predict", "after_test"):
        assert not set(report[stage]) & set(LIGHTNING), f"{stage}: {report[stage]}"
    assert (tmp_path / "p.extxyz").is_file()

    reference = Potential.from_task(load_task(checkpoint))
    graphs = [reference.graph(reference.to_data(atoms)) for atoms in ase.io.read(structures_file, ":")]
    expected = reference(reference.batch(graphs))
    torch.testing.assert_close(torch.tensor(report["energy"], dtype=torch.float64), expected["energy"],
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.tensor(report["forces"], dtype=torch.float64), expected["forces"],
                               rtol=0, atol=1e-10)


def test_trained_model_predicts_as_the_task(checkpoint, structures_file):
    """The Lightning-free ``TrainedModel`` has the task's weights and records and gives its
    predictions (eV, eV/Å) bit for bit."""
    task, model = load_task(checkpoint), load_trained_model(checkpoint)
    assert model.training_elements == task.training_elements
    assert model.precision_record == task.precision_record
    assert model.state_dict().keys() == task.state_dict().keys()
    transform = graph_transform(model.config.data)
    batch = Batch.from_data_list([transform(d) for d in read_structures(structures_file)])
    with torch.no_grad():
        ours, theirs = model(batch), task(batch)
    assert set(ours) == set(theirs) >= {"energy", "forces"}
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
