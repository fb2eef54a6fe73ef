"""Frames: frameavg's batched frame computation vs a per-graph Python loop doing the same math.

Inputs (real): the first 64 QM9 molecules of the shared subset (3D frames; two of them are
degenerate: C2N2 linear, C4H6 a degenerate pair), 64 rMD17 ethanol structures (3D, none
degenerate: the common path) and the 8 OC20 IS2RE samples (2D frames, periodic: the frame cloud
comes from the batch's neighbour list, cutoff 6 Å, 40 neighbours, built once outside the timed
region as the model needs it anyway; one slab has a degenerate in-plane pair). Scaling rows
(unless ``--no-scaling``): 256 and 1024 QM9 molecules, and 64 and 256 Xu–Kitchin slabs (2D; about
half of them have a degenerate in-plane pair), to show how the ratio grows with the batch.

Timed, all producing canonical positions, canonical cells and rotations of every frame:

* ``batched``: ``frameavg.frames.compute_frames`` on the whole batch (one tensor op per step);
* ``loop``: the same math one graph at a time in Python (centroid or reference-atom edge cloud,
  covariance, ``eigh``, degeneracy classes with the same rules, sign frames, canonical copies;
  degenerate graphs call the same degenerate-frame routines). Its output is checked equal to the
  batched one before timing;
* ``original``: the original ``faenet`` 0.1.3 ``frame_averaging_3D/2D`` per graph, when installed
  (plain PCA of wrapped positions, no degeneracy handling, no periodic cloud: less math; shown for
  context).

Each timing is the best of ``--repeats`` calls, the three implementations alternating (order
flipped every repeat), so load drift on the shared development machine hits them alike; the
minimum is the least disturbed estimate, and the ratio of medians is reported too. One thread:
these are ~10^4-element tensors, where OpenMP threads only add synchronisation (and stall badly on
a loaded machine).
Usage::

    python benchmarks/bench_frames.py [--threads 1] [--repeats 40] [--methods all,stochastic] [--no-scaling] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import ase.io
import torch
from torch_geometric.data import Batch

from frameavg.data import atoms_to_data
from frameavg.data.readers import iter_structures
from frameavg.data.neighbors import RadiusGraph
from frameavg.frames import compute_frames
from frameavg.frames.cloud import FrameCloud, cosine_envelope, periodic_graphs, reference_atoms
from frameavg.frames.compute import DEFAULT_TOL, LINEAR, NONE, PAIR, POINT, TRIPLE, ZERO_EXTENT, frame_sets
from frameavg.frames.methods import FrameMethod

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "real"  # real data kept in the repository
CUTOFF = 6.0
SIGNS = {3: torch.tensor([[a, b, c] for a in (1, -1) for b in (1, -1) for c in (1, -1)], dtype=torch.float64),
         2: torch.tensor([[a, b] for a in (1, -1) for b in (1, -1)], dtype=torch.float64)}


def load_batches(scaling: bool = True) -> dict:
    """{name: (batch, frame dimension)}: the issue's three batches, and (``scaling``) larger real
    batches showing how the ratio grows with the number of graphs."""
    graph = RadiusGraph(CUTOFF, max_neighbors=40)
    keep = ("pos", "atomic_numbers", "cell", "pbc", "natoms")

    def batch(structures):
        data = [d if hasattr(d, "pos") else atoms_to_data(d) for d in structures]
        return Batch.from_data_list([graph(type(d)(**{k: d[k] for k in keep})) for d in data])

    qm9 = ase.io.read(DATA / "qm9_subset" / "qm9_random2000_seed0.extxyz", ":1024" if scaling else ":64")
    batches = {
        "qm9_64 (3D)": (batch(qm9[:64]), "3D"),
        "ethanol_64 (3D)": (batch(ase.io.read(DATA / "rmd17_ethanol" / "train.xyz", ":64")), "3D"),
        "oc20_8 (2D)": (batch(ase.io.read(DATA / "oc20_is2re_samples" / "is2re_bs8.extxyz", ":")), "2D"),
    }
    if scaling:
        slabs = list(itertools.islice(iter_structures(DATA / "xu_kitchin_adsorption"), 256))
        batches.update({
            "qm9_256 (3D)": (batch(qm9[:256]), "3D"),
            "qm9_1024 (3D)": (batch(qm9), "3D"),
            "xu_kitchin_64 (2D)": (batch(slabs[:64]), "2D"),
            "xu_kitchin_256 (2D)": (batch(slabs), "2D"),
        })
    return batches


def batched(batch, method: str, dim: str, generator=None):
    frames = compute_frames(
        batch.pos, batch.batch, batch.num_graphs, method=method, dim=dim, cell=batch.cell, pbc=batch.pbc,
        atomic_numbers=batch.atomic_numbers, edge_index=batch.edge_index, cell_offsets=batch.cell_offsets,
        cutoff=CUTOFF, generator=generator,
    )
    return frames.pos, frames.cell, frames.rotation


def loop(batch, method: str, dim: str, generator=None, tol: float = DEFAULT_TOL):
    """The same math as ``compute_frames``, one graph at a time."""
    spec = FrameMethod.parse(method, dim)
    if spec.kind not in ("all", "stochastic"):
        raise SystemExit("the loop reference implements all/stochastic only")
    d = 3 if dim == "3D" else 2
    ptr = batch.ptr.tolist()
    edge_counts = torch.bincount(batch.batch[batch.edge_index[1]], minlength=batch.num_graphs).tolist()
    periodic = periodic_graphs(batch.cell, batch.pbc, batch.num_graphs, batch.pos.device).tolist()
    positions, cells, rotations = [], [], []
    edge_start = 0
    for g in range(batch.num_graphs):
        lo, hi = ptr[g], ptr[g + 1]
        pos = batch.pos[lo:hi].to(torch.float64)
        cell = batch.cell[g].to(torch.float64)
        t = pos.mean(0)
        if periodic[g]:
            edges = batch.edge_index[:, edge_start:edge_start + edge_counts[g]] - lo
            offsets = batch.cell_offsets[edge_start:edge_start + edge_counts[g]].to(torch.float64)
            z = batch.atomic_numbers[lo:hi]
            ref = reference_atoms(z, torch.zeros_like(z), 1)[edges[1]]
            vec = pos[edges[0, ref]] - pos[edges[1, ref]] + offsets[ref] @ cell
            weight = cosine_envelope(vec.norm(dim=-1), CUTOFF)
            if not bool((weight > 0).any()):  # isolated reference atoms: edges of all atoms
                vec = pos[edges[0]] - pos[edges[1]] + offsets @ cell
                weight = cosine_envelope(vec.norm(dim=-1), CUTOFF)
            vec, weight = vec[weight > 0], weight[weight > 0]
        else:
            vec, weight = pos - t, torch.ones(hi - lo, dtype=torch.float64)
        edge_start += edge_counts[g]
        v = vec[:, :d]
        values, vectors = torch.linalg.eigh((weight[:, None] * v).T @ v)
        values, vectors = values.flip(-1), vectors.flip(-1)
        extent = float((weight * (vec**2).sum(-1)).sum())
        close = (values[:-1] - values[1:]) <= tol * values[0]
        degenerate = bool(close.any()) or extent <= ZERO_EXTENT or (d == 2 and float(values[0]) <= tol * extent)
        if not degenerate:
            frames = vectors[None] * SIGNS[d][:, None, :]
            if spec.proper:
                frames = frames[torch.linalg.det(frames) > 0]
            if d == 2:
                full = torch.zeros(frames.shape[0], 3, 3, dtype=torch.float64)
                full[:, :2, :2], full[:, 2, 2] = frames, 1.0
                frames = full
        else:  # rare: the same routine as the batched code, on this graph alone
            cloud = FrameCloud(vec, weight, torch.zeros(len(vec), dtype=torch.long), t[None], torch.tensor([periodic[g]]))
            frames, _, _ = frame_sets(cloud, 1, spec, tol=tol, max_frames=192)
        if spec.kind == "stochastic":
            pick = int(torch.rand(1, generator=generator, dtype=torch.float64) * frames.shape[0])
            frames = frames[pick:pick + 1]
        positions.append(((pos - t) @ frames).reshape(-1, 3).to(batch.pos.dtype))
        cells.append((cell @ frames).to(batch.cell.dtype))
        rotations.append(frames.to(batch.pos.dtype))
    return torch.cat(positions), torch.cat(cells), torch.cat(rotations)


def degenerate_graphs(batch, dim: str) -> int:
    """How many graphs of the batch take a degenerate-spectrum path (their cost is per batch)."""
    frames = compute_frames(batch.pos, batch.batch, batch.num_graphs, dim=dim, cell=batch.cell, pbc=batch.pbc,
                            atomic_numbers=batch.atomic_numbers, edge_index=batch.edge_index,
                            cell_offsets=batch.cell_offsets, cutoff=CUTOFF)
    return int(((frames.degeneracy != NONE) & (frames.degeneracy != POINT)).sum())


def load_original():
    """The original package via the tests' import helper (as benchmarks/bench_faenet.py); None if absent."""
    path = Path(__file__).resolve().parents[1] / "tests" / "models" / "original_faenet.py"
    spec = importlib.util.spec_from_file_location("original_faenet_helper", path)
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    try:
        helper.import_original_faenet()
    except ImportError:
        return None
    import faenet.frame_averaging

    return faenet.frame_averaging


