"""Accuracy for a fixed CPU budget: train a config for N minutes, report test MAE and the curve.

Usage (from the repository root)::

    python benchmarks/bench_accuracy.py --minutes 30 --configs rmd17_ethanol,qm9_subset [--json]

Each run uses its config unchanged except for the time budget (``budget_overrides``: the
``optim.max_time_minutes``, an epoch cap large enough never to bind, and reduce-on-plateau, since a
cosine schedule needs the number of epochs in advance). ``frameavg bench --accuracy`` does the same
for every model at equal width. Writes the runs under ``runs/accuracy/`` and prints test metrics next to
the per-element-mean baseline, plus validation MAE per epoch (the learning curve).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch

from frameavg.evaluation.benchmark import budget_overrides
from frameavg.training.config import load_config
from frameavg.training.run import train

REPO = Path(__file__).resolve().parents[1]


def learning_curve(run_dir: Path) -> list[dict]:
    rows = []
    with (run_dir / "logs" / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row.get("val/energy_mae"):
                rows.append({"epoch": int(row["epoch"]), "energy_mae": float(row["val/energy_mae"]),
                             "forces_mae": float(row["val/forces_mae"]) if row.get("val/forces_mae") else None})
    return rows


def run(name: str, minutes: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    overrides = [f"optim.{key}={value}" for key, value in budget_overrides(minutes).items()]
    overrides += ["trainer.enable_progress_bar=false", f"run_dir={REPO / 'runs' / 'accuracy'}"]
    start = time.perf_counter()
    result = train(load_config(REPO / "configs" / f"{name}.yaml", overrides))
    curve = learning_curve(Path(result["run_dir"]))
    return {"config": name, "minutes": minutes, "threads": threads, "wall_s": time.perf_counter() - start,
            "epochs": len(curve), "test": result["test"], "baseline": result["baseline"], "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--configs", default="rmd17_ethanol,qm9_subset")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records = [run(name, args.minutes, args.threads) for name in args.configs.split(",")]
    if args.json:
        print(json.dumps(records, indent=2))
        return
    for r in records:
        print(f"\n{r['config']}: {r['minutes']} min budget, {r['epochs']} epochs, {r['wall_s'] / 60:.1f} min wall")
        print(f"{'test metric':<28}{'model':>12}{'baseline':>12}")
        for key in ("energy_mae", "forces_mae", "forces_cos"):
            if key in r["test"]:
                print(f"{key:<28}{r['test'][key]:>12.4f}{r['baseline'][key]:>12.4f}")
        print("val curve (epoch: energy MAE eV" + (", forces MAE eV/Å)" if r["curve"] and r["curve"][0]["forces_mae"] else ")"))
        for point in r["curve"]:
            forces = f", {point['forces_mae']:.4f}" if point["forces_mae"] is not None else ""
            print(f"  {point['epoch']:>3}: {point['energy_mae']:.4f}{forces}")


if __name__ == "__main__":
    main()
