"""FAENet: frameavg vs the original ``faenet`` 0.1.3, side by side in one process.

Same real batches, same weights (ours loaded from the original's state dict), inference and one
training step (forward, loss, backward, AdamW step), graphs per second and the ratio ours/original:

* ``qm9``:   QM9 paper config on 64 QM9 molecules (cutoff 6 Å, 30 neighbours), energy only;
* ``is2re``: IS2RE paper config on the 8 OC20 IS2RE samples (cutoff 6 Å, 40 neighbours) with 2D
  SE(3) frames: one random frame per graph in training, both proper frames at inference. The
  original uses its own frame code (per-graph transform, then ``model_forward``, which deep-copies
  the batch per frame); frameavg uses ``frameavg.frames.FrameAveraging`` (one enlarged batch);
* ``s2ef``:  S2EF paper config on 64 rMD17 ethanol frames (cutoff 6 Å, 30 neighbours), direct
  forces with the energy-gradient target (loss E + 30 F + 10 gradient-target, as the paper).

Each row also gives the matrix-product GFLOP of one step on each side (``torch.utils.flop_counter``),
the work ratio that bounds the speed-up where these products dominate.

Repeats alternate the two implementations (order flipped every repeat) so machine-load drift hits
both. On a shared machine wall-clock times are inflated by other processes, so the report gives,
for each side, the best wall time over the repeats (graphs/s), the ratio of best times, the ratio of
median wall times and the ratio of median process CPU times (user + system over all threads, which
other processes do not inflate as much), and the load average before and after. Usage::

    python benchmarks/bench_faenet.py [--threads 2] [--repeats 5] [--configs qm9,is2re,s2ef]
                                      [--compile] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import ase.io
import torch
from torch.utils import flop_counter
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import RadiusGraph
from frameavg.models import FAENet
from frameavg.models.faenet import PAPER_CONFIGS
from frameavg.models.faenet_checkpoint import load_original_state_dict

REPO = Path(__file__).resolve().parents[1]

CONFIGS = PAPER_CONFIGS
FORCE_WEIGHT, GRADIENT_WEIGHT = 30.0, 10.0


def load_original():
    """The original package via the tests' import helper (stand-in torch_scatter, element table)."""
    path = REPO / "tests" / "models" / "original_faenet.py"
    spec = importlib.util.spec_from_file_location("original_faenet_helper", path)
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    return helper.import_original_faenet()


def load_batch(name: str, data_root: Path) -> Batch:
    config = CONFIGS[name]
    graph = RadiusGraph(config["cutoff"], config["max_num_neighbors"])
    if name == "qm9":
        atoms = ase.io.read(data_root / "qm9_subset" / "qm9_random2000_seed0.extxyz", ":64")
        keys = {"energy": "InternalEnergy_0K_au"}
    elif name == "is2re":
        atoms = ase.io.read(data_root / "oc20_is2re_samples" / "is2re_bs8.extxyz", ":")
        keys = {"energy": "y_relaxed"}
    else:
        atoms = ase.io.read(data_root / "rmd17_ethanol" / "train.xyz", ":64")
        keys = None
    graphs = []
    for a in atoms:
        data = graph(atoms_to_data(a, keys=keys, required=("energy",)))
        if getattr(data, "tags", None) is None:
            data.tags = torch.zeros(data.num_nodes, dtype=torch.long)  # the original requires tags
        graphs.append(data)
    batch = Batch.from_data_list(graphs)
    batch.energy = (batch.energy - batch.energy.mean()) / batch.energy.std().clamp(min=1e-8)
    if name == "s2ef":
        batch.forces = batch.forces / batch.forces.std()
    return batch


# ----------------------------------------------------------------- the original's frame pipeline
def original_frames(faenet, batch: Batch, method: str) -> Batch:
    """Per-graph 2D frames with the original transform, collated frame by frame."""
    transform = faenet.transforms.FrameAveraging("2D", method)
    graphs = [transform(batch.get_example(i)) for i in range(batch.num_graphs)]
    out = batch.clone()
    frames = len(graphs[0].fa_pos)
    out.fa_pos = [torch.cat([g.fa_pos[k] for g in graphs]) for k in range(frames)]
    out.fa_cell = [torch.cat([g.fa_cell[k] for g in graphs]) for k in range(frames)]
    out.fa_rot = [torch.cat([g.fa_rot[k] for g in graphs]) for k in range(frames)]
    return out


