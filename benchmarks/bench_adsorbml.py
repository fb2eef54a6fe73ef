"""AdsorbML on EMT ground truth: FAENet, SchNet and PaiNN trained with the same CPU budget on the
S2EF frames of a generated dense folder, then screened with ``run_adsorbml`` on every split.

    frameavg data generate-adsorption --out emt_full --workers 2          # the full set
    python benchmarks/bench_adsorbml.py run --data emt_full --out RESULTS --models faenet --minutes 8
    python benchmarks/bench_adsorbml.py table --out RESULTS [--plot docs/adsorbml.png]

Each model: its S2EF config (configs/emt_dense.yaml, painn_emt_dense.yaml, schnet_emt_dense.yaml:
the same data, loss and schedule; conservative forces, no frames for the baselines), ``--threads``
torch threads, ``--minutes`` of training measured in the process's CPU time (budget-aware cosine;
S2EF validation frames split off the training systems), then
the pipeline (LBFGS with AdsorbML's settings, fmax 0.02 eV/Å, 300 steps, float32, EMT single
points and relaxations) on the first ``--max-systems`` systems of each split. Writes
``<out>/<model>.json`` and keeps the runs under ``<out>/runs``. ``faenet_ft``: the FAENet run
continued (``model.init_from``) on the S2EF frames of the ``id`` systems, as the FAENet study
fine-tuned on OC20-Dense ID data (the evaluated ``id`` systems are then seen in training).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
#: Each model's shipped S2EF config on the dense folder (same data, loss and schedule).
MODEL_CONFIGS = {"faenet": "emt_dense.yaml", "faenet_ft": "emt_dense.yaml", "schnet": "schnet_emt_dense.yaml",
                 "painn": "painn_emt_dense.yaml"}


def model_config(model: str, data: Path, minutes: float, threads: int, seed: int, runs: Path) -> dict:
    config = yaml.safe_load((REPO / "configs" / MODEL_CONFIGS[model]).read_text())
    config["name"] = f"adsorbml_{model}"
    config["seed"] = seed
    config["data"] |= {"train": str(data), "test": None}  # validation frames are split off the training systems
    # a budget in CPU time: models trained side by side on shared cores get equal compute
    config["optim"] |= {"max_epochs": 100_000, "max_time_minutes": minutes, "budget_clock": "cpu"}
    config["trainer"] = config.get("trainer", {}) | {"enable_progress_bar": False, "threads": threads}
    config["run_dir"] = str(runs)
    if model == "faenet_ft":  # the study's fine-tuning: FAENet continued on the ID systems' frames
        start = runs / "adsorbml_faenet" / "checkpoints" / "last.ckpt"
        if not start.is_file():
            raise SystemExit(f"faenet_ft needs the faenet run first ({start} is missing)")
        config["model"]["init_from"] = str(start)
        config["data"]["train"] = str(data / "s2ef" / "id.lmdb")
    return config


def run(args) -> None:
    import torch

    from frameavg.simulation.adsorbml import run_adsorbml
    from frameavg.training.config import load_config
    from frameavg.training.run import train

    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        config = model_config(model, args.data, args.minutes, args.threads, args.seed, runs)
        run_dir = runs / config["name"]
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
        if args.reuse and checkpoint.is_file():
            train_s = None  # trained by an earlier invocation (its budget: --minutes)
        else:
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / "input.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                start = time.perf_counter()
                result = train(load_config(path))
            train_s = time.perf_counter() - start
            run_dir, checkpoint = Path(result["run_dir"]), Path(result["checkpoint"])
        epochs, validation = last_validation(run_dir)
        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        report = run_adsorbml(str(checkpoint), args.data, ks=(1, 2, 3, 4, 5), max_systems=args.max_systems,
                              steps=args.steps, precision="32-true")
        pipeline_s = time.perf_counter() - start
        record = {"model": model, "minutes": args.minutes, "threads": args.threads, "seed": args.seed,
                  "epochs": epochs, "train_seconds": train_s, "pipeline_seconds": pipeline_s,
                  "s2ef_val": validation, "report": report}
        (args.out / f"{model}.json").write_text(json.dumps(record, indent=1))
        print(json.dumps({k: v for k, v in record.items() if k != "report"}), flush=True)


def last_validation(run_dir: Path) -> tuple[int, dict]:
    """(epochs trained, the last validation energy and forces MAE in eV, eV/Å) from metrics.csv."""
    import csv

    epochs, last = 0, {}
    with (run_dir / "logs" / "metrics.csv").open() as handle:
        for row in csv.DictReader(handle):
            if row.get("epoch"):
                epochs = max(epochs, int(row["epoch"]) + 1)
            if row.get("val/energy_mae"):
                last = {"energy_mae": float(row["val/energy_mae"]), "forces_mae": float(row["val/forces_mae"])}
    return epochs, last


def table(args) -> None:
    records = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))]
    splits = ["id", "ood_ads", "ood_cat", "ood_both"]
    print("| model | epochs | S2EF validation energy / forces MAE | " +
          " | ".join(f"{s} ML-only / SP@1 / RX@1 / SP@5 (%)" for s in splits) + " | all SP@1 speed-up | relaxed-energy MAE (eV) | ML placements/s |")
    print("|---|---|---|" + "---|" * len(splits) + "---:|---:|---:|")
    for r in records:
        rep = r["report"]
        cells = []
        for s in splits:
            rates = rep["splits"][s]["success"]
            cells.append(" / ".join(f"{100 * rates[k]['success_rate']:.0f}" for k in ("ml_only", "sp@1", "rx@1", "sp@5")))
        placements = sum(rep["splits"][s]["placements"] for s in splits)
        seconds = sum(rep["splits"][s]["ml_seconds"] for s in splits)
        mae = sum(rep["splits"][s]["relaxed_energy_mae"] * rep["splits"][s]["placements"] for s in splits) / placements
        val = r["s2ef_val"]
        print(f"| {r['model']} | {r['epochs']} | {1e3 * val['energy_mae']:.0f} meV / {1e3 * val['forces_mae']:.0f} meV/Å | "
              + " | ".join(cells) +
              f" | {rep['all']['sp@1']['speedup']:.0f}x | {mae:.3f} | {placements / seconds:.2f} |")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for r in records:
            rates = r["report"]["all"]
            ks = r["report"]["ks"]
            ax.plot(ks, [100 * rates[f"sp@{k}"]["success_rate"] for k in ks], "o-", label=f"{r['model']} ML+SP@k")
            ax.plot(ks, [100 * rates[f"rx@{k}"]["success_rate"] for k in ks], "s--", label=f"{r['model']} ML+RX@k")
        ax.set_xlabel("k (lowest ML candidates checked)")
        ax.set_ylabel("success rate, all splits (%)")
        ax.set_title("AdsorbML on EMT ground truth (synthetic)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run")
    run_parser.add_argument("--data", type=Path, required=True)
    run_parser.add_argument("--models", default="faenet,schnet,painn")
    run_parser.add_argument("--minutes", type=float, default=8.0)
    run_parser.add_argument("--threads", type=int, default=1)
    run_parser.add_argument("--seed", type=int, default=0)
    run_parser.add_argument("--max-systems", type=int, default=8)
    run_parser.add_argument("--steps", type=int, default=300, help="ML relaxation steps (AdsorbML: 300)")
    run_parser.add_argument("--reuse", action="store_true", help="use <out>/runs/<model> when it has a checkpoint")
    table_parser = commands.add_parser("table")
    table_parser.add_argument("--plot", type=Path, default=None)
    for sub in (run_parser, table_parser):
        sub.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
