"""The AdsorbML screening pipeline on a dense adsorption folder (``frameavg adsorbml``).

For every system of the evaluated splits:

1. ML-relax every placement (``dense/<split>.lmdb``) with the batched engine (LBFGS with
   AdsorbML's settings, fmax 0.02 eV/Å, 300 steps);
2. flag anomalies (dissociation, desorption, surface change against the relaxed clean slab of
   ``slabs.extxyz``, intercalation; ``frameavg.evaluation.adsorbml``) and drop them from the ranking;
3. with a ground truth (EMT for generated folders): single points on the ``max(k)`` lowest ML
   candidates, and ground-truth relaxations started from them;
4. success rates (ML-only, ML+SP@k, ML+RX@k), speed-ups in ground-truth force calls against
   relaxing every placement with the ground truth, the MAE of ML-relaxed energies against the
   ground-truth relaxed energies of the same placements, ADwT against the ground-truth relaxed
   positions, and the ML relaxation throughput.

Energies are total energies (eV) throughout; every quantity compared is a difference of total
energies of the same system, so the adsorption references cancel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from frameavg.errors import ConfigError, DataError
from frameavg.simulation.relaxation import RelaxStatus

GROUND_TRUTHS = ("emt", "none")
#: AdsorbML's ML relaxation settings (and the ground-truth relaxations of RX@k).
RELAX_FMAX, RELAX_STEPS = 0.02, 300


def dense_splits(folder: Path, manifest: dict) -> list[str]:
    """Evaluated splits present in the folder: every split but ``train``."""
    return [split for split, count in manifest["splits"].items()
            if split != "train" and count and (folder / "dense" / f"{split}.lmdb").is_file()]


def _ground_truth_calculator(name: str, manifest: dict):
    if name == "none":
        return None
    if name != "emt":
        raise ConfigError(f"unknown ground truth {name!r} (choose {', '.join(GROUND_TRUTHS)})")
    if "EMT" not in str(manifest.get("ground_truth", "")):
        raise ConfigError(f"the folder's ground truth is {manifest.get('ground_truth')!r}, not EMT: "
                          "use --ground-truth none for ML-only figures")
    from ase.calculators.emt import EMT

    return EMT()


def run_adsorbml(force_provider, folder: str | Path, *, splits: Sequence[str] | None = None,
                 ks: Sequence[int] = (1, 2, 3, 4, 5), ground_truth: str = "emt", device: str = "cpu",
                 precision: str | None = None, frame_method: str = "all", fmax: float = RELAX_FMAX,
                 steps: int = RELAX_STEPS, max_systems: int | None = None, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run the pipeline (see the module docstring); returns the report dictionary.

    Args:
        force_provider: a checkpoint path, ``Potential`` or training task (see ``relax``).
        folder: a folder written by ``generate_adsorption`` (or one in its layout).
        splits: splits to evaluate (default: every one present but ``train``).
        ks: the k of ML+SP@k and ML+RX@k.
        ground_truth: ``emt``, or ``none`` for ML-only figures without single points.
        fmax, steps: convergence (eV/Å) and step limit of the ML relaxations (AdsorbML: 0.02, 300);
            the ground-truth relaxations of RX@k always use AdsorbML's.
        max_systems: evaluate only the first N systems (by index) of each split.
        progress: called as ``progress(stage, done, total)``.
    """
    from frameavg.data.adsorption import LABEL, read_manifest, read_slabs
    from frameavg.evaluation.adsorbml import success_rates
    from frameavg.simulation.relaxation import as_provider

    folder = Path(folder)
    manifest = read_manifest(folder)
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ConfigError(f"--k must list positive integers, got {ks}")
    calculator = _ground_truth_calculator(ground_truth, manifest)
    available = dense_splits(folder, manifest)
    splits = list(splits or available)
    missing = [s for s in splits if s not in available]
    if missing:
        raise DataError(f"no dense placements for split(s) {', '.join(missing)} (present: {', '.join(available)})",
                        source=str(folder))
    slabs = read_slabs(folder)
    provider = as_provider(force_provider, device=device, frame_method=frame_method, precision=precision)
    systems_by_index = {s["index"]: s for s in manifest["systems"]}
    report = {"label": manifest.get("label", LABEL), "folder": str(folder), "ground_truth": ground_truth,
              "ks": ks, "ml_fmax": fmax, "ml_steps": steps, "max_systems": max_systems, "splits": {}}
    evaluated = []
    for split in splits:
        context = _Screening(provider, calculator, slabs, systems_by_index, ks, fmax, steps, progress)
        report["splits"][split], entries = _screen_split(folder, split, max_systems, context)
        evaluated.extend(entries)
    rates = success_rates(evaluated, ks=ks)
    for split in splits:
        report["splits"][split]["success"] = rates[split]
    report["all"] = rates["all"]
    report["systems"] = [{key: entry[key] for key in ("system", "split", "gt_min")} |
                         {"ml_best": min((c["ml_energy"] for c in entry["candidates"] if not c["anomalous"]),
                                         default=None)} for entry in evaluated]
    return report


