"""Learned canonicalisation against one random PCA frame (SFA) and all PCA frames in training, same
CPU budget per run: ``configs/faenet_<dataset>_small.yaml`` with ``frames.train`` = ``learned`` /
``stochastic`` / ``all`` and ``frames.eval`` = ``learned`` for learned, ``all`` otherwise.
Appends the test MAE to ``OUT/learned.jsonl`` (resumable).

    python benchmarks/bench_learned_ablation.py --out /tmp/learned --datasets ethanol --seeds 0,1,2 --minutes 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_small_data import append, read, train_for  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
VARIANTS = {"learned": ("learned", "learned"), "sfa": ("stochastic", "all"), "all": ("all", "all")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", type=lambda s: s.split(","), default=["ethanol", "qm9"])
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    done = {(r["dataset"], r["variant"], r["seed"], r["minutes"]) for r in read(args.out, "learned")}
    for dataset in args.datasets:
        for seed in args.seeds:
            for variant in args.variants:
                if (dataset, variant, seed, args.minutes) in done:
                    continue
                config = yaml.safe_load((CONFIGS / f"faenet_{dataset}_small.yaml").read_text())
                train, evaluate = VARIANTS[variant]
                config["frames"] = (config.get("frames") or {}) | {"train": train, "eval": evaluate}
                record = train_for(config, args.minutes, seed, args.threads)
                append(args.out, "learned", {"dataset": dataset, "variant": variant, "seed": seed,
                                             "minutes": args.minutes, **record})


if __name__ == "__main__":
    main()
