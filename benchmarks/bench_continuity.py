"""Continuity of FAENet's frame average along seeded random paths, before and after this round's
smooth potential, on issue 30's real structures (numbers for docs/frames.md).

Variants (all frames, float64, random-init FAENet hidden 32, 2 blocks, cutoff 5 Å):

* ``before``: no envelope, GraphNorm, PCA frames of the frame cloud (``periodic="cloud"``), plain
  frame sets: the model as it was;
* ``cloud-continuous``: polynomial envelope, LayerNorm, cloud frames with weights
  (``continuous=True``);
* ``default``: polynomial envelope, LayerNorm, lattice frames for periodic graphs, weights for
  molecules: the new-run default.

Path (``frameavg.evaluation.continuity``): every atom moves along one seeded random direction,
``--steps`` steps of ``--step`` Å RMS per atom; reported: energy jumps (a step above 10x the local
smooth change), the largest step over the median, frame-set changes between consecutive steps,
frames per graph (min-max) and seconds per energy.

``--cost``: frames per graph and the time of one energy + forces (−∂E/∂x) evaluation, before
against default, at the width of ``configs/faenet_*_small.yaml`` (hidden 128, 3 blocks, cutoff
5 Å, float32): 108-atom thermal bulk Cu, Cu(111)+O, and 16 ethanol frames in one batch; median of
``--repeats``, both variants alternating.

Usage::

    python benchmarks/bench_continuity.py [--steps 300] [--step 0.002] [--cost] [--out benchmarks/results/continuity.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data, read_structures
from frameavg.data.neighbors import RadiusGraph
from frameavg.evaluation.continuity import continuity_check, reference_structures
from frameavg.frames import FrameAveraging
from frameavg.models import FAENet
from frameavg.precision import cpu_flags

CUTOFF = 5.0
VARIANTS = {
    "before": dict(envelope="none", norm="graph", periodic="cloud", continuous=False),
    "cloud-continuous": dict(envelope="polynomial", norm="layer", periodic="cloud", continuous=True),
    "default": dict(envelope="polynomial", norm="layer", periodic="lattice", continuous=True),
}


def model(dim: str, envelope: str, norm: str, periodic: str, continuous: bool) -> FrameAveraging:
    torch.manual_seed(0)
    net = FAENet(cutoff=CUTOFF, hidden_channels=32, num_filters=32, num_interactions=2, num_gaussians=20,
                 tag_hidden_channels=8, pg_hidden_channels=8, phys_embeds=False, max_atomic_number=100,
                 regress_forces=None, envelope=envelope, norm=norm)
    return FrameAveraging(net, dims=dim, method="all", forces=None, cutoff=CUTOFF, periodic=periodic,
                          continuous=continuous).double().eval()


def cost_table(structures, repeats: int) -> list[dict]:
    """Frames per graph and seconds per energy + forces call, ``before`` and ``default`` alternating."""
    graph = RadiusGraph(CUTOFF)
    ethanol = read_structures("shipped:rmd17_ethanol/test", dtype=torch.float32)[:16]
    cases = {"bulk_thermal (108 atoms)": ([structures["bulk_thermal"]], "3D"),
             "slab_adsorbate (37 atoms)": ([structures["slab_adsorbate"]], "2D"),
             "ethanol x16": (None, "3D")}
    rows = []
    for name, (atoms_list, dim) in cases.items():
        datas = ethanol if atoms_list is None else [atoms_to_data(a, dtype=torch.float32) for a in atoms_list]
        batch = Batch.from_data_list([graph(d) for d in datas])
        models = {}
        for variant in ("before", "default"):
            torch.manual_seed(0)
            options = VARIANTS[variant]
            net = FAENet(cutoff=CUTOFF, hidden_channels=128, num_filters=128, num_gaussians=32, num_interactions=3,
                         tag_hidden_channels=0, pg_hidden_channels=16, mp_type="updownscale_base", skip_co=False,
                         second_layer_MLP=False, regress_forces=None, envelope=options["envelope"], norm=options["norm"])
            models[variant] = FrameAveraging(net, dims=dim, method="all", forces="from_energy", cutoff=CUTOFF,
                                             periodic=options["periodic"], continuous=options["continuous"]).eval()
        times = {variant: [] for variant in models}
        for _ in range(repeats):
            for variant, model in models.items():
                started = time.perf_counter()
                model(batch)
                times[variant].append(time.perf_counter() - started)
        for variant, model in models.items():
            frames = model.frames_of(batch).num_frames.tolist()
            rows.append({"case": name, "variant": variant, "frames_per_graph": sorted(set(frames)),
                         "s_per_call": statistics.median(times[variant])})
        rows[-1]["default_over_before"] = rows[-1]["s_per_call"] / rows[-2]["s_per_call"]
        print(json.dumps(rows[-2]), json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--step", type=float, default=0.002)
    parser.add_argument("--structures", default="bulk_thermal,bulk_ideal,slab_adsorbate,slab_ideal,ethanol")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cost", action="store_true", help="only the cost table")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    structures = reference_structures()
    if args.cost:
        report = {"cpu": cpu_flags()["model"], "threads": 1, "cost": cost_table(structures, args.repeats)}
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1) + "\n")
        return
    rows = []
    for name in args.structures.split(","):
        data = atoms_to_data(structures[name], dtype=torch.float64)
        dim = "2D" if name.startswith("slab") else "3D"
        for variant in args.variants.split(","):
            started = time.perf_counter()
            result = continuity_check(model(dim, **VARIANTS[variant]), data, steps=args.steps, step=args.step,
                                      seed=0, cutoff=CUTOFF, batch_size=4).to_dict()
            sizes = result.pop("frame_set_sizes") or [1]
            rows.append({"structure": name, "variant": variant, "frames_min": min(sizes), "frames_max": max(sizes),
                         "s_per_energy": (time.perf_counter() - started) / args.steps, **result})
            print(json.dumps({k: rows[-1][k] for k in ("structure", "variant", "jumps", "max_over_median",
                                                      "frame_changes", "frames_min", "frames_max", "s_per_energy")}),
                  flush=True)
    report = {"cpu": cpu_flags()["model"], "threads": 1, "steps": args.steps, "step_A": args.step, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
