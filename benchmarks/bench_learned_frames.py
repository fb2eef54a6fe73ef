"""Inference throughput of learned canonicalisation against frame averaging over all PCA frames
(``all``) and one random PCA frame (``stochastic``), same FAENet weights, side by side in one run.

    python benchmarks/bench_learned_frames.py [--config configs/faenet_ethanol_small.yaml] [--structures 512]

Prints structures/s per method, the ratios to ``all``, the fraction of graphs whose learned frame
fell back to PCA frames, and the largest energy change under a random rotation + reflection
(float64). The canonicaliser is untrained here: inference cost does not depend on training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from torch_geometric.data import Batch

from frameavg.data import read_structures
from frameavg.frames.learned import fallback_rate
from frameavg.training.config import load_config
from frameavg.training.data_module import graph_transform
from frameavg.training.module import build_network

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "faenet_ethanol_small.yaml"))
    parser.add_argument("--structures", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, ["frames.train=learned", "frames.eval=learned"])
    data_cfg = config["data"]
    structures = read_structures(data_cfg["train"], keys=data_cfg["keys"] or None, **(data_cfg["options"] or {}))
    transform = graph_transform(data_cfg)
    graphs = [transform(d) for d in structures[: args.structures]]
    batches = [Batch.from_data_list(graphs[i:i + args.batch_size]) for i in range(0, len(graphs), args.batch_size)]
    torch.manual_seed(0)
    learned = build_network(config).eval()
    methods = {"learned": learned, "all": learned.with_eval_method("all"),
               "stochastic": learned.with_eval_method("stochastic")}
    rates, fallback = {}, []
    for _ in range(args.repeats):  # interleaved: each method sees the same machine load
        for name, net in methods.items():
            start = time.perf_counter()
            for batch in batches:
                with torch.no_grad() if net.forces not in ("from_energy",) else torch.enable_grad():
                    net(batch)
            rates.setdefault(name, []).append(len(graphs) / (time.perf_counter() - start))
    for batch in batches:
        _, frames = learned(batch, return_frames=True)
        fallback.append(fallback_rate(frames) * batch.num_graphs)
    best = {name: max(values) for name, values in rates.items()}
    report = {"config": args.config, "structures": len(graphs), "threads": args.threads,
              "structures_per_s": best, "ratio_to_all": {k: v / best["all"] for k, v in best.items()},
              "learned_fallback_fraction": sum(fallback) / len(graphs)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
