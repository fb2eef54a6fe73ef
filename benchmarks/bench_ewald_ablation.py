"""Ewald message passing on and off, same CPU budget per run: FAENet and SchNet on Xu–Kitchin
adsorption energies and the oxide crystals (periodic Ewald), and on the QM9 subset's U0 and dipole
moment μ (aperiodic Ewald). Appends the test MAE of every run to ``OUT/ewald.jsonl`` (resumable).

Set-ups (fixed before any run):
* FAENet: the shipped config of the data set (``xu_kitchin.yaml``, ``oxides.yaml``,
  ``faenet_qm9_small.yaml``); SchNet: ``schnet_qm9_small.yaml`` on QM9, and on the periodic sets
  SchNet at FAENet's width, depth and cutoff (128, 3 blocks, 6 Å), without frames.
* ``ewald``: the block's defaults (``models.ewald.EwaldSettings``: k_box (1, 1, 3), k_cutoff
  0.4 Å⁻¹, Δk 0.2 Å⁻¹, down-projection 8, 3 hidden layers). On molecules the aperiodic block sees
  orientations, so SchNet with it is trained on one random PCA frame per step and evaluated on
  all frames, as FAENet is.
* μ (debye) is intensive: no element references, the mean-pooled readout for SchNet; its MAE
  is written in the energy column (×1000: mD).

    python benchmarks/bench_ewald_ablation.py --out /tmp/ewald --seeds 0,1,2 --minutes 1
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_small_data import append, read, train_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
DATASETS = ("xu_kitchin", "oxides", "qm9_u0", "qm9_mu")
PERIODIC_SCHNET = dict(name="schnet", hidden_channels=128, num_filters=128, num_interactions=3, num_gaussians=50,
                       cutoff=6.0)
MOLECULE_FRAMES = {"dims": "3D", "train": "stochastic", "eval": "all"}


def config_for(dataset: str, model: str, ewald: bool) -> dict:
    """The training config of one cell of the ablation."""
    if dataset.startswith("qm9"):
        config = yaml.safe_load((CONFIGS / f"{model}_qm9_small.yaml").read_text())
        if dataset == "qm9_mu":
            config["data"]["options"]["targets"] = ["U0", "mu"]
            config["data"]["keys"] = {"energy": "mu"}
            config["normalize"] = (config.get("normalize") or {}) | {"element_references": False}
            if model == "schnet":
                config["model"]["readout"] = "mean"
        if model == "schnet" and ewald:
            config["frames"] = dict(MOLECULE_FRAMES)
    else:
        config = yaml.safe_load((CONFIGS / f"{dataset}.yaml").read_text())
        config["data"]["test_fraction"] = 0.1
        if model == "schnet":
            with_forces = bool(config["targets"].get("forces"))
            config["model"] = dict(PERIODIC_SCHNET, regress_forces="from_energy" if with_forces else None)
            config["frames"] = {"dims": "none"}
    if ewald:
        config["model"]["ewald"] = {}
    config["name"] = f"ewald_{dataset}_{model}_{'on' if ewald else 'off'}"
    return copy.deepcopy(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=list(DATASETS))
    parser.add_argument("--models", type=lambda s: s.split(","), default=["faenet", "schnet"])
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    done = {(r["dataset"], r["model"], r["ewald"], r["seed"], r["minutes"]) for r in read(args.out, "ewald")}
    for dataset in args.datasets:
        for seed in args.seeds:
            for model in args.models:
                for ewald in (False, True):
                    if (dataset, model, ewald, seed, args.minutes) in done:
                        continue
                    record = train_for(config_for(dataset, model, ewald), args.minutes, seed,
                                       args.threads)
                    append(args.out, "ewald", {"dataset": dataset, "model": model, "ewald": ewald, "seed": seed,
                                               "minutes": args.minutes, **record})


if __name__ == "__main__":
    main()
