"""Kill a training run mid-epoch, resume from its last step checkpoint: same final weights."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from frameavg.training.config import load_config
from tiny import ETHANOL, TINY_MODEL

from frameavg.training.run import train

OVERRIDES = TINY_MODEL + ETHANOL + [
    "data.max_train=24", "data.val_fraction=0.01", "data.batch_size=8", "optim.max_epochs=3",
    "optim.warmup_steps=2", "trainer.checkpoint_every_n_steps=1",
]
KILL_AT_STEP = 4  # 3 steps per epoch: step 4 is in the middle of the second epoch


def _weights(checkpoint) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    reference = train(load_config(None, OVERRIDES + [f"run_dir={tmp_path / 'a'}", "name=run"]))

    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(load_config(None, OVERRIDES + [f"run_dir={tmp_path / 'b'}", "name=run"])))
    process = subprocess.Popen([sys.executable, "-m", "frameavg.cli.main", "train", str(config_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    target = tmp_path / "b" / "run" / "checkpoints" / f"step-{KILL_AT_STEP}.ckpt"
    written = target.with_name(f"step-{KILL_AT_STEP + 1}.ckpt")  # then the target is complete
    deadline = time.time() + 300
    while not written.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert target.exists(), "the killed run wrote no mid-epoch checkpoint"

    resumed = train(load_config(config_path), resume=str(target))
    expected, got = _weights(reference["checkpoint"]), _weights(resumed["checkpoint"])
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=1e-6)