def make_steps(name, faenet, original, ours, batch, ours_fa):
    """(inference, train_step) callables for the original and for frameavg."""
    with_forces = "regress_forces" in CONFIGS[name]
    batches = {"original": batch.clone(), "frameavg": batch.clone()}
    optimisers = {
        "original": torch.optim.AdamW(original.parameters(), lr=1e-5),
        "frameavg": torch.optim.AdamW(ours.parameters(), lr=1e-5),
    }

    def loss_of(preds, b, gradient_key):
        loss = torch.nn.functional.mse_loss(preds["energy"].view(-1), b.energy)
        if with_forces:
            loss = loss + FORCE_WEIGHT * torch.nn.functional.mse_loss(preds["forces"], b.forces)
            loss = loss + GRADIENT_WEIGHT * torch.nn.functional.mse_loss(preds["forces"], preds[gradient_key])
        return loss

    def original_predict(mode):
        b = batches["original"]
        if name == "is2re":
            fa_batch = original_frames(faenet, b, "se3-all" if mode == "inference" else "se3-stochastic")
            return faenet.fa_forward.model_forward(fa_batch, original, "2D", mode=mode, crystal_task=True), b
        return original(b, mode=mode), b

    def ours_predict():
        b = batches["frameavg"]
        return (ours_fa(b) if ours_fa is not None else ours(b)), b

    def original_inference():
        original.eval()
        with torch.no_grad():
            original_predict("inference")

    def ours_inference():
        (ours_fa or ours).eval()
        with torch.no_grad():
            ours_predict()

    def original_train():
        original.train()
        optimisers["original"].zero_grad(set_to_none=True)
        preds, b = original_predict("train")
        loss_of(preds, b, "forces_grad_target").backward()
        optimisers["original"].step()

    def ours_train():
        (ours_fa or ours).train()
        optimisers["frameavg"].zero_grad(set_to_none=True)
        preds, b = ours_predict()
        loss_of(preds, b, "gradient_forces").backward()
        optimisers["frameavg"].step()

    return {
        "inference": (original_inference, ours_inference),
        "train_step": (original_train, ours_train),
    }


@flop_counter.register_flop_formula(torch.ops.aten.addmm_)
def _addmm_inplace_flop(self_shape, a_shape, b_shape, out_shape=None, **kwargs):
    return flop_counter.mm_flop(a_shape, b_shape)


def count_flops(fn) -> int:
    """Matrix-product FLOPs of one call (torch.utils.flop_counter, in-place addmm_ included)."""
    with flop_counter.FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def time_pair(original_fn, ours_fn, iterations: int, repeats: int, warmup: int = 2, extra: dict | None = None):
    """Wall and CPU seconds per call, per repeat, for both implementations (and ``extra``
    {label: fn}, e.g. frameavg under bf16 autocast), interleaved within each repeat."""
    functions = {"original": original_fn, "frameavg": ours_fn, **(extra or {})}
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    wall = {label: [] for label in functions}
    cpu = {label: [] for label in functions}
    for r in range(repeats):
        order = list(functions.items())
        for label, fn in order if r % 2 == 0 else order[::-1]:
            start, start_cpu = time.perf_counter(), os.times()
            for _ in range(iterations):
                fn()
            end_cpu = os.times()
            wall[label].append((time.perf_counter() - start) / iterations)
            cpu[label].append((end_cpu.user - start_cpu.user + end_cpu.system - start_cpu.system) / iterations)
    return wall, cpu


