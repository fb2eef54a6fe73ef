"""Simulation throughput, side by side in one run (numbers for docs/simulation.md).

1. ``relax``: 64 real slabs (the 11 OC20 IS2RE samples and 53 Xu–Kitchin slabs, 2D frames), 64
   rMD17 ethanol frames (3D frames) and a mixed set (32 ethanol frames + 32 of the slabs, one 2D
   model), relaxed with FIRE for exactly ``--steps`` steps (fmax 1e-9: a random model's forces are
   small, so a looser threshold would stop after a step or two) by the batched engine (its atom
   budget measured once per model, as ``relax`` chooses it by default) and by ASE's FIRE looped over
   the same structures with the FrameavgCalculator of the same model. Both follow the same
   trajectories (tested), so the ratio of structures relaxed per second is pure engine efficiency.
   Each engine step is split into the model (the ``Potential`` call: batching, frames, forward and
   backward), the inputs (neighbour lists and graphs of the batch) and the engine itself (the rest:
   optimiser state, admissions and departures), in ms per step.
2. ``overhead``: the same split for 8 to 512 ethanol frames in one batch (``--overhead-steps`` FIRE steps,
   the budget set to all of them): whether the engine's own time per step stays flat.
3. ``calculator``: calls/s of the calculator with the Verlet skin (0.5 Å) against a neighbour list
   rebuilt at every call, along the same NVE trajectory (ethanol, and a 2x2 supercell of an OC20
   slab with 100+ atoms).
4. ``md``: MD steps/s (NVE, 0.5 fs) for ethanol and the 100+-atom slab.

The models: ``--checkpoint-3d`` (ethanol; e.g. the demo's) and ``--checkpoint-2d`` (slabs; e.g.
``configs/oc20_samples_s2ef.yaml``), else a random FAENet (hidden 64, 2 interactions, cutoff 5 Å),
with all frames; ``--dtype float32`` by default (``float64`` for exactness checks). Random models
drive atoms together within a few tens of steps: give checkpoints for relaxations of that length.
Alternating repeats (A B A B ...) so that load drift hits both sides alike; best and median.

Usage::

    python benchmarks/bench_simulation.py [--tables relax,overhead,calculator,md] [--steps 60] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from ase import units
from ase.md.verlet import VelocityVerlet
from ase.optimize import FIRE

from frameavg.data import iter_structures
from frameavg.data.atomic_data import data_to_atoms
from frameavg.frames import FrameAveraging
from frameavg.models import FAENet
from frameavg.simulation import FrameavgCalculator, Potential, relax
from frameavg.precision import cpu_flags
from frameavg.simulation.relaxation import PotentialProvider

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "real"  # real data kept in the repository
CUTOFF = 5.0


CHECKPOINTS: dict[str, str] = {}  # frame dimension -> checkpoint (--checkpoint-3d / --checkpoint-2d)


def potential(dim: str, dtype: str) -> Potential:
    if dim in CHECKPOINTS:
        return Potential.from_checkpoint(CHECKPOINTS[dim], dtype=dtype)
    torch.manual_seed(0)
    model = FAENet(cutoff=CUTOFF, hidden_channels=64, num_filters=64, num_interactions=2, num_gaussians=20,
                   tag_hidden_channels=8, pg_hidden_channels=8, phys_embeds=False, regress_forces=None)
    return Potential(FrameAveraging(model, dims=dim, method="all", cutoff=CUTOFF), cutoff=CUTOFF,
                     max_neighbors=40, dtype=dtype)


def slabs(count: int = 64) -> list:
    oc20 = [data_to_atoms(d) for name in ("is2re_bs8.extxyz", "is2re_bs3.extxyz")
            for d in iter_structures(DATA / "oc20_is2re_samples" / name, dtype=torch.float64)]
    xu = [data_to_atoms(d) for d in iter_structures(DATA / "xu_kitchin_adsorption", dtype=torch.float64)]
    stride = max(1, len(xu) // (count - len(oc20)))
    return (oc20 + xu[::stride])[:count]


def molecules(count: int = 64) -> list:
    return [data_to_atoms(d) for d in list(iter_structures(DATA / "rmd17_ethanol" / "train.xyz",
                                                            dtype=torch.float64))[:count]]


def relax_table(dtype: str, steps: int, repeats: int) -> list:
    mixed = molecules(32) + slabs()[::2]
    return [_relax_case("64 slabs (OC20 + Xu–Kitchin, 2D frames)", slabs(), "2D", dtype, steps, repeats),
            _relax_case("64 ethanol frames (3D frames)", molecules(), "3D", dtype, steps, repeats),
            _relax_case("mixed: 32 ethanol + 32 slabs (2D frames)", mixed, "2D", dtype, steps, repeats)]


class _TimedCall:
    """A ``Potential`` whose calls are timed (seconds in ``seconds``); everything else forwarded."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