@dataclass
class _Screening:
    """What every split's screening shares: the ML provider, the ground-truth calculator, the clean
    slabs by ``metal-facet``, the manifest's systems by index, the k values, the ML relaxation
    settings (fmax eV/Å, steps) and the progress callback."""

    provider: object
    calculator: object
    slabs: dict
    systems_by_index: dict
    ks: list
    fmax: float
    steps: int
    progress: Callable | None


def _screen_split(folder: Path, split: str, max_systems: int | None, context: _Screening) -> tuple[dict, list]:
    """(the split's report, its systems with a ground-truth minimum) after ML-relaxing every placement
    of ``split`` and validating the lowest candidates with the ground truth."""
    from frameavg.data.atomic_data import data_to_atoms
    from frameavg.data.readers import read_structures
    from frameavg.evaluation.adsorbml import detect_anomalies
    from frameavg.metrics import relaxation_metrics
    from frameavg.simulation.optimizers import ADSORBML_LBFGS
    from frameavg.simulation.relaxation import relax

    c, systems_by_index, progress = context, context.systems_by_index, context.progress
    path = folder / "dense" / f"{split}.lmdb"
    datas = read_structures(path, dtype=torch.float64)
    _check_placements(datas, path)
    if max_systems is not None:
        kept = sorted({int(d.system_index.reshape(-1)[0]) for d in datas})[:max_systems]
        datas = [d for d in datas if int(d.system_index.reshape(-1)[0]) in set(kept)]
    groups: dict[int, list[int]] = {}
    for k, data in enumerate(datas):
        groups.setdefault(int(data.system_index.reshape(-1)[0]), []).append(k)
    too_small = [systems_by_index[i]["system"] for i, members in groups.items() if len(members) < 2]
    if too_small:
        raise DataError(f"system(s) {', '.join(too_small)} have fewer than 2 placements: a dense set needs "
                        "several placements per system", source=str(path))
    initial = [data_to_atoms(d) for d in datas]
    start = time.perf_counter()
    ml = relax(initial, c.provider, optimizer="lbfgs", optimizer_options=ADSORBML_LBFGS, fmax=c.fmax,
               steps=c.steps, max_atoms_per_batch=budget_rows(c.provider, datas, str(path)), progress=None if progress is None else
               (lambda done, total, s=split: progress(f"ML relaxations ({s})", done, total)))
    ml_seconds = time.perf_counter() - start
    anomalies = []
    for atoms0, atoms1, data in zip(initial, ml, datas):
        system = systems_by_index[int(data.system_index.reshape(-1)[0])]
        if not math.isfinite(atoms1.info["energy"]):
            anomalies.append(["failed"])
            continue
        anomalies.append(detect_anomalies(atoms0, atoms1, c.slabs[f"{system['metal']}-{system['facet']}"]))
    entries = _ground_truth_candidates(groups, ml, anomalies, initial, datas, systems_by_index, c.calculator, c.ks,
                                       c.slabs, split, progress)
    ok = [k for k, atoms in enumerate(ml) if math.isfinite(atoms.info["energy"])]
    metrics = relaxation_metrics(
        [ml[k].positions for k in ok], [datas[k].pos_relaxed.double().numpy() for k in ok],
        [datas[k].cell.reshape(3, 3).double().numpy() for k in ok], [datas[k].pbc.reshape(3).numpy() for k in ok],
        [~datas[k].fixed.numpy() for k in ok], pred_energies=[ml[k].info["energy"] for k in ok],
        target_energies=[float(datas[k].energy_relaxed.reshape(-1)[0]) for k in ok])
    flagged = {}
    for flags in anomalies:
        for flag in flags:
            flagged[flag] = flagged.get(flag, 0) + 1
    split_report = {
        "systems": len(groups), "placements": len(datas),
        "ml_converged": sum(RelaxStatus.of(a.info["status"]) is RelaxStatus.CONVERGED for a in ml),
        "anomalous_placements": sum(bool(f) for f in anomalies), "anomalies": flagged,
        "relaxed_energy_mae": metrics["relaxed_energy_mae"], "adwt": metrics["average_distance_within_threshold"],
        "ml_seconds": ml_seconds,
        "ml_structure_evaluations": int(sum(atoms.info["steps"] + 1 for atoms in ml)),  # steps + 1 per placement
        "placements_per_s": len(datas) / ml_seconds if ml_seconds > 0 else math.inf,
        "less_physical_systems": sum(systems_by_index[i]["less_physical"] for i in groups),
        # every ground-truth placement of these failed or was anomalous: no minimum to compare with
        "systems_without_ground_truth_min": [e["system"] for e in entries if e["gt_min"] is None],
    }
    return split_report, [e for e in entries if e["gt_min"] is not None]


