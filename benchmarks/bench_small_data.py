"""Fair small-data comparison of FAENet, PaiNN and SchNet: an equal hyper-parameter search, then
test MAE at equal wall-clock budgets over several seeds.

Protocol (docs/accuracy.md):

* ``search``: for each model and data set, the same number of trials and the same minutes per
  trial. Trial 0 is the shipped config; the others draw width, depth, cutoff, RBF count, learning
  rate, batch size, force weight and force mode from ``SPACE`` with a generator seeded by
  (model, data set, trial). Training seed 0, split seed 0. The score is the validation MAE at the
  end of the trial: energy (meV) + forces (meV/Å) on rMD17 ethanol, energy (meV) on QM9. The winner
  of each (model, data set) is written as ``<out>/<model>_<dataset>_small.yaml``.
* ``compare``: the winning configs trained for each budget and seed (same split), interleaved by
  seed so that machine noise falls on every model alike; test MAE on the fixed test set.

Every record is appended to ``<out>/<command>.jsonl`` as it finishes, so a long study survives an
interruption::

    python benchmarks/bench_small_data.py search --datasets ethanol --trials 5 --minutes 1 --out DIR
    python benchmarks/bench_small_data.py compare --datasets ethanol --budgets 3,10 --seeds 0,1,2 --out DIR
    python benchmarks/bench_small_data.py table --out DIR
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import random
import statistics
import tempfile
from pathlib import Path

import yaml

from frameavg.precision import cpu_flags
from frameavg.training.config import load_config
from frameavg.training.run import train

REPO = Path(__file__).resolve().parents[1]
MODELS = ("faenet", "painn", "schnet")

#: Shipped starting configs: (data set, model) -> config file, plus model-section replacements for
#: the baselines on QM9 (their shipped configs are for ethanol).
BASE_CONFIGS = {
    ("ethanol", "faenet"): "rmd17_ethanol.yaml", ("ethanol", "painn"): "painn.yaml",
    ("ethanol", "schnet"): "schnet.yaml",
    ("qm9", "faenet"): "qm9_subset.yaml", ("qm9", "painn"): "qm9_subset.yaml", ("qm9", "schnet"): "qm9_subset.yaml",
}

#: Hyper-parameter space, the same axes for every model (names mapped per model in ``apply_trial``).
SPACE = {
    "width": [64, 128, 256],
    "depth": [2, 3, 4, 5],
    "cutoff": [4.0, 5.0, 6.0],
    "rbf": [16, 32, 50],
    "lr": [5e-4, 1e-3, 2e-3, 4e-3],
    "batch_size": [8, 16, 32],
    "forces_weight": [10.0, 30.0, 100.0],
}
#: Force modes per model: conservative, or direct (FAENet also with a -dE/dx consistency target).
FORCE_MODES = {"faenet": ["from_energy", "direct_with_gradient_target"], "painn": ["from_energy", "direct"],
               "schnet": ["from_energy"]}


def base_config(dataset: str, model: str) -> dict:
    config = yaml.safe_load((REPO / "configs" / BASE_CONFIGS[(dataset, model)]).read_text())
    if dataset == "qm9" and model != "faenet":
        source = yaml.safe_load((REPO / "configs" / f"{model}.yaml").read_text())["model"]
        config["model"] = source | {"cutoff": config["data"]["cutoff"], "regress_forces": None}
        config["frames"] = {"dims": "none"}
    config["name"] = f"{model}_{dataset}_small"
    return config


def draw_trial(dataset: str, model: str, trial: int) -> dict:
    """Hyper-parameters of one trial (trial 0: the shipped config, an empty dict)."""
    if trial == 0:
        return {}
    rng = random.Random(f"{model}-{dataset}-{trial}")
    params = {key: rng.choice(values) for key, values in SPACE.items()}
    if dataset == "ethanol":
        params["force_mode"] = rng.choice(FORCE_MODES[model])
    else:
        del params["forces_weight"]
    return params


def apply_trial(config: dict, model: str, params: dict) -> dict:
    config = copy.deepcopy(config)
    section = config["model"]
    if "width" in params:
        section["hidden_channels"] = params["width"]
        if model in ("faenet", "schnet"):
            section["num_filters"] = params["width"]
    if "depth" in params:
        section["num_interactions"] = params["depth"]
    if "cutoff" in params:
        section["cutoff"] = config["data"]["cutoff"] = params["cutoff"]
    if "rbf" in params:
        section["num_rbf" if model == "painn" else "num_gaussians"] = params["rbf"]
    if "lr" in params:
        config["optim"]["lr"] = params["lr"]
    if "batch_size" in params:
        config["data"]["batch_size"] = params["batch_size"]
    if "forces_weight" in params:
        config["loss"]["forces_weight"] = params["forces_weight"]
    if "force_mode" in params:
        section["regress_forces"] = params["force_mode"]
        if params["force_mode"] == "direct_with_gradient_target":
            config["loss"]["gradient_weight"] = 1.0
    return config


def validation_curve(run_dir: Path) -> list[dict]:
    """Every validation pass in metrics.csv: epoch and MAE (eV, eV/Å)."""
    curve = []
    with (run_dir / "logs" / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row.get("val/energy_mae"):
                curve.append({"epoch": int(float(row["epoch"])) if row.get("epoch") else None,
                              "energy_mae": float(row["val/energy_mae"]),
                              "forces_mae": float(row["val/forces_mae"]) if row.get("val/forces_mae") else None})
    return curve


def score(dataset: str, val: dict) -> float:
    return 1e3 * val["energy_mae"] + (1e3 * val["forces_mae"] if dataset == "ethanol" else 0.0)


def train_for(config: dict, minutes: float, seed: int, threads: int, measure=None) -> dict:
    """Train ``config`` for ``minutes`` (1 thread: ``threads``) and return epochs, the final
    validation and test MAE; ``measure(result)``, called while the run folder exists, adds its
    dict of further fields (e.g. measurements on the checkpoint)."""
    config = copy.deepcopy(config)
    config["seed"] = seed
    config["optim"] |= {"max_epochs": 100_000, "max_time_minutes": minutes}
    config["trainer"] = (config.get("trainer") or {}) | {"enable_progress_bar": False, "threads": threads}
    config["data"]["split_seed"] = 0
    with tempfile.TemporaryDirectory() as run_dir:
        config["run_dir"] = run_dir
        path = Path(run_dir) / "input.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        result = train(load_config(path))
        curve = validation_curve(Path(result["run_dir"]))
        val = {key: curve[-1][key] for key in ("energy_mae", "forces_mae")} if curve else {}
        extra = measure(result) if measure is not None else {}
    test = result["test"]
    return {"epochs": result["epochs"], "val": val, "val_curve": curve, "test_energy_mae_meV": 1e3 * test["energy_mae"],
            "test_forces_mae_meV_per_A": 1e3 * test["forces_mae"] if "forces_mae" in test else None,
            "cpu": cpu_flags()["model"], **extra}


def append(out: Path, name: str, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"{name}.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def read(out: Path, name: str) -> list[dict]:
    path = out / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def search(args) -> None:
    done = {(r["dataset"], r["model"], r["trial"]) for r in read(args.out, "search")}
    for dataset in args.datasets:
        for trial in range(args.trials):
            for model in args.models:
                if (dataset, model, trial) in done:
                    continue
                params = draw_trial(dataset, model, trial)
                config = apply_trial(base_config(dataset, model), model, params)
                record = train_for(config, args.minutes, seed=0, threads=args.threads)
                append(args.out, "search", {"dataset": dataset, "model": model, "trial": trial, "params": params,
                                            "minutes": args.minutes, "score": score(dataset, record["val"]), **record})
        for model in args.models:
            write_winner(args.out, dataset, model)


def winner(out: Path, dataset: str, model: str) -> dict:
    trials = [r for r in read(out, "search") if r["dataset"] == dataset and r["model"] == model]
    if not trials:
        raise SystemExit(f"no search records for {model} on {dataset} in {out}")
    return min(trials, key=lambda r: r["score"])


def write_winner(out: Path, dataset: str, model: str) -> Path:
    best = winner(out, dataset, model)
    config = apply_trial(base_config(dataset, model), model, best["params"])
    path = out / f"{model}_{dataset}_small.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def compare(args) -> None:
    done = {(r["dataset"], r["model"], r["minutes"], r["seed"]) for r in read(args.out, "compare")}
    for dataset in args.datasets:
        for minutes in args.budgets:
            for seed in args.seeds:
                for model in args.models:
                    if (dataset, model, minutes, seed) in done:
                        continue
                    config = yaml.safe_load((args.out / f"{model}_{dataset}_small.yaml").read_text())
                    record = train_for(config, minutes, seed=seed, threads=args.threads)
                    append(args.out, "compare", {"dataset": dataset, "model": model, "minutes": minutes,
                                                 "seed": seed, **record})


def mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.1f}{spread}"


def table(args) -> None:
    print("| data set | model | trial | params | epochs | score |")
    print("|---|---|---:|---|---:|---:|")
    for r in read(args.out, "search"):
        print(f"| {r['dataset']} | {r['model']} | {r['trial']} | {r['params'] or 'shipped'} | {r['epochs']} | "
              f"{r['score']:.1f} |")
    records = read(args.out, "compare")
    print("\n| data set | budget (min) | model | seeds | epochs | energy MAE (meV) | forces MAE (meV/Å) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for key in sorted({(r["dataset"], r["minutes"], r["model"]) for r in records}):
        rows = [r for r in records if (r["dataset"], r["minutes"], r["model"]) == key]
        forces = [r["test_forces_mae_meV_per_A"] for r in rows if r["test_forces_mae_meV_per_A"] is not None]
        print(f"| {key[0]} | {key[1]:g} | {key[2]} | {len(rows)} | {statistics.mean(r['epochs'] for r in rows):.0f} | "
              f"{mean_std([r['test_energy_mae_meV'] for r in rows])} | {mean_std(forces)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("search", "compare", "table"):
        sub = commands.add_parser(name)
        sub.add_argument("--out", type=Path, required=True)
        sub.add_argument("--datasets", type=lambda s: s.split(","), default=["ethanol", "qm9"])
        sub.add_argument("--models", type=lambda s: s.split(","), default=list(MODELS))
        sub.add_argument("--threads", type=int, default=1)
    commands.choices["search"].add_argument("--trials", type=int, default=5)
    commands.choices["search"].add_argument("--minutes", type=float, default=1.0)
    commands.choices["compare"].add_argument("--budgets", type=lambda s: [float(v) for v in s.split(",")],
                                             default=[3.0, 10.0, 30.0])
    commands.choices["compare"].add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")],
                                             default=[0, 1, 2])
    args = parser.parse_args()
    {"search": search, "compare": compare, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
