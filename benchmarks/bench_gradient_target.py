"""Cost of the gradient target of ``direct_with_gradient_target`` under frame averaging: through
the frames (this release: the head only in the frame copies, −∂E/∂x of the frame-averaged energy
by ``PhysicalOutputs``) against per copy (before: each copy's −∂E/∂x′ rotated back and averaged,
which misses the derivative through the frames, see docs/conventions.md).

One training step (outputs, losses with ``loss.gradient_weight`` > 0, backward) of the same weights
on the same batch, both variants alternating, median of ``--repeats``; also how far the per-copy
target is from the true one. Cases: FAENet of ``configs/s2ef.yaml`` (2D frames) on 4 slabs of the
shipped EMT dense set, and of ``configs/qm7x.yaml`` (3D) on 16 ethanol molecules, each with
``frames.train`` stochastic (the configs' choice: one frame per graph) and all.

Usage::

    python benchmarks/bench_gradient_target.py [--repeats 5] [--out benchmarks/results/gradient_target.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch_geometric.data import Batch

from frameavg.data import read_structures
from frameavg.frames import FrameAveraging
from frameavg.models import build_model
from frameavg.outputs import DIRECT, GRADIENT_FORCES
from frameavg.precision import cpu_flags
from frameavg.training.config import load_run_config
from frameavg.training.module import AtomisticTask

CONFIGS = Path(__file__).parents[1] / "configs"
CASES = {"s2ef-slabs": ("s2ef.yaml", "shipped:emt_dense/train", 4), "qm7x-ethanol": ("qm7x.yaml", "shipped:rmd17_ethanol/test", 16)}


def tasks(config_file: str, method: str):
    """(through-frames task, per-copy task): the same weights; the per-copy one wraps the model
    built with ``direct_with_gradient_target`` as the wrapper did before."""
    config = load_run_config(CONFIGS / config_file, [f"frames.train={method}", "trainer.precision=32-true"])
    torch.manual_seed(0)
    through = AtomisticTask(config).train()
    per_copy = AtomisticTask(config).train()
    inner = build_model(config.model.name, **config.model.arguments)
    inner.load_state_dict(through.net.model.state_dict())
    frames = config.frames
    per_copy.net = FrameAveraging(inner, dims=frames.dims, method=frames.train, eval_method=frames.eval,
                                  forces=DIRECT, seed=config.seed, periodic=frames.periodic,
                                  continuous=frames.continuous, cutoff=config.data.cutoff).train()
    return config, through, per_copy


def step_seconds(task, batch) -> float:
    task.net.reset_generator(0)
    task.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = task.normalized_outputs(batch)
    task.compute_loss(batch, out)["loss"].backward()
    return time.perf_counter() - start


def run_case(name: str, method: str, repeats: int) -> dict:
    config_file, data, count = CASES[name]
    config, through, per_copy = tasks(config_file, method)
    transform = config.data.neighbors.transform()
    batch = Batch.from_data_list([transform(d) for d in read_structures(data)[:count]])
    times = {"through_frames": [], "per_copy": []}
    for _ in range(repeats):
        times["through_frames"].append(step_seconds(through, batch))
        times["per_copy"].append(step_seconds(per_copy, batch))
    through.net.reset_generator(0)
    per_copy.net.reset_generator(0)
    true_target = through.normalized_outputs(batch)[GRADIENT_FORCES].detach()
    old_target = per_copy.normalized_outputs(batch)[GRADIENT_FORCES].detach()
    median = {key: statistics.median(values) for key, values in times.items()}
    return {"case": name, "frames_train": method, "atoms": int(batch.num_nodes), "graphs": int(batch.num_graphs),
            "step_s": median, "ratio_through_over_per_copy": median["through_frames"] / median["per_copy"],
            "per_copy_target_error_rms": float((old_target - true_target).pow(2).mean().sqrt()),
            "target_rms": float(true_target.pow(2).mean().sqrt())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [run_case(name, method, args.repeats) for name in CASES for method in ("stochastic", "all")]
    record = {"cpu": cpu_flags(), "threads": 1, "repeats": args.repeats, "rows": rows}
    for row in rows:
        print(f"{row['case']:>13} {row['frames_train']:>10}: {row['atoms']} atoms, through frames "
              f"{row['step_s']['through_frames']:.3f} s, per copy {row['step_s']['per_copy']:.3f} s "
              f"({row['ratio_through_over_per_copy']:.2f}x); per-copy target off by "
              f"{row['per_copy_target_error_rms']:.2e} (target RMS {row['target_rms']:.2e}, normalised units)")
    if args.out:
        args.out.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