def budget_rows(provider, datas, source: str | None = None) -> int | None:
    """Atoms per ML relaxation batch that fit the memory budget (``data.budget``: the network's
    frames, its neighbour lists at cutoff + Verlet skin, half the available memory); None when all
    placements fit together or the provider is no network (the engine then chooses). A placement
    that alone does not fit raises a ``DataError`` naming it."""
    from frameavg.data.budget import MemoryBudget, batches_by_budget

    potential = getattr(provider, "potential", None)
    if potential is None:
        return None
    budget = MemoryBudget.for_network(potential.net, cutoff=potential.cutoff + float(getattr(provider, "skin", 0.0)),
                                      max_neighbors=potential.max_neighbors)
    if len(list(batches_by_budget(datas, budget, source=source))) <= 1:
        return None
    per_atom = max(budget.cost(d) / max(int(d.num_nodes), 1) for d in datas)
    return max(1, int((budget.limit - budget.base) / per_atom))


def _check_placements(datas, path) -> None:
    """Every placement needs OC20 tags with an adsorbate (tag 2) and a slab, and its system and
    ground-truth labels; ``DataError`` naming the file and record otherwise."""
    for index, data in enumerate(datas):
        missing = [key for key in ("tags", "system_index", "placement", "energy_relaxed", "pos_relaxed")
                   if key not in data]
        if missing:
            raise DataError(f"placement record lacks {', '.join(missing)} (a dense placement needs OC20 tags, "
                            "its system and placement indices and the ground-truth relaxed energy and positions)",
                            source=str(path), index=index)
        tags = data.tags.reshape(-1)
        if not bool((tags == 2).any()) or bool((tags == 2).all()):
            raise DataError("placement needs OC20 tags with adsorbate atoms (2) and slab atoms (0/1)",
                            source=str(path), index=index)


def _ground_truth_candidates(groups, ml, anomalies, initial, datas, systems_by_index, calculator, ks, slabs, split,
                             progress) -> list[dict]:
    """One ``success_rates`` entry per system: every placement's ML energy and anomaly flag, and
    for the max(k) lowest valid candidates the ground-truth single point and relaxation."""
    from frameavg.evaluation.adsorbml import detect_anomalies
    from frameavg.simulation.optimizers import ADSORBML_LBFGS
    from frameavg.simulation.relaxation import relax

    entries, to_relax = [], []
    for index, members in groups.items():
        system = systems_by_index[index]
        candidates = []
        for k in members:
            candidates.append({"placement": int(datas[k].placement.reshape(-1)[0]), "member": k,
                               "ml_energy": float(ml[k].info["energy"]), "anomalous": bool(anomalies[k]),
                               "ml_steps": int(ml[k].info["steps"]), "sp_energy": None, "rx_energy": None,
                               "rx_calls": None, "rx_anomalous": False})
        valid = sorted((c for c in candidates if not c["anomalous"]), key=lambda c: c["ml_energy"])
        if calculator is not None:
            for c in valid[:max(ks)]:
                atoms = ml[c["member"]].copy()
                atoms.set_constraint()
                atoms.calc = calculator
                c["sp_energy"] = float(atoms.get_potential_energy())
                to_relax.append((c, system))
        entries.append({"system": system["system"], "split": split, "gt_min": system["ground_truth_min"],
                        "gt_calls": system["ground_truth_calls"], "candidates": candidates})
    if to_relax:
        starts = []
        for c, _ in to_relax:
            atoms = ml[c["member"]].copy()
            atoms.calc = None
            starts.append(atoms)
        relaxed = relax(starts, calculator, optimizer="lbfgs", optimizer_options=ADSORBML_LBFGS, fmax=RELAX_FMAX,
                        steps=RELAX_STEPS, progress=None if progress is None else
                        (lambda done, total: progress(f"ground-truth relaxations ({split})", done, total)))
        for (c, system), atoms in zip(to_relax, relaxed):
            c["rx_calls"] = int(atoms.info["steps"]) + 1
            flags = detect_anomalies(initial[c["member"]], atoms, slabs[f"{system['metal']}-{system['facet']}"])
            c["rx_anomalous"] = bool(flags) or not math.isfinite(atoms.info["energy"])
            c["rx_energy"] = None if c["rx_anomalous"] else float(atoms.info["energy"])
    for entry in entries:
        for c in entry["candidates"]:
            del c["member"]
    return entries


def format_report(report: dict) -> str:
    """AdsorbML's table: success rate and speed-up per strategy and split, then errors and costs."""
    from frameavg.evaluation.adsorbml import format_success_table

    lines = [f"{report['folder']}: {report['label']}"]
    lines.append(format_success_table({split: info["success"] for split, info in report["splits"].items()}
                                      | {"all": report["all"]}))
    lines.append("")
    lines.append("| split | systems | placements | anomalous | relaxed-energy MAE (eV) | ADwT | ML placements/s |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    for split, info in report["splits"].items():
        lines.append(f"| {split} | {info['systems']} | {info['placements']} | {info['anomalous_placements']} | "
                     f"{info['relaxed_energy_mae']:.3f} | {100 * info['adwt']:.1f} % | {info['placements_per_s']:.2f} |")
    marked = sum(info["less_physical_systems"] for info in report["splits"].values())
    if marked:
        lines.append(f"({marked} systems have molecular adsorbates (OH, CO, NH), which EMT describes poorly)")
    return "\n".join(lines)