class TimedProvider:
    """A force provider (``PotentialProvider`` or any object with ``prepare``, ``release``,
    ``evaluate``) whose calls are counted and timed. The time from the start of the first call to
    the end of the last splits into the model (the ``Potential`` call, when there is one), the
    inputs (the rest of the provider's time) and the engine (the time between calls). The
    one-time work before the first step (reading structures into graphs) and after the last
    (writing results) is left out."""

    def __init__(self, inner):
        self.inner = inner
        if hasattr(inner, "potential"):  # the engine measures its budget on provider.potential
            inner.potential = self.potential = _TimedCall(inner.potential)
        self.calls, self.provider_s, self.first, self.last = 0, 0.0, None, None

    def prepare(self, key, atoms):
        return self.inner.prepare(key, atoms)

    def release(self, key):
        return self.inner.release(key)

    def evaluate(self, keys, positions, cells, stress):
        start = time.perf_counter()
        self.first = start if self.first is None else self.first
        try:
            return self.inner.evaluate(keys, positions, cells, stress)
        finally:
            self.last = time.perf_counter()
            self.provider_s += self.last - start
            self.calls += 1

    def split_ms(self) -> dict:
        """Per engine step, ms: model, inputs, engine (the time between calls)."""
        calls = max(1, self.calls)
        window = (self.last - self.first) if self.calls else 0.0
        model_s = self.potential.seconds if hasattr(self, "potential") else 0.0
        return {"engine_steps": self.calls, "model_ms": 1e3 * model_s / calls,
                "inputs_ms": 1e3 * (self.provider_s - model_s) / calls,
                "engine_ms": 1e3 * (window - self.provider_s) / max(1, calls - 1)}


class HarmonicProvider:
    """A model-free provider (F = -0.01 eV/Å² x, energy 0): the engine's own cost per step."""

    def prepare(self, key, atoms):
        pass

    def release(self, key):
        pass

    def evaluate(self, keys, positions, cells, stress):
        return {"energy": torch.zeros(len(keys), dtype=torch.float64), "forces": -0.01 * positions, "errors": {}}


def timed_relax(structures, pot, steps: int, budget: int | None = None) -> tuple[float, list, dict]:
    """(wall s, results, per-step split in ms) of one engine relaxation with a timed provider
    (``pot``: a ``Potential``, or a provider such as ``HarmonicProvider``)."""
    provider = TimedProvider(PotentialProvider(pot) if isinstance(pot, Potential) else pot)
    start = time.perf_counter()
    results = relax(structures, provider, optimizer="fire", fmax=1e-9, steps=steps, max_atoms_per_batch=budget)
    return time.perf_counter() - start, results, provider.split_ms()


