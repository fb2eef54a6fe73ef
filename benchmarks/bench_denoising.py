"""Noisy Nodes ablations: FAENet with and without the denoising auxiliary loss, same CPU budget.

* ``run``: for each data set (``ethanol``: rMD17 ethanol energies + forces; ``qm9``: the QM9 subset,
  U0; ``emt_dense``: the dense EMT set's S2EF frames, energies + forces, with the ``relaxed``
  target), depth (``--depths``; default: the config's), variant (``plain``, ``noisy_nodes``) and
  seed, train the data set's config (``CONFIG_FILES``) for ``--minutes`` on ``--threads``
  threads; append the test MAE and, for each run, FAENet's MAD per layer on the first 256 test
  structures to ``OUT/denoising.jsonl`` (resumable: finished runs are skipped).
* ``table``: mean ± std per cell, as in docs/denoising.md.

The Noisy Nodes settings are fixed before any run (see ``NOISY_NODES``) and never tuned on the
results: QM9 follows Zaidi et al.'s QM9 fine-tuning term (σ = 0.005 Å, weight 0.1, every batch);
ethanol, where a noised batch trains no forces, noises half of the batches (DeNS's probability)
with σ = 0.05 Å (between Zaidi's 0.04 Å pre-training noise and DeNS's 0.1 Å) at weight 0.1.
``noisy_nodes_skip`` is the same without the energy loss on noised batches (a follow-up, run after
the clean-label energy of noised ethanol batches turned out to hurt).

    python benchmarks/bench_denoising.py run --out /tmp/denoising --datasets ethanol,qm9 --seeds 0,1,2
    python benchmarks/bench_denoising.py run --out /tmp/denoising --datasets qm9 --depths 4,8,12
    python benchmarks/bench_denoising.py table --out /tmp/denoising
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_small_data import append, read, train_for  # noqa: E402

from frameavg.data import read_structures  # noqa: E402
from frameavg.evaluation.oversmoothing import mad_per_layer  # noqa: E402
from frameavg.training.data_module import graph_transform  # noqa: E402
from frameavg.training.run import load_task  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
NOISY_NODES = {
    "qm9": {"mode": "noisy_nodes", "sigma": 0.005, "prob": 1.0, "weight": 0.1},
    "ethanol": {"mode": "noisy_nodes", "sigma": 0.05, "prob": 0.5, "weight": 0.1},
    # Equiformer's OC20 auxiliary task: half of the batches, N(0, 0.3 Å), target pos_relaxed - pos,
    # weight 15 decayed linearly to 1
    "emt_dense": {"mode": "noisy_nodes", "sigma": 0.3, "prob": 0.5, "weight": 15.0, "weight_final": 1.0,
                  "target": "relaxed"},
}
#: The config of each data set: the shipped small configs, and the dense EMT S2EF set's own.
CONFIG_FILES = {"qm9": "faenet_qm9_small.yaml", "ethanol": "faenet_ethanol_small.yaml", "emt_dense": "emt_dense.yaml"}


def mad_of_run(result: dict) -> dict:
    """FAENet's MAD per layer on the first 256 test structures of a finished run."""
    task = load_task(result["checkpoint"])
    data = task.config.data
    structures = read_structures(data.test or data.train, keys=data.keys or None, **data.options)[:256]
    transform = data.neighbors.transform()
    return {"mad_per_layer": mad_per_layer(task.net, [transform(d) for d in structures])}


def run_one(dataset: str, variant: str, depth: int | None, seed: int, minutes: float, threads: int) -> dict:
    config = yaml.safe_load((CONFIGS / CONFIG_FILES[dataset]).read_text())
    if depth is not None:
        config["model"]["num_interactions"] = depth
    if variant == "noisy_nodes":
        config["denoise"] = dict(NOISY_NODES[dataset])
    elif variant == "noisy_nodes_skip":  # noised batches train the denoising head only
        config["denoise"] = dict(NOISY_NODES[dataset], energy_on_noised="skip")
    return train_for(config, minutes, seed, threads, measure=mad_of_run)


def run(args) -> None:
    torch.set_num_threads(args.threads)
    done = {(r["dataset"], r["variant"], r["depth"], r["seed"], r["minutes"]) for r in read(args.out, "denoising")}
    for dataset in args.datasets:
        for depth in args.depths:
            for seed in args.seeds:
                for variant in args.variants:
                    key = (dataset, variant, depth, seed, args.minutes)
                    if key in done:
                        continue
                    record = run_one(dataset, variant, depth, seed, args.minutes, args.threads)
                    append(args.out, "denoising", {"dataset": dataset, "variant": variant, "depth": depth,
                                                   "seed": seed, "minutes": args.minutes, **record})


def mean_std(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.{digits}f}{spread}"


def table(args) -> None:
    records = read(args.out, "denoising")
    print("| data set | blocks | variant | seeds | epochs | energy MAE (meV) | forces MAE (meV/Å) | MAD first → last layer |")
    print("|---|---:|---|---:|---:|---:|---:|---|")
    for key in sorted({(r["dataset"], r["depth"] or 0, r["minutes"], r["variant"]) for r in records}):
        rows = [r for r in records if (r["dataset"], r["depth"] or 0, r["minutes"], r["variant"]) == key]
        forces = [r["test_forces_mae_meV_per_A"] for r in rows if r["test_forces_mae_meV_per_A"] is not None]
        mad = [statistics.mean(layer) for layer in zip(*(r["mad_per_layer"] for r in rows))]
        print(f"| {key[0]} | {key[1] or 'shipped'} | {key[3]} | {len(rows)} | "
              f"{statistics.mean(r['epochs'] for r in rows):.0f} | {mean_std([r['test_energy_mae_meV'] for r in rows])} | "
              f"{mean_std(forces)} | {' → '.join(f'{m:.3f}' for m in mad)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "table"):
        p = commands.add_parser(name)
        p.add_argument("--out", type=Path, required=True)
    p = commands.choices["run"]
    p.add_argument("--datasets", type=lambda s: s.split(","), default=["ethanol", "qm9"])
    p.add_argument("--depths", type=lambda s: [int(v) for v in s.split(",")], default=[None])
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    p.add_argument("--variants", type=lambda s: s.split(","), default=["plain", "noisy_nodes"],
                   help="plain, noisy_nodes, noisy_nodes_skip (noised batches without the energy loss)")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