def run(args) -> dict:
    from frameavg.precision import cpu_flags, resolve

    torch.set_num_threads(args.threads)
    bf16 = resolve("bf16-mixed", "cpu", allow_emulated=args.bf16_emulated) if args.bf16 else None
    faenet = load_original()
    results = []
    for name in args.configs:
        batch = load_batch(name, args.data)
        torch.manual_seed(0)
        random.seed(0)
        config = {k: v for k, v in CONFIGS[name].items()}
        original = faenet.FAENet(**config)
        ours = load_original_state_dict(original.state_dict(), config)
        ours_fa = None
        if name == "is2re":
            from frameavg.frames.averaging import FrameAveraging

            ours_fa = FrameAveraging(ours, dims="2D", method="se3-stochastic", eval_method="se3-all", forces=None)
        if args.compile:
            # The gradient target keeps the graph for the loss backward (retain_graph), which
            # compiled backwards with donated buffers refuse.
            torch._functorch.config.donated_buffer = False
            ours.forward = torch.compile(ours.forward, dynamic=True)
        steps = make_steps(name, faenet, original, ours, batch, ours_fa)
        for mode in args.modes:
            load_before = os.getloadavg()[0]
            iterations = args.iterations.get(name, 1)
            flops = [count_flops(fn) for fn in steps[mode]] if not args.compile else [0, 0]
            extra = {}
            if args.bf16:
                ours_fn = steps[mode][1]

                def ours_bf16(fn=ours_fn):
                    with bf16.context():
                        fn()

                extra["frameavg_bf16"] = ours_bf16
            wall, cpu = time_pair(*steps[mode], iterations=iterations, repeats=args.repeats, extra=extra)
            load_after = os.getloadavg()[0]
            graphs = batch.num_graphs
            best = {k: min(v) for k, v in wall.items()}
            row = {
                "config": name,
                "mode": mode,
                "graphs": graphs,
                "atoms": batch.num_nodes,
                "edges": int(batch.edge_index.shape[1]),
                "original_graphs_per_s": graphs / best["original"],
                "frameavg_graphs_per_s": graphs / best["frameavg"],
                "ratio_best": best["original"] / best["frameavg"],
                "ratio_median_wall": statistics.median(wall["original"]) / statistics.median(wall["frameavg"]),
                "ratio_median_cpu": statistics.median(cpu["original"]) / statistics.median(cpu["frameavg"]),
                "original_gflop": flops[0] / 1e9,
                "frameavg_gflop": flops[1] / 1e9,
                "original_wall_ms": [1e3 * t for t in wall["original"]],
                "frameavg_wall_ms": [1e3 * t for t in wall["frameavg"]],
                "original_cpu_ms": [1e3 * t for t in cpu["original"]],
                "frameavg_cpu_ms": [1e3 * t for t in cpu["frameavg"]],
                "load_average": [load_before, load_after],
            }
            if args.bf16:
                # per-repeat ratios (interleaved): the gain of switching from the original in float32
                row["bf16_ran_as"] = bf16.name
                row["bf16_ratio_to_original_median"] = statistics.median(
                    o / b for o, b in zip(wall["original"], wall["frameavg_bf16"]))
                row["bf16_ratio_to_frameavg32_median"] = statistics.median(
                    f / b for f, b in zip(wall["frameavg"], wall["frameavg_bf16"]))
                row["frameavg_bf16_wall_ms"] = [1e3 * t for t in wall["frameavg_bf16"]]
            results.append(row)
            if not args.json:
                print(
                    f"{name:6s} {mode:10s} original {row['original_graphs_per_s']:8.1f} graphs/s   "
                    f"frameavg {row['frameavg_graphs_per_s']:8.1f} graphs/s   ratio best {row['ratio_best']:.2f}  "
                    f"median wall {row['ratio_median_wall']:.2f}  median cpu {row['ratio_median_cpu']:.2f}  "
                    f"GFLOP {row['original_gflop']:.1f}/{row['frameavg_gflop']:.1f}   "
                    f"load {load_before:.1f}->{load_after:.1f}"
                    + (f"   bf16 ({bf16.name}) vs original {row['bf16_ratio_to_original_median']:.2f}, "
                       f"vs ours fp32 {row['bf16_ratio_to_frameavg32_median']:.2f}" if args.bf16 else ""),
                    flush=True,
                )
    return {
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "compile": args.compile,
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--configs", default="qm9,is2re,s2ef", type=lambda s: s.split(","))
    parser.add_argument("--modes", default="inference,train_step", type=lambda s: s.split(","))
    parser.add_argument("--compile", action="store_true", help="torch.compile frameavg's FAENet")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--bf16", action="store_true",
                        help="add frameavg under bf16-mixed (falls back to float32 on a CPU without bf16 instructions)")
    parser.add_argument("--bf16-emulated", action="store_true", help="with --bf16: run bf16 even without bf16 hardware")
    args = parser.parse_args()
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown config(s) {sorted(unknown)}")
    args.iterations = {"qm9": 1, "is2re": 1, "s2ef": 1}
    report = run(args)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")


if __name__ == "__main__":
    main()