def _relax_case(name, structures, dim, dtype, steps, repeats) -> dict:
    fmax = 1e-9
    pot = potential(dim, dtype)
    calc = FrameavgCalculator(potential=pot)
    # the budget, measured once for this model (as relax does by default) and then cached
    budget_info = relax(structures[:max(1, len(structures) // 2)], pot, optimizer="fire", fmax=fmax, steps=1)[0].info
    batched, looped, splits = [], [], []
    for _ in range(repeats):
        seconds, results, split = timed_relax(structures, pot, steps)
        batched.append(seconds)
        splits.append(split)
        start = time.perf_counter()
        reference_steps = []
        for atoms in structures:
            atoms = atoms.copy()
            atoms.calc = calc
            opt = FIRE(atoms, logfile=None)
            opt.run(fmax=fmax, steps=steps)
            reference_steps.append(opt.nsteps)
        looped.append(time.perf_counter() - start)
    our_steps = [r.info["steps"] for r in results]
    ratios = [b / a for a, b in zip(batched, looped)]
    return {
        "case": name, "structures": len(structures), "atoms": int(sum(len(a) for a in structures)), "dtype": dtype,
        "max_steps": steps, "converged": sum(r.info["converged"] for r in results),
        "same_step_counts": our_steps == reference_steps, "total_steps": int(sum(our_steps)),
        "batched_s": min(batched), "ase_loop_s": min(looped),
        "batched_structures_per_s": len(structures) / min(batched),
        "ase_loop_structures_per_s": len(structures) / min(looped),
        "ratio_best": min(looped) / min(batched), "ratio_median": statistics.median(ratios),
        "budget_atoms": int(results[0].info["max_atoms_per_batch"]), "budget_source": budget_info["budget_source"],
        "engine_steps": splits[0]["engine_steps"],
        **{key: statistics.median(s[key] for s in splits) for key in ("model_ms", "inputs_ms", "engine_ms")},
    }


def overhead_table(dtype: str, steps: int, repeats: int, counts=(8, 32, 128, 512)) -> list:
    """Per-step time of the engine, the inputs and the model for n ethanol frames in one batch."""
    frames = [data_to_atoms(d) for d in iter_structures(DATA / "rmd17_ethanol" / "test_MD.xyz", dtype=torch.float64)]
    pot = potential("3D", dtype)
    rows = []
    for n in counts:
        structures = frames[:n]
        budget = sum(len(a) for a in structures)
        splits = [timed_relax(structures, pot, steps, budget)[2] for _ in range(repeats)]
        row = {"molecules": n, "atoms": budget, "steps": steps, "dtype": dtype}
        for key in ("model_ms", "inputs_ms", "engine_ms"):
            row[key] = statistics.median(s[key] for s in splits)
        row["engine_ms_min"] = min(s["engine_ms"] for s in splits)
        free = [timed_relax(structures, HarmonicProvider(), 10 * steps, budget)[2]["engine_ms"] for _ in range(repeats)]
        row["engine_ms_model_free"] = statistics.median(free)
        rows.append(row)
    return rows


def _trajectory_timing(atoms, calc, steps: int) -> tuple[float, int]:
    atoms = atoms.copy()
    rng = np.random.default_rng(0)
    atoms.set_momenta(rng.normal(scale=np.sqrt(units.kB * 300 * atoms.get_masses())[:, None], size=(len(atoms), 3)))
    atoms.calc = calc
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    start = time.perf_counter()
    dynamics.run(steps)
    return time.perf_counter() - start, calc.neighbors.rebuilds


def systems() -> dict:
    ethanol = data_to_atoms(next(iter_structures(DATA / "rmd17_ethanol" / "train.xyz", dtype=torch.float64)))
    slab = data_to_atoms(next(iter_structures(DATA / "oc20_is2re_samples" / "is2re_bs3.extxyz", dtype=torch.float64)))
    big = slab.repeat((2, 2, 1))
    return {"ethanol (9 atoms, 3D frames)": (ethanol, "3D"), f"OC20 slab 2x2 ({len(big)} atoms, 2D frames)": (big, "2D")}


def calculator_table(dtype: str, steps: int, repeats: int) -> list:
    rows = []
    for name, (atoms, dim) in systems().items():
        pot = potential(dim, dtype)
        skin, fresh, rebuilds = [], [], 0
        for _ in range(repeats):
            seconds, rebuilds = _trajectory_timing(atoms, FrameavgCalculator(potential=pot, skin=0.5), steps)
            skin.append(seconds)
            fresh.append(_trajectory_timing(atoms, FrameavgCalculator(potential=pot, skin=0.0), steps)[0])
        rows.append({"system": name, "steps": steps, "dtype": dtype, "skin_calls_per_s": (steps + 1) / min(skin),
                     "rebuild_calls_per_s": (steps + 1) / min(fresh), "ratio_best": min(fresh) / min(skin),
                     "ratio_median": statistics.median(f / s for s, f in zip(skin, fresh)),
                     "skin_rebuilds": rebuilds})
    return rows


def md_table(dtype: str, steps: int, repeats: int) -> list:
    rows = []
    for name, (atoms, dim) in systems().items():
        pot = potential(dim, dtype)
        times = [_trajectory_timing(atoms, FrameavgCalculator(potential=pot), steps)[0] for _ in range(repeats)]
        rows.append({"system": name, "steps": steps, "dtype": dtype, "steps_per_s": steps / min(times),
                     "ns_per_day": steps * 0.5e-6 / min(times) * 86400})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default="relax,overhead,calculator,md")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--steps", type=int, default=60, help="relaxation step cap / MD steps are 4x this")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--overhead-steps", type=int, default=5, help="FIRE steps of the overhead table")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--checkpoint-3d", default=None, help="model for ethanol (3D frames)")
    parser.add_argument("--checkpoint-2d", default=None, help="model for slabs (2D frames)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    CHECKPOINTS.update({dim: path for dim, path in (("3D", args.checkpoint_3d), ("2D", args.checkpoint_2d)) if path})
    tables = args.tables.split(",")
    result = {"threads": torch.get_num_threads(), "cpu": cpu_flags()["model"], "torch": torch.__version__}
    if "relax" in tables:
        result["relax"] = relax_table(args.dtype, args.steps, args.repeats)
    if "overhead" in tables:
        result["overhead"] = overhead_table(args.dtype, args.overhead_steps, args.repeats)
    if "calculator" in tables:
        result["calculator"] = calculator_table(args.dtype, 4 * args.steps, args.repeats)
    if "md" in tables:
        result["md"] = md_table(args.dtype, 4 * args.steps, args.repeats)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for r in result.get("relax", []):
        print(f"relax {r['case']} ({r['atoms']} atoms, {r['dtype']}, {r['max_steps']} FIRE steps, same steps as "
              f"ASE: {r['same_step_counts']}): batched {r['batched_structures_per_s']:.2f} structures/s, ASE loop "
              f"{r['ase_loop_structures_per_s']:.2f} -> {r['ratio_best']:.1f}x (median {r['ratio_median']:.1f}x); "
              f"budget {r['budget_atoms']} atoms ({r['budget_source']}), per step: model {r['model_ms']:.1f} ms, "
              f"inputs {r['inputs_ms']:.1f} ms, engine {r['engine_ms']:.2f} ms")
    for r in result.get("overhead", []):
        print(f"overhead {r['molecules']} ethanol ({r['atoms']} atoms): per step model {r['model_ms']:.1f} ms, "
              f"inputs {r['inputs_ms']:.1f} ms, engine {r['engine_ms']:.2f} ms (model-free provider: "
              f"{r['engine_ms_model_free']:.2f} ms)")
    for row in result.get("calculator", []):
        print(f"calculator {row['system']}: skin {row['skin_calls_per_s']:.1f} calls/s ({row['skin_rebuilds']} rebuilds "
              f"in {row['steps'] + 1} calls), rebuild {row['rebuild_calls_per_s']:.1f} -> {row['ratio_best']:.2f}x")
    for row in result.get("md", []):
        print(f"md {row['system']}: {row['steps_per_s']:.1f} steps/s ({row['ns_per_day']:.3f} ns/day at 0.5 fs)")


if __name__ == "__main__":
    main()
