"""Neighbour-list construction: frameavg (vesin) vs ``ase.neighborlist.neighbor_list``.

Runs both on the same real structures in one process and reports the time per structure set and
the ratio. Usage: ``python benchmarks/bench_neighbors.py [--data tests/data/real] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase.io
import torch
from ase.neighborlist import neighbor_list as ase_neighbor_list

from frameavg.data import atoms_to_data
from frameavg.data.neighbors import neighbor_list

REPO = Path(__file__).resolve().parents[1]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench(name, structures, cutoff, max_neighbors, repeats):
    datas = [atoms_to_data(a, dtype=torch.float64) for a in structures]

    def ours():
        for d in datas:
            neighbor_list(d.pos, d.cell[0], d.pbc[0], cutoff, max_neighbors, strict=False)

    def ase_nl():
        for a in structures:
            ase_neighbor_list("ijSd", a, cutoff)

    t_ours, t_ase = best_of(ours, repeats), best_of(ase_nl, repeats)
    return {
        "dataset": name,
        "structures": len(structures),
        "cutoff": cutoff,
        "max_neighbors": max_neighbors,
        "frameavg_ms": 1e3 * t_ours,
        "ase_ms": 1e3 * t_ase,
        "speedup": t_ase / t_ours,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "tests" / "data" / "real")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    oc20 = ase.io.read(args.data / "oc20_is2re_samples" / "is2re_bs8.extxyz", ":")
    qm9 = ase.io.read(args.data / "qm9_subset" / "qm9_random2000_seed0.extxyz", ":")
    records = [
        bench("oc20_is2re_8", oc20, 6.0, None, args.repeats),
        bench("oc20_is2re_8", oc20, 6.0, 50, args.repeats),
        bench("qm9_2000", qm9, 6.0, None, max(1, args.repeats // 2)),
    ]
    if args.json:
        print(json.dumps(records, indent=2))
        return
    print(f"{'dataset':<14}{'n':>6}{'max_nb':>8}{'frameavg ms':>13}{'ASE ms':>10}{'ASE/ours':>10}")
    for r in records:
        print(f"{r['dataset']:<14}{r['structures']:>6}{str(r['max_neighbors']):>8}"
              f"{r['frameavg_ms']:>13.1f}{r['ase_ms']:>10.1f}{r['speedup']:>10.1f}")


if __name__ == "__main__":
    main()
