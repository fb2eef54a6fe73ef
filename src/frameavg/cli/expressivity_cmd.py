"""`frameavg expressivity`: the geometric expressivity suite (k-chains, L-fold stars,
counterexamples) on any registered model, as given and under random rigid motions."""

from __future__ import annotations

import sys
from dataclasses import replace

from frameavg.cli.commands import command_help
from frameavg.errors import ConfigError


def register(sub) -> None:
    from frameavg.evaluation.expressivity.harness import DEFAULT_MODELS, FAENET_VARIANTS, TESTS

    parser = sub.add_parser(
        "expressivity",
        help=command_help("expressivity"),
        description="Binary classification of each pair, fresh initialisation per seed; accuracy (percent, mean ± "
                    "std over seeds) on the pair as given and randomly rotated + translated at test time. Suite "
                    f"model names: {', '.join(FAENET_VARIANTS)} (FAENet with frame averaging) or any name in the "
                    "model registry. See docs/expressivity.md.",
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help=f"suite model names, space or comma separated (default: {' '.join(DEFAULT_MODELS)}); "
                             "names not in the registry are skipped with a message")
    parser.add_argument("--tests", nargs="+", default=list(TESTS), choices=list(TESTS), help="tests to run (default all)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 10; 3 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per seed (default 120; 100 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="reduced suite: 3 seeds, k=4 chains with 1, 3, 5 layers, 100 steps (a few minutes)")
    parser.add_argument("--workers", type=int, default=1, help="processes (one thread each; default 1)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="write DIR/expressivity.png and the tables into DIR/expressivity.md (between its "
                             "result markers, keeping the prose; e.g. --out docs)")
    parser.add_argument("--json", action="store_true", help="print one JSON document: a list of records")
    parser.set_defaults(func=run)


def run(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.evaluation.expressivity.harness import SuiteSettings, run_suite
    from frameavg.evaluation.expressivity.report import markdown_tables, write_docs

    models = [name for item in args.models for name in item.split(",") if name]
    settings = SuiteSettings.quick() if args.quick else SuiteSettings()
    if args.seeds is not None:
        if args.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
        settings = replace(settings, seeds=args.seeds)
    if args.steps is not None:
        if args.steps < 1:
            raise ConfigError(f"--steps must be >= 1, got {args.steps}")
        settings = replace(settings, steps=args.steps)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    settings = replace(settings, tests=tuple(args.tests))

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    result = run_suite(models, settings, progress=progress, workers=args.workers)
    if not result.records:
        raise ConfigError("no model could be run: " + "; ".join(f"{m}: {why}" for m, why in result.skipped.items()))
    if args.out:
        command = "frameavg expressivity " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["expressivity"] else \
            "frameavg expressivity"
        for path in write_docs(result, args.out, command):
            progress(f"wrote {path}")
    progress(f"suite time {result.seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU")
    if args.json:
        print_json([record.as_dict() for record in result.records])
    else:
        print(markdown_tables(result.records), end="")
    return 0
