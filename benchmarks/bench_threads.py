"""Training epoch time at 1 and 2 torch threads (``trainer.threads``), side by side in one run.

The demo config (FAENet on rMD17 ethanol, 950 training frames), 2 epochs per run, no test set;
thread counts alternate within each round, so load drift hits both alike. Reported: seconds per
epoch of each run (fit wall time over epochs, validation included) and the median ratio.

    python benchmarks/bench_threads.py [--rounds 2] [--epochs 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from frameavg.training.config import load_config
from frameavg.training.run import train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "rmd17_ethanol.yaml"


def epoch_seconds(threads: int, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        config = load_config(CONFIG, [f"trainer.threads={threads}", f"optim.max_epochs={epochs}",
                                      "optim.max_time_minutes=null", "data.test=null", "data.test_fraction=0",
                                      "trainer.enable_progress_bar=false", f"run_dir={run_dir}", "name=threads"])
        start = time.perf_counter()
        train(config)
        return (time.perf_counter() - start) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    times: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.rounds):
        for threads in ((1, 2) if r % 2 == 0 else (2, 1)):
            times[threads].append(epoch_seconds(threads, args.epochs))
    ratio = statistics.median(one / two for one, two in zip(times[1], times[2]))
    report = {"seconds_per_epoch": times, "median_ratio_1_over_2": ratio}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for threads, values in times.items():
            print(f"{threads} thread(s): " + ", ".join(f"{v:.1f}" for v in values) + " s/epoch")
        print(f"1 thread / 2 threads: {ratio:.2f}x the time")


if __name__ == "__main__":
    main()
