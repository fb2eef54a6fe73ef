"""`frameavg train|test|predict`: the training workflow from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from frameavg.errors import FrameavgError


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a YAML config",
                       description="Train from CONFIG; overrides like optim.lr=1e-3 or --trainer.strategy ddp.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="section.key=value or --section.key value")
    p.add_argument("--resume", metavar="CKPT", help="resume from a checkpoint (e.g. RUN/checkpoints/last.ckpt)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(func=run_train)

    p = sub.add_parser("test", help="evaluate a checkpoint on labelled data (OC20 metrics)")
    _add_checkpoint_data_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_test)

    p = sub.add_parser("predict", help="predict energies/forces with a checkpoint")
    _add_checkpoint_data_args(p)
    p.add_argument("--out", required=True, help="output file: .npz or .extxyz/.xyz (ASE-readable)")
    p.set_defaults(func=run_predict)


def _add_checkpoint_data_args(p) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint written by frameavg train")
    p.add_argument("--data", required=True, help="structures (any format frameavg reads)")
    p.add_argument("--format", help="reader name (default: detected from the path)")
    p.add_argument("--keys", help="label mapping, e.g. energy=U0,forces=F (default: the training config's)")
    p.add_argument("--trusted", action="store_true", help="allow pickled legacy OC20 LMDBs")
    p.add_argument("--batch-size", type=int, default=64)


def run_train(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.training.config import load_config
    from frameavg.training.run import train

    overrides = [o for o in args.overrides if o != "--json"]
    as_json = args.json or len(overrides) != len(args.overrides)
    result = train(load_config(args.config, overrides), resume=args.resume)
    if result is None:  # a non-zero rank of a distributed run: rank 0 reports
        return 0
    if as_json:
        print_json(result)
    else:
        print(f"run: {result['run_dir']}\ncheckpoint: {result['checkpoint']}")
        if result["test"]:
            print("test metrics (baseline: per-element mean energy, zero forces):")
            print(format_metrics(result["test"], result.get("baseline")))
            for plot in result.get("plots", []):
                print(f"plot: {plot}")
    return 0


def _load(args):
    from frameavg.data.neighbors import RadiusGraph
    from frameavg.training.run import load_task

    from frameavg.data import read_structures

    task = load_task(args.checkpoint)
    data_cfg = task.config["data"]
    keys = dict(data_cfg["keys"] or {})
    if args.keys:
        try:
            keys = dict(item.split("=", 1) for item in args.keys.split(","))
        except ValueError:
            raise FrameavgError(f"--keys must look like energy=U0,forces=F, got '{args.keys}'") from None
    structures = read_structures(args.data, format=args.format, keys=keys or None,
                                 trusted=args.trusted)
    transform = RadiusGraph(data_cfg["cutoff"], data_cfg["max_neighbors"], strict=False)
    return task, [transform(d) for d in structures], keys


def run_test(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.training.run import evaluate, paper_unit_metrics

    task, structures, keys = _load(args)
    missing = [t for t, on in task.config["targets"].items() if on and t not in structures[0]]
    if missing:
        raise FrameavgError(f"{args.data}: no '{', '.join(missing)}' labels to test against (use --keys)")
    metrics, _ = evaluate(task, structures, args.batch_size)
    metrics |= paper_unit_metrics(keys.get("energy"), metrics)
    if args.json:
        print_json(metrics)
    else:
        print(format_metrics(metrics))
    return 0


def run_predict(args) -> int:
    from frameavg.training.run import evaluate
    from frameavg.training.predictions import write_predictions

    task, structures, _ = _load(args)
    _, pred = evaluate(task, structures, args.batch_size)
    write_predictions(Path(args.out), structures, pred)
    print(f"wrote predictions for {len(structures)} structures to {args.out}")
    return 0


def format_metrics(metrics: dict, baseline: dict | None = None) -> str:
    """A plain table of metrics (and a baseline column when given)."""
    head = f"{'metric':<32}{'model':>14}" + (f"{'baseline':>14}" if baseline else "")
    rows = [head, "-" * len(head)]
    for name, value in metrics.items():
        row = f"{name:<32}{value:>14.6g}"
        if baseline:
            row += f"{baseline.get(name, float('nan')):>14.6g}"
        rows.append(row)
    return "\n".join(rows)
