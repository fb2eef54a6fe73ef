"""`frameavg relax` and `frameavg md`: a trained model driving relaxations and molecular dynamics."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from frameavg.cli.commands import (add_checkpoint_args, add_precision_args, command_help, nonnegative_int, positive_int,
                                   runtime_precision)


def register(sub) -> None:
    p = sub.add_parser(
        "relax", help=command_help("relax"),
        description="Relax every structure of FILE with its own FIRE or LBFGS optimiser, all of them evaluated as "
                    "one batch per step (structures leave the batch as they converge). With pos_relaxed / "
                    "energy_relaxed (y_relaxed) in the data, reports the OC20 IS2RS metric (ADwT) and the "
                    "relaxed-energy MAE and EwT. Sharded over processes with --devices N (or torchrun/SLURM).")
    _add_model_args(p)
    p.add_argument("--out", required=True, help="relaxed structures: .extxyz (written atomically)")
    p.add_argument("--optimizer", default="fire", choices=["fire", "lbfgs"],
                   help="fire: ASE's FIRE; lbfgs: ASE's LBFGS with OCP's AdsorbML settings (maxstep 0.04, memory 50)")
    p.add_argument("--fmax", type=float, default=0.05, help="convergence: largest force below this, eV/Å")
    p.add_argument("--steps", type=nonnegative_int, default=300, help="maximum optimiser steps per structure")
    p.add_argument("--relax-cell", action="store_true", help="relax the cell too (bulk structures)")
    p.add_argument("--traj", default=None, metavar="DIR", help="write every structure's trajectory to DIR/INDEX.traj")
    p.add_argument("--max-atoms", type=positive_int, default=None, help="atoms evaluated together (default: all)")
    p.add_argument("--devices", "--trainer.devices", type=positive_int, default=1, dest="devices",
                   help="processes (CPU) or GPUs to shard the structures over")
    p.add_argument("--strategy", "--trainer.strategy", default="ddp", choices=["ddp", "auto"], dest="strategy",
                   help="launcher for --devices > 1 (Lightning's DDP, as training)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=run_relax)

    p = sub.add_parser(
        "md", help=command_help("md"),
        description="Molecular dynamics of one structure with ASE's integrators and the model as calculator "
                    "(Verlet neighbour list, frames at every step, conservative forces). Reports steps/s, the NVE "
                    "energy drift (meV/atom/ps), the largest one-step jump of the total energy (meV), its range "
                    "(meV/atom) and the stability time (first bond off by > 0.5 Å).")
    _add_model_args(p)
    p.add_argument("--index", type=nonnegative_int, default=0, help="structure of FILE to simulate (default 0)")
    p.add_argument("--ensemble", default="nve", choices=["nve", "langevin", "bussi"])
    p.add_argument("--temperature", type=float, default=300.0, help="initial / thermostat temperature, K")
    p.add_argument("--timestep", type=float, default=0.5, help="time step, fs")
    p.add_argument("--steps", type=nonnegative_int, default=1000, help="MD steps")
    p.add_argument("--every", type=positive_int, default=10, help="record every k-th step")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    p.add_argument("--taut", type=float, default=100.0, help="Bussi thermostat time constant, fs")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial velocities and thermostats")
    p.add_argument("--out", required=True, help="trajectory: .extxyz (written atomically)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    p.set_defaults(func=run_md_command)


    p = sub.add_parser(
        "adsorbml", help=command_help("adsorbml"),
        description="AdsorbML / OC20-Dense-style screening: ML-relax every placement of each system, drop anomalies "
                    "(dissociation, desorption, surface change, intercalation), validate the lowest candidates with "
                    "ground-truth single points (ML+SP@k) or relaxations (ML+RX@k), and report success rates, "
                    "speed-ups in ground-truth force calls, the relaxed-energy MAE and ADwT per split.")
    p.add_argument("--checkpoint", required=True, help="checkpoint written by frameavg train")
    p.add_argument("--data", required=True, help="dense adsorption folder (frameavg data generate-adsorption; "
                                                   "shipped:emt_dense for the small shipped set)")
    p.add_argument("--k", default="1,2,3,4,5", help="k of ML+SP@k and ML+RX@k (comma-separated)")
    p.add_argument("--splits", default=None, help="splits to evaluate (default: all present but train)")
    p.add_argument("--ground-truth", default="emt", choices=["emt", "none"],
                   help="emt (generated folders), or none: ML-only figures without single points")
    p.add_argument("--fmax", type=float, default=0.02, help="ML relaxations: largest force below this, eV/Å")
    p.add_argument("--steps", type=nonnegative_int, default=300, help="ML relaxations: maximum optimiser steps")
    p.add_argument("--max-systems", type=positive_int, default=None, help="evaluate the first N systems of each split")
    add_precision_args(p, default_precision="32-true")
    p.add_argument("--frame-method", "--frames", dest="frame_method", default="auto",
                   help="evaluation frame method of frame-averaged models (default auto: all, or learned for models "
                        "trained with learned frames; --frames is its old name)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.set_defaults(func=run_adsorbml_command)


def run_adsorbml_command(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.data.readers import resolve_path
    from frameavg.errors import ConfigError
    from frameavg.simulation.adsorbml import format_report, run_adsorbml

    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
    except ValueError:
        raise ConfigError(f"--k must be comma-separated integers, got {args.k!r}") from None
    precision = runtime_precision(args)
    bars = {}

    def progress(stage, done, total):
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = _progress_bar(total, stage)
        bars[stage].update(done - bars[stage].n)

    report = run_adsorbml(args.checkpoint, resolve_path(args.data), ks=ks, ground_truth=args.ground_truth,
                          splits=args.splits.split(",") if args.splits else None, device=args.device,
                          precision=precision.name, frame_method=args.frame_method, fmax=args.fmax, steps=args.steps,
                          max_systems=args.max_systems, progress=progress)
    for bar in bars.values():
        bar.close()
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0


def _add_model_args(p) -> None:
    add_checkpoint_args(p)
    add_precision_args(p, default_precision="64-true")
    p.add_argument("--frame-method", "--frames", dest="frame_method", default="auto",
                   help="evaluation frame method of frame-averaged models (default auto: all, exact; learned for "
                        "models trained with learned frames; --frames is its old name)")
    p.add_argument("--skin", type=float, default=0.5, help="Verlet skin of the neighbour lists, Å")
    p.add_argument("--direct-forces", action="store_true",
                   help="use the model's force head instead of -dE/dx (not conservative)")


def _read_atoms(args):
    """(ase.Atoms list, Data list) of --data; an empty input is an error."""
    from frameavg.data import read_structures
    from frameavg.data.atomic_data import data_to_atoms
    from frameavg.errors import DataError

    structures = read_structures(args.data, format=args.format, trusted=args.trusted,
                                 dtype=runtime_precision(args).dtype)
    if not structures:
        raise DataError("no structures to simulate", source=str(args.data))
    return [data_to_atoms(d) for d in structures], structures


def _potential(args, device: str | None = None):
    from frameavg.simulation.potential import Potential

    import warnings

    with warnings.catch_warnings():  # runtime_precision has reported any fallback
        warnings.simplefilter("ignore")
        return Potential.from_checkpoint(args.checkpoint, device=device or args.device, precision=args.precision,
                                         frame_method=args.frame_method, direct_forces=args.direct_forces)


def run_relax(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.simulation.distributed import start
    from frameavg.simulation.relaxation import PotentialProvider, relax

    out = Path(args.out)
    if out.suffix.lower() not in (".extxyz", ".xyz"):
        from frameavg.errors import ConfigError

        raise ConfigError(f"--out must end in .extxyz or .xyz, got '{out.name}'")
    shard = start(args.devices if args.strategy == "ddp" else 1, args.device)
    try:
        atoms, datas = _read_atoms(args)
        provider = PotentialProvider(_potential(args, shard.device), skin=args.skin)
        mine = shard.indices(len(atoms))
        bar = _progress_bar(len(mine), "relaxed", disable=shard.rank != 0)
        start_time = time.perf_counter()
        results = relax([atoms[i] for i in mine], provider, optimizer=args.optimizer, fmax=args.fmax,
                        steps=args.steps, relax_cell=args.relax_cell, max_atoms_per_batch=args.max_atoms,
                        trajectory=args.traj, names=mine, progress=lambda done, total: bar.update(done - bar.n))
        seconds = time.perf_counter() - start_time
        bar.close()
        merged = shard.gather(mine, results, len(atoms))
    finally:
        shard.close()
    if shard.rank != 0:
        return 0
    summary = relaxation_summary(merged, datas, seconds, processes=shard.world)
    _write_atoms(out, merged)
    _warn_failures(args.data, merged)
    if args.json:
        print_json(summary)
    else:
        print(format_relaxation_summary(summary, out))
    return 0


def relaxation_summary(results: list, datas: list, seconds: float, processes: int = 1) -> dict:
    """Counts, steps, throughput and, where the data has relaxed references, the IS2RS metrics."""
    import numpy as np

    from frameavg.metrics import relaxation_metrics
    from frameavg.simulation.relaxation import RelaxStatus

    statuses = [RelaxStatus.of(r.info["status"]) for r in results]
    steps = [r.info["steps"] for r in results]
    summary = {
        "structures": len(results),
        "converged": sum(s is RelaxStatus.CONVERGED for s in statuses),
        "not_converged": sum(s is RelaxStatus.NOT_CONVERGED for s in statuses),
        "failed": sum(s is RelaxStatus.FAILED for s in statuses),
        "steps_mean": float(np.mean(steps)) if steps else 0.0,
        "steps_max": int(max(steps)) if steps else 0,
        "seconds": seconds,
        "structures_per_s": len(results) / seconds if seconds > 0 else math.inf,
        "processes": processes,
        # the atom budget of a batch (per process; the largest) and how it was chosen
        "max_atoms_per_batch": max((r.info.get("max_atoms_per_batch", 0) for r in results), default=0),
        "budget_source": results[0].info.get("budget_source") if results else None,
    }
    have_pos = [k for k, d in enumerate(datas) if "pos_relaxed" in d and statuses[k] is not RelaxStatus.FAILED]
    if have_pos:
        energy_key = next((key for key in ("energy_relaxed", "y_relaxed") if all(key in datas[k] for k in have_pos)), None)
        metrics = relaxation_metrics(
            [results[k].positions for k in have_pos], [datas[k].pos_relaxed.double().numpy() for k in have_pos],
            [datas[k].cell.reshape(3, 3).double().numpy() for k in have_pos],
            [datas[k].pbc.reshape(3).numpy() for k in have_pos],
            [~datas[k].fixed.numpy() for k in have_pos],
            pred_energies=[results[k].info["energy"] for k in have_pos] if energy_key else None,
            target_energies=[float(datas[k][energy_key].reshape(-1)[0]) for k in have_pos] if energy_key else None)
        summary["is2rs"] = {"structures": len(have_pos), "energy_reference": energy_key, **metrics}
    return summary


def format_relaxation_summary(summary: dict, out: Path) -> str:
    lines = [f"relaxed {summary['structures']} structures: {summary['converged']} converged, "
             f"{summary['not_converged']} not converged, {summary['failed']} failed",
             f"steps: mean {summary['steps_mean']:.1f}, max {summary['steps_max']}; {summary['seconds']:.1f} s "
             f"({summary['structures_per_s']:.2f} structures/s, {summary['processes']} process(es))"]
    if "is2rs" in summary:
        m = summary["is2rs"]
        line = (f"IS2RS on {m['structures']} structures: ADwT {100 * m['average_distance_within_threshold']:.1f} %, "
                f"mean distance {m['mean_distance']:.3f} Å")
        if "relaxed_energy_mae" in m:
            line += (f"; relaxed energy ({m['energy_reference']}) MAE {m['relaxed_energy_mae']:.3f} eV, "
                     f"EwT {100 * m['relaxed_energy_within_threshold']:.1f} %")
        lines.append(line)
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def _write_atoms(path: Path, snapshots: list) -> None:
    import ase.io

    from frameavg.files import atomic_output

    clean = []
    for atoms in snapshots:
        calc = atoms.calc
        atoms = atoms.copy()
        atoms.calc = calc
        results = getattr(calc, "results", {}) or {}
        # the calculator already carries energy/forces; extxyz refuses the same key twice
        atoms.info = {k: v for k, v in atoms.info.items() if k != "trajectory" and k not in results}
        clean.append(atoms)
    with atomic_output(path) as tmp:
        ase.io.write(str(tmp), clean, format="extxyz")


def _warn_failures(source, results) -> None:
    from frameavg.simulation.relaxation import RelaxStatus

    for index, atoms in enumerate(results):
        status = atoms.info.get("status", "")
        if RelaxStatus.of(status) is RelaxStatus.FAILED:
            print(f"frameavg: warning: {source}, structure {index}: {status}", file=sys.stderr)


def _progress_bar(total: int, unit: str, disable: bool = False):
    from tqdm import tqdm

    return tqdm(total=total, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True,
                disable=disable or not sys.stderr.isatty())


def run_md_command(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.errors import DataError
    from frameavg.simulation.calculator import FrameavgCalculator
    from frameavg.simulation.md import run_md

    out = Path(args.out)
    atoms, _ = _read_atoms(args)
    if args.index >= len(atoms):
        raise DataError(f"--index {args.index}: the file has {len(atoms)} structure(s)", source=str(args.data))
    potential = _potential(args)
    calculator = FrameavgCalculator(potential=potential, skin=args.skin)
    if args.direct_forces and potential.has_direct_forces:
        print("frameavg: warning: MD with direct forces: they are not conservative and the energy will drift",
              file=sys.stderr)
    bar = _progress_bar(args.steps, "steps")
    result = run_md(atoms[args.index], calculator, ensemble=args.ensemble, temperature_K=args.temperature,
                    timestep_fs=args.timestep, steps=args.steps, every=args.every,
                    friction_per_fs=args.friction, taut_fs=args.taut, seed=args.seed,
                    progress=lambda step, total: bar.update(step - bar.n))
    bar.close()
    _write_atoms(out, result.snapshots)
    summary = result.summary() | {"neighbor_rebuilds": calculator.neighbors.rebuilds,
                                  "calculator_calls": calculator.neighbors.calls, "atoms": len(atoms[args.index])}
    if args.json:
        print_json(summary)
    else:
        stable = "stable to the end" if summary["stability_fs"] is None else \
            f"a bond broke (> 0.5 Å off) at {summary['stability_fs']:.1f} fs"
        drift = "" if summary["drift_meV_per_atom_per_ps"] is None else \
            f"; NVE drift {summary['drift_meV_per_atom_per_ps']:.3f} meV/atom/ps " \
            f"(max excursion {summary['max_excursion_meV_per_atom']:.3f} meV/atom, largest one-step jump " \
            f"{_maybe(summary['max_step_jump_meV'])} meV, range {_maybe(summary['energy_range_meV_per_atom'])} meV/atom)"
        print(f"{args.ensemble} MD, {summary['steps']} steps of {args.timestep} fs ({summary['simulated_ps']:.3f} ps): "
              f"{summary['steps_per_s']:.1f} steps/s{drift}; {stable}; neighbour list rebuilt "
              f"{summary['neighbor_rebuilds']} times in {summary['calculator_calls']} calls\nwrote {out}")
    return 0


def _maybe(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
