"""benchmarks/gpu_check.sh runs everywhere: on a machine without a GPU, its CPU smoke version
(cuda tests skipped, a short interleaved 32-true/bf16-mixed bench) writes the JSON report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_writes_one_report(tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["device"] in ("cpu", "cuda") and set(report["cpu"]) >= {"avx512_bf16", "amx_bf16"}
    assert report["tests"]["exit_code"] == 0
    precisions = {(r["model"], r["precision"]) for r in report["bench"]}
    assert ("faenet", "bf16-mixed") in precisions and ("faenet", "32-true") in precisions
    assert all(r["graphs_per_s"] > 0 for r in report["bench"])
