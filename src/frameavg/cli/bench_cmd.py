"""`frameavg bench`: every model on the same real batches, side by side (speed, memory, accuracy)."""

from __future__ import annotations

import sys

from frameavg.cli.commands import command_help


def register(sub) -> None:
    from frameavg.evaluation.benchmark import ACCURACY_DATASETS, BENCH_MODELS, COMPARISONS, EXTENSION_MODELS

    parser = sub.add_parser(
        "bench",
        help=command_help("bench"),
        description="Speed mode: 'paper' configurations on the 8 OC20 samples and 'equal-width' (128 wide, 4 "
                    "blocks, 6 Å) on 64 QM9 molecules and 64 rMD17 ethanol frames; inference and training-step "
                    "graphs/s as ratios to FAENet in the same run. Accuracy mode: each model trained for the same "
                    "wall-clock budget on rMD17 ethanol and the QM9 subset, test MAE.",
    )
    parser.add_argument("--models", default=",".join(BENCH_MODELS),
                        help=f"comma-separated subset of {','.join(BENCH_MODELS)}, the extensions "
                             f"{','.join(EXTENSION_MODELS)}, or any registered model")
    parser.add_argument("--configs", default=",".join(COMPARISONS), help=f"comma-separated subset of {','.join(COMPARISONS)}")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="time each measurement at least this long")
    parser.add_argument("--max-steps", type=int, default=20, help="at most this many timed steps per measurement")
    parser.add_argument("--inference-only", action="store_true", help="skip the training-step measurements")
    parser.add_argument("--precision", default="32-true",
                        help="comma-separated precisions to compare (32-true, bf16-mixed, 16-mixed on CUDA, 64-true); "
                             "bf16-mixed falls back to 32-true on a CPU without bf16 instructions")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (ratios: median of rounds)")
    parser.add_argument("--no-memory", action="store_true", help="skip the separate peak-memory pass")
    parser.add_argument("--accuracy", action="store_true", help="accuracy mode: train every model for --minutes")
    parser.add_argument("--minutes", type=float, default=5.0, help="accuracy mode: training budget per model and dataset")
    parser.add_argument("--datasets", default=",".join(ACCURACY_DATASETS),
                        help=f"accuracy mode: comma-separated subset of {','.join(ACCURACY_DATASETS)}")
    parser.add_argument("--run-dir", default="runs/bench", help="accuracy mode: where the training runs go")
    parser.add_argument("--json", action="store_true", help="print one JSON document (a list of records)")
    parser.set_defaults(func=run)


def _names(text: str, allowed, what: str) -> list[str]:
    from frameavg.errors import ConfigError

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if allowed is not None and n not in allowed]
    if unknown or not names:
        raise ConfigError(f"unknown {what} {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}")
    return names


def run(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.evaluation import benchmark
    from frameavg.precision import ACCEPTED as PRECISION_NAMES, cpu_flags, resolve

    models = _names(args.models, None, "model")
    if args.accuracy:
        datasets = _names(args.datasets, benchmark.ACCURACY_DATASETS, "dataset")
        records = benchmark.run_accuracy(
            models, datasets, args.minutes, args.run_dir,
            progress=lambda r: print(f"  {r['dataset']}/{r['model']}: {r['epochs']} epochs, "
                                     f"energy MAE {1000 * r['energy_mae']:.1f} meV", file=sys.stderr))
        table = benchmark.format_accuracy_table(records)
    else:
        configs = _names(args.configs, benchmark.COMPARISONS, "configuration")
        precisions = _names(args.precision, PRECISION_NAMES, "precision")
        for name in precisions:
            fallback = resolve(name, args.device, warn=False).fallback
            if fallback:
                print(f"frameavg: warning: {name} runs as 32-true here: {fallback}",
                      file=sys.stderr)
        records = benchmark.run_benchmark(
            models, configs, args.device, args.min_seconds, args.max_steps, args.threads, not args.inference_only,
            progress=lambda case, what: print(f"  {what} {case.config}/{case.dataset}/{case.mode}"
                                              + ("" if what == "timed" else f"/{case.model}/{case.precision}"),
                                              file=sys.stderr),
            precisions=precisions, rounds=args.rounds, memory=not args.no_memory)
        table = benchmark.format_table(records) + "\n\nCPU: " + ", ".join(
            f"{k} {v}" for k, v in cpu_flags().items())
    if args.json:
        print_json(records)
    else:
        print(table)
    return 0
