#!/usr/bin/env bash
# The GPU check, one command (sized for at most 8 minutes on a CUDA machine; not yet run on one):
#   1. the tests marked `cuda` (every model, frames, FrameAveraging, training steps in 32-true,
#      bf16-mixed and 16-mixed, the calculator and a batched relaxation, GPU against CPU);
#   2. `frameavg bench --device cuda` in 32-true and bf16-mixed, interleaved (ratios in one run),
#      at the paper (OC20) and equal-width configurations;
#   3. one JSON document with the GPU name, the CPU flags, the test outcome and the figures.
# Without a GPU the same script runs a CPU smoke version (tests skipped, a short bench); CI runs it.
#
# Usage: benchmarks/gpu_check.sh [OUT.json]     (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check.json}
PY=${PYTHON:-.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda
    BENCH=(--device cuda --configs paper,equal-width --precision 32-true,bf16-mixed --rounds 5
           --min-seconds 2 --max-steps 20)
else
    DEVICE=cpu
    BENCH=(--device cpu --models faenet --configs equal-width --precision 32-true,bf16-mixed
           --inference-only --rounds 2 --min-seconds 0 --max-steps 2 --threads 1 --no-memory)
fi

set +e
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py > "$WORK/tests.txt" 2>&1
TESTS_RC=$?
set -e
# pytest: 0 all passed, 5 nothing collected; skipped tests (no GPU) are collected and pass as 0
if [ "$TESTS_RC" -ne 0 ]; then
    tail -40 "$WORK/tests.txt" >&2
fi
"$PY" -m frameavg.cli.main bench "${BENCH[@]}" --json > "$WORK/bench.json"

"$PY" - "$DEVICE" "$TESTS_RC" "$WORK" "$OUT" <<'PYTHON'
import json, os, sys, tempfile
import torch
from frameavg.precision import cpu_flags
device, tests_rc, work, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
summary = open(os.path.join(work, "tests.txt")).read().strip().splitlines()
report = {
    "device": device,
    "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
    "torch": torch.__version__, "cuda": torch.version.cuda,
    "cpu": cpu_flags(),
    "tests": {"exit_code": tests_rc, "summary": summary[-1] if summary else ""},
    "bench": json.load(open(os.path.join(work, "bench.json"))),
}
directory = os.path.dirname(os.path.abspath(out))
handle, temporary = tempfile.mkstemp(dir=directory, prefix=".gpu_check.")
with os.fdopen(handle, "w") as stream:
    json.dump(report, stream, indent=1)
os.replace(temporary, out)
print(f"{device}: tests {report['tests']['summary']!r}; {len(report['bench'])} bench records -> {out}")
PYTHON
exit "$TESTS_RC"