def original(batch, method: str, dim: str, generator=None):
    from faenet.frame_averaging import frame_averaging_2D, frame_averaging_3D

    run = frame_averaging_3D if dim == "3D" else frame_averaging_2D
    ptr = batch.ptr.tolist()
    out = []
    for g in range(batch.num_graphs):
        out.append(run(batch.pos[ptr[g]:ptr[g + 1]], batch.cell[g], method))
    return out


def timed(functions: dict, repeats: int) -> dict:
    """{name: (best, median) milliseconds per call}. Repeats alternate the functions (order
    flipped every repeat) so that load drift on a shared machine hits all of them alike."""
    for fn in functions.values():
        fn()
    runs = {name: [] for name in functions}
    order = list(functions)
    for repeat in range(repeats):
        for name in (order if repeat % 2 == 0 else order[::-1]):
            start = time.perf_counter()
            functions[name]()
            runs[name].append(time.perf_counter() - start)
    return {name: (min(r) * 1e3, statistics.median(r) * 1e3) for name, r in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--methods", default="all,stochastic")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-scaling", action="store_true", help="only the issue's three batches")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    have_original = load_original() is not None

    results = []
    for name, (batch, dim) in load_batches(scaling=not args.no_scaling).items():
        for method in args.methods.split(","):
            a = batched(batch, method, dim, torch.Generator().manual_seed(0))
            b = loop(batch, method, dim, torch.Generator().manual_seed(0))
            if method == "all":  # stochastic draws differ in order; "all" must match exactly
                for x, y in zip(a, b):
                    assert x.shape == y.shape and torch.allclose(x, y, atol=1e-12), f"{name}: loop differs from batched"
            gen = torch.Generator().manual_seed(0)
            row = {"batch": name, "method": method, "graphs": int(batch.num_graphs), "atoms": int(batch.num_nodes),
                   "frames": int(a[2].shape[0]), "degenerate": degenerate_graphs(batch, dim)}
            functions = {"batched": lambda: batched(batch, method, dim, gen), "loop": lambda: loop(batch, method, dim, gen)}
            if have_original:
                functions["original"] = lambda: original(batch, method, dim)
            for side, (best, median) in timed(functions, args.repeats).items():
                row[f"{side}_ms"], row[f"{side}_median_ms"] = best, median
            row["loop_over_batched"] = row["loop_ms"] / row["batched_ms"]
            row["loop_over_batched_median"] = row["loop_median_ms"] / row["batched_median_ms"]
            if have_original:
                row["original_over_batched"] = row["original_ms"] / row["batched_ms"]
            results.append(row)

    meta = {"threads": args.threads, "torch": torch.__version__, "repeats": args.repeats,
            "load_average": os.getloadavg()[0]}
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s), best of {args.repeats} calls, "
          f"load average {meta['load_average']:.2f}")
    head = (f"{'batch':20s} {'method':11s} {'degenerate':>10s} {'frames':>6s} {'batched ms':>10s} {'loop ms':>8s} "
            f"{'loop/batched':>12s}")
    print(head + (f" {'original ms':>11s} {'orig/batched':>12s}" if have_original else ""))
    for r in results:
        line = (f"{r['batch']:20s} {r['method']:11s} {r['degenerate']:10d} {r['frames']:6d} {r['batched_ms']:10.3f} "
                f"{r['loop_ms']:8.2f} "
                f"{r['loop_over_batched']:11.1f}x")
        if have_original:
            line += f" {r['original_ms']:11.2f} {r['original_over_batched']:11.1f}x"
        print(line)


if __name__ == "__main__":
    main()
