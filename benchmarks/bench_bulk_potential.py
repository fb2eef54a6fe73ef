"""A trained potential on bulk fcc metal, side by side in one run: NVE energy conservation, MD step
cost and relaxations to symmetric minima, for trained checkpoints (e.g. FAENet and PaiNN from
``configs/*_bulk_cu_small.yaml``) with ASE's EMT (the ground truth) as the floor.

1. ``md``: NVE (velocity Verlet, 1 fs, ``--md-steps``), starting from the first test cell sampled at
   600 K with Maxwell-Boltzmann velocities at 600 K (seeded); FrameavgCalculator in float64, 1
   thread. Reports drift (meV/atom/ps), the largest one-step jump of the total energy (meV), its
   range (meV/atom) and s/step (``frameavg.simulation.md``).
2. ``relax``: four 32-atom fcc cells rattled by 0.05 Å and a 107-atom cell with a vacancy, relaxed
   with FIRE and with LBFGS (fmax 0.05 eV/Å, at most 300 steps, float32, the batched engine):
   converged count, steps, wall time, and EMT's largest force at each result (how close to the
   true minimum the model's minimum is).

3. ``slab`` (with ``--slab-checkpoints``, models trained on slabs, e.g. ``configs/emt_dense.yaml``
   and ``configs/painn_emt_dense.yaml``): a Cu(111) slab with O on an fcc hollow, free atoms
   rattled by 0.05 Å (``frameavg.evaluation.continuity.cu111_slab``, 3 seeds), relaxed with FIRE and LBFGS
   as above, and NVE of the same slab (1 fs, ``--md-steps``, 300 K start).

Usage::

    python benchmarks/bench_bulk_potential.py --checkpoints faenet=RUN/checkpoints/best.ckpt,painn=... \
        --data bulk_cu --out benchmarks/results/bulk_potential.json [--md-steps 2000] [--tables md,relax]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.emt import EMT

from frameavg.data import read_structures
from frameavg.data.atomic_data import data_to_atoms
from frameavg.precision import cpu_flags
from frameavg.simulation import FrameavgCalculator, relax
from frameavg.simulation.md import run_md


def start_cell(data_dir: Path, temperature_K: float = 600.0):
    """The first test cell sampled at ``temperature_K`` (ase.Atoms)."""
    for data in read_structures(str(data_dir / "test.extxyz"), dtype=torch.float64):
        atoms = data_to_atoms(data)
        if abs(float(atoms.info.get("temperature_K", temperature_K)) - temperature_K) < 1e-6:
            return atoms
    raise SystemExit(f"no test cell at {temperature_K} K in {data_dir}")


def md_row(name: str, calculator, atoms, steps: int) -> dict:
    started = time.perf_counter()
    result = run_md(atoms, calculator, ensemble="nve", temperature_K=600.0, timestep_fs=1.0, steps=steps, every=10,
                    seed=0)
    row = {"model": name, **result.summary(), "s_per_step": (time.perf_counter() - started) / max(steps, 1)}
    row["final_temperature_K"] = float(result.temperatures_K[-1]) if result.temperatures_K else None
    return row


def relax_structures(lattice_constant: float) -> tuple[list, list[str]]:
    cells, names = [], []
    for seed in range(4):
        atoms = bulk("Cu", "fcc", a=lattice_constant, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=seed)
        cells.append(atoms)
        names.append(f"fcc32_rattled_{seed}")
    vacancy = bulk("Cu", "fcc", a=lattice_constant, cubic=True).repeat(3)
    del vacancy[0]
    vacancy.rattle(0.05, seed=10)
    cells.append(vacancy)
    names.append("fcc107_vacancy")
    return cells, names


def emt_fmax(atoms) -> float:
    probe = atoms.copy()
    probe.calc = EMT()
    return float(np.linalg.norm(probe.get_forces(), axis=1).max())


def relax_row(name: str, provider, optimizer: str, structures, names) -> dict:
    started = time.perf_counter()
    relaxed = relax(structures, provider, optimizer=optimizer, fmax=0.05, steps=300, dtype="float32")
    wall = time.perf_counter() - started
    per = [{"structure": label, "status": out.info["status"], "steps": out.info["steps"],
            "model_fmax": out.info["fmax"], "emt_fmax": emt_fmax(out)} for label, out in zip(names, relaxed)]
    return {"model": name, "optimizer": optimizer, "converged": sum(p["status"] == "converged" for p in per),
            "of": len(per), "steps": [p["steps"] for p in per], "wall_s": wall, "structures": per}


def slab_rows(checkpoints: dict, md_steps: int) -> dict:
    from frameavg.evaluation.continuity import cu111_slab

    slabs = [cu111_slab(adsorbate="O", rattle=0.05, seed=seed) for seed in range(3)]
    names = [f"cu111_O_hollow_rattled_{seed}" for seed in range(3)]
    slab = slabs[0]
    relax_rows = []
    for optimizer in ("fire", "lbfgs"):
        relax_rows.append(relax_row("EMT", EMT(), optimizer, slabs, names))
        for name, path in checkpoints.items():
            relax_rows.append(relax_row(name, path, optimizer, slabs, names))
            print(json.dumps({k: v for k, v in relax_rows[-1].items() if k != "structures"}), flush=True)
    md_rows = []
    for name, calculator in [("EMT", EMT())] + [(n, FrameavgCalculator(checkpoint=p, dtype="float64"))
                                                for n, p in checkpoints.items()]:
        result = run_md(slab, calculator, ensemble="nve", temperature_K=300.0, timestep_fs=1.0, steps=md_steps,
                        every=10, seed=0)
        md_rows.append({"model": name, **result.summary()})
        print(json.dumps(md_rows[-1]), flush=True)
    return {"relax": relax_rows, "md": md_rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", required=True, help="name=path,name=path")
    parser.add_argument("--data", type=Path, required=True, help="folder of `frameavg data generate-bulk`")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--md-steps", type=int, default=2000)
    parser.add_argument("--tables", default="md,relax")
    parser.add_argument("--slab-checkpoints", default=None, help="name=path,... of models trained on slabs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoints.split(","))
    tables = args.tables.split(",")
    metadata = json.loads((args.data / "metadata.json").read_text())
    report = {"cpu": cpu_flags()["model"], "threads": 1, "data": str(args.data), "checkpoints": checkpoints}
    if "md" in tables:
        atoms = start_cell(args.data)
        rows = [md_row("EMT", EMT(), atoms, args.md_steps)]
        for name, path in checkpoints.items():
            rows.append(md_row(name, FrameavgCalculator(checkpoint=path, dtype="float64"), atoms, args.md_steps))
            print(json.dumps(rows[-1]), flush=True)
        report["md"] = rows
    if "relax" in tables:
        structures, names = relax_structures(metadata["lattice_constant_A"])
        rows = []
        for optimizer in ("fire", "lbfgs"):
            rows.append(relax_row("EMT", EMT(), optimizer, structures, names))
            for name, path in checkpoints.items():
                rows.append(relax_row(name, path, optimizer, structures, names))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "structures"}), flush=True)
        report["relax"] = rows
    if args.slab_checkpoints:
        report["slab"] = slab_rows(dict(item.split("=", 1) for item in args.slab_checkpoints.split(",")),
                                   args.md_steps)
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
