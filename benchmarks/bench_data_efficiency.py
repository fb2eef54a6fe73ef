"""Data efficiency of frame choices in training: test MAE against training-set size for
stochastic frame averaging (one random frame per step), k = 2 random frames and all frames, at an
equal wall-clock budget per run (the budget-aware cosine ends every run at its final learning
rate). The demo config (FAENet, rMD17 ethanol, energies + conservative forces), all frames at
evaluation, on the 1000 test_MD frames.

    python benchmarks/bench_data_efficiency.py [--dataset ethanol|qm9] [--sizes 100,300,1000]
        [--frames stochastic,2,all] [--minutes 2] [--seeds 0] [--threads N] [--jsonl FILE] [--json]

``--dataset qm9`` trains configs/faenet_qm9_small.yaml (U0, energy only; the QM9 winner of the
equal hyper-parameter search of bench_small_data.py, as the demo config is for ethanol) on the
first N of its 1,600 training molecules and tests on its fixed 200-molecule test split.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from frameavg.training.config import load_config
from frameavg.training.run import train

CONFIGS = {"ethanol": "rmd17_ethanol.yaml", "qm9": "faenet_qm9_small.yaml"}


def run(dataset: str, size: int, frames: str, minutes: float, seed: int, threads: int | None) -> dict:
    config_path = Path(__file__).resolve().parents[1] / "configs" / CONFIGS[dataset]
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(config_path, [
            f"data.max_train={size}", f"frames.train={frames}", f"seed={seed}", "data.split_seed=0",
            "optim.max_epochs=100000", f"optim.max_time_minutes={minutes}", "trainer.enable_progress_bar=false",
            f"trainer.threads={threads if threads else 'null'}", f"run_dir={run_dir}", "name=eff"])
        result = train(config)
    test = result["test"]
    return {"dataset": dataset, "size": size, "frames": frames, "seed": seed, "epochs": result["epochs"],
            "energy_mae_meV": 1e3 * test["energy_mae"],
            "forces_mae_meV_per_A": 1e3 * test["forces_mae"] if "forces_mae" in test else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--frames", default="stochastic,2,all")
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--dataset", choices=sorted(CONFIGS), default="ethanol")
    parser.add_argument("--threads", type=int, default=None, help="training threads (default: trainer.threads)")
    parser.add_argument("--jsonl", type=Path, help="append each run's record to this file as it finishes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records = []
    for seed in args.seeds.split(","):
        for size in args.sizes.split(","):
            for frames in args.frames.split(","):
                records.append(run(args.dataset, int(size), frames, args.minutes, int(seed), args.threads))
                if args.jsonl:
                    with args.jsonl.open("a") as handle:
                        handle.write(json.dumps(records[-1]) + "\n")
    if args.json:
        print(json.dumps(records, indent=1))
        return
    print("| training frames | frames in training | epochs | energy MAE (meV) | forces MAE (meV/Å) |")
    print("|---:|---|---:|---:|---:|")
    for size in args.sizes.split(","):
        for frames in args.frames.split(","):
            rows = [r for r in records if r["size"] == int(size) and r["frames"] == frames]
            energy = [r["energy_mae_meV"] for r in rows]
            forces = [r["forces_mae_meV_per_A"] for r in rows if r["forces_mae_meV_per_A"] is not None]
            spread = (lambda v: f" ± {statistics.stdev(v):.1f}" if len(v) > 1 else "")
            forces_text = f"{statistics.mean(forces):.1f}{spread(forces)}" if forces else "–"
            print(f"| {size} | {frames} | {statistics.mean(r['epochs'] for r in rows):.0f} | "
                  f"{statistics.mean(energy):.1f}{spread(energy)} | {forces_text} |")


if __name__ == "__main__":
    main()
