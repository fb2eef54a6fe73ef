"""Denoising pre-training on the QM9 geometries, then fine-tuning on the QM9 subset (U0), against
training from scratch at the same fine-tuning budget.

* ``prepare``: every ``qm9pack`` geometry (130,831 molecules) except the fine-tuning run's
  validation and test molecules (same split as ``configs/faenet_qm9_small.yaml`` with split seed 0,
  matched by QM9 index), written to ``OUT/pretrain.lmdb`` without labels. Needs ``frameavg[qm9]``.
* ``pretrain``: ``frameavg pretrain configs/faenet_qm9_small.yaml`` on that file for ``--minutes``
  (Zaidi et al.'s pre-training noise, σ = 0.04 Å, every batch), 1 thread; the checkpoint and the
  wall-clock cost go to ``OUT/pretrain.json``.
* ``finetune``: the shipped config with ``model.init_from`` the pre-trained checkpoint, trained for
  ``--minutes`` per seed (``OUT/pretraining.jsonl``, with ``scratch`` rows for ``--scratch``).
* ``table``: mean ± std per variant.

    python benchmarks/bench_pretraining.py prepare --out /tmp/pretrain
    python benchmarks/bench_pretraining.py pretrain --out /tmp/pretrain --minutes 20
    python benchmarks/bench_pretraining.py finetune --out /tmp/pretrain --minutes 3 --seeds 0,1,2 --scratch
    python benchmarks/bench_pretraining.py table --out /tmp/pretrain
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_small_data import append, read, train_for  # noqa: E402

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "faenet_qm9_small.yaml"
PRETRAIN_NOISE = {"mode": "noisy_nodes", "sigma": 0.04, "prob": 1.0, "weight": 1.0}


def held_out_indices() -> set[int]:
    """QM9 indices of the fine-tuning run's validation and test molecules."""
    from frameavg.data import read_structures
    from frameavg.data.splits import random_split

    config = yaml.safe_load(CONFIG.read_text())["data"]
    structures = read_structures(config["train"], **(config.get("options") or {}))
    n = len(structures)
    sizes = {"val": max(1, round(config["val_fraction"] * n)), "test": max(1, round(config["test_fraction"] * n))}
    split = random_split(n, sizes | {"train": None}, seed=0)
    return {int(structures[i].idx) for part in ("val", "test") for i in split[part]}


def prepare(args) -> None:
    from frameavg.data.lmdb_store import write_lmdb
    from frameavg.data.readers import iter_structures

    start = time.perf_counter()
    held_out = held_out_indices()
    kept = {"n": 0, "skipped": 0}

    def geometries():
        for data in iter_structures("qm9pack"):
            if int(data.idx) in held_out:
                kept["skipped"] += 1
                continue
            kept["n"] += 1
            yield type(data)(pos=data.pos, atomic_numbers=data.atomic_numbers, cell=data.cell, pbc=data.pbc,
                             natoms=data.natoms, fixed=data.fixed)

    args.out.mkdir(parents=True, exist_ok=True)
    write_lmdb(geometries(), args.out / "pretrain.lmdb", metadata={"source": "qm9pack minus fine-tuning val/test"})
    record = {"molecules": kept["n"], "held_out_found": kept["skipped"], "held_out": len(held_out),
              "prepare_seconds": time.perf_counter() - start}
    (args.out / "prepare.json").write_text(json.dumps(record))
    print(json.dumps(record))


def pretrain(args) -> None:
    from frameavg.training.config import load_config
    from frameavg.training.denoising import pretraining_config
    from frameavg.training.run import train

    config = yaml.safe_load(CONFIG.read_text())
    config["name"] = "pretrain"
    config["run_dir"] = str(args.out / "runs")
    config["seed"] = 0
    config["data"] |= {"train": str(args.out / "pretrain.lmdb"), "options": {}, "keys": {}, "val_fraction": 0.002,
                       "split_seed": 0}
    config["denoise"] = dict(PRETRAIN_NOISE)
    config["optim"] |= {"max_epochs": 100_000, "max_time_minutes": args.minutes}
    config["trainer"] = (config.get("trainer") or {}) | {"enable_progress_bar": False, "threads": args.threads}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pretrain.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        start = time.perf_counter()
        result = train(pretraining_config(load_config(path)))
    record = {"checkpoint": result["checkpoint"], "epochs": result["epochs"], "minutes": args.minutes,
              "pretrain_seconds": time.perf_counter() - start}
    (args.out / "pretrain.json").write_text(json.dumps(record))
    print(json.dumps(record))


def finetune(args) -> None:
    checkpoint = json.loads((args.out / "pretrain.json").read_text())["checkpoint"]
    done = {(r["variant"], r["seed"], r["minutes"]) for r in read(args.out, "pretraining")}
    variants = ["pretrained"] + (["scratch"] if args.scratch else [])
    for seed in args.seeds:
        for variant in variants:
            if (variant, seed, args.minutes) in done:
                continue
            config = yaml.safe_load(CONFIG.read_text())
            if variant == "pretrained":
                config["model"]["init_from"] = checkpoint
            record = train_for(config, args.minutes, seed, args.threads)
            append(args.out, "pretraining", {"variant": variant, "seed": seed, "minutes": args.minutes, **record})


def table(args) -> None:
    rows = read(args.out, "pretraining")
    for variant in ("scratch", "pretrained"):
        values = [r["test_energy_mae_meV"] for r in rows if r["variant"] == variant]
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"| {variant} | {len(values)} | {statistics.mean(values):.1f} ± {spread:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, function in (("prepare", prepare), ("pretrain", pretrain), ("finetune", finetune), ("table", table)):
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--minutes", type=float, default=3.0)
        p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--scratch", action="store_true", help="finetune: also train from scratch")
        p.set_defaults(func=function)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
