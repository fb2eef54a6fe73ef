"""`frameavg train|test|predict`: the training workflow from the command line."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from frameavg.cli.commands import add_checkpoint_args, add_precision_args, command_help, runtime_precision
from frameavg.errors import FrameavgError


def register(sub) -> None:
    p = sub.add_parser("train", help=command_help("train"),
                       description="Train from CONFIG; overrides like optim.lr=1e-3 or --trainer.strategy ddp.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="section.key=value or --section.key value")
    p.add_argument("--resume", metavar="CKPT", help="resume from a checkpoint (e.g. RUN/checkpoints/last.ckpt)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(func=run_train)

    p = sub.add_parser("pretrain", help=command_help("pretrain"),
                       description="Denoising pre-training (Noisy Nodes' noise target) on the structures of CONFIG's "
                                   "data, labels ignored; fine-tune later with model.init_from=CHECKPOINT.")
    p.add_argument("config", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="section.key=value or --section.key value")
    p.add_argument("--resume", metavar="CKPT", help="resume from a checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(func=run_train, pretrain=True)

    p = sub.add_parser("oversmoothing", help=command_help("oversmoothing"),
                       description="Mean average distance (cosine) of FAENet's atom states after the embedding "
                                   "and after every interaction block, averaged over the structures of --data.")
    _add_checkpoint_data_args(p)
    p.add_argument("--limit", type=int, default=256, help="first N structures (default 256)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run_oversmoothing)

    p = sub.add_parser("test", help=command_help("test"))
    _add_checkpoint_data_args(p, several_files=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_test)

    p = sub.add_parser("predict", help=command_help("predict"))
    _add_checkpoint_data_args(p)
    p.add_argument("--out", required=True, help="output file: .npz or .extxyz/.xyz (ASE-readable)")
    p.add_argument("--stress", action="store_true",
                   help="also predict the stress (eV/Å³, strain derivative) of structures with a cell volume")
    p.set_defaults(func=run_predict)


def _add_checkpoint_data_args(p, several_files: bool = False) -> None:
    add_checkpoint_args(p, several_files)
    p.add_argument("--keys", help="label mapping, e.g. energy=U0,forces=F (default: the training config's)")
    p.add_argument("--batch-size", type=int, default=64)
    add_precision_args(p)


def run_train(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.training.config import load_run_config
    from frameavg.training.run import train

    overrides, flags = split_flags(args.overrides, valued=("--resume",), switches=("--json",))
    resume = flags.get("--resume", args.resume)
    as_json = args.json or "--json" in flags
    # with --json, stdout holds the one JSON document: Lightning's progress bar goes to stderr
    config = load_run_config(args.config, overrides)
    if getattr(args, "pretrain", False):
        from frameavg.training.denoising import pretraining_config

        config = pretraining_config(config)
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        result = train(config, resume=resume,
                       report=lambda line: print(f"frameavg: {line}", file=sys.stderr))
    if result is None:  # a non-zero rank of a distributed run: rank 0 reports
        return 0
    if as_json:
        print_json(result)
    else:
        print(f"run: {result['run_dir']}\ncheckpoint: {result['checkpoint']}")
        if result["test"]:
            print("test metrics of the last weights (last.ckpt; baseline: per-element mean energy, zero forces):")
            print(format_metrics(result["test"], result.get("baseline")))
            for plot in result.get("plots", []):
                print(f"plot: {plot}")
    return 0


def split_flags(items: list[str], *, valued=(), switches=()) -> tuple[list[str], dict]:
    """Separate the command's own flags from config overrides anywhere on the line (argparse's
    REMAINDER after the config keeps them): ``--flag VALUE`` / ``--flag=VALUE`` for ``valued``,
    bare ``--flag`` for ``switches``. Returns (overrides, {flag: value or True})."""
    rest, flags, i = [], {}, 0
    while i < len(items):
        item = items[i]
        name, eq, value = item.partition("=")
        if name in valued:
            if not eq:
                if i + 1 >= len(items):
                    raise FrameavgError(f"{name} needs a value")
                value, i = items[i + 1], i + 1
            flags[name] = value
        elif item in switches:
            flags[item] = True
        else:
            rest.append(item)
        i += 1
    return rest, flags


def _load_model(args):
    """(trained model on --device in --precision's dtype, label key mapping, resolved precision);
    no Lightning is imported."""
    from frameavg.training.checkpoint_io import load_trained_model

    precision = runtime_precision(args)
    task = load_trained_model(args.checkpoint).to(args.device)
    task.net.to(precision.dtype)
    keys = dict(task.config.data.keys)
    if args.keys:
        try:
            keys = dict(item.split("=", 1) for item in args.keys.split(","))
        except ValueError:
            raise FrameavgError(f"--keys must look like energy=U0,forces=F, got '{args.keys}'") from None
    return task, keys, precision


def _read(path, args, task, keys, precision):
    """(structures of ``path`` with graphs, {index: error} of structures that could not be
    prepared). A structure that fails does not stop the others: it is reported and skipped."""
    from frameavg.data import read_structures
    from frameavg.errors import DataError

    structures = read_structures(path, format=args.format, keys=keys or None, trusted=args.trusted,
                                 dtype=precision.dtype)
    transform = task.config.data.neighbors.transform()
    failed = {}
    for i, data in enumerate(structures):
        try:
            structures[i] = transform(data)
        except DataError as exc:
            failed[i] = str(exc)
    return structures, failed


def _report_failures(source, status: list[str]) -> None:
    """One stderr line per structure that was not predicted."""
    for index, message in enumerate(status):
        if message != "ok":
            print(f"frameavg: warning: {source}, structure {index}: {message} (skipped)", file=sys.stderr)


def run_oversmoothing(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.data.budget import MemoryBudget
    from frameavg.evaluation.oversmoothing import mad_per_layer

    task, keys, precision = _load_model(args)
    # no labels are needed: the training run's label names apply only when given with --keys
    structures, failed = _read(args.data, args, task, keys if args.keys else {}, precision)
    kept = [d for i, d in enumerate(structures) if i not in failed][: max(1, args.limit)]
    mad = mad_per_layer(task.net, kept, batch_size=args.batch_size,
                        budget=MemoryBudget.for_config(task.net, task.config.data), source=args.data)
    if args.json:
        print_json({"mad_per_layer": mad, "structures": len(kept)})
    else:
        print("layer  MAD (mean cosine distance of atom states)")
        for layer, value in enumerate(mad):
            print(f"{'embed' if layer == 0 else layer:>5}  {value:.4f}")
    return 0


def run_test(args) -> int:
    """Metrics per ``--data`` file (one model load); one JSON document: the metrics of a single
    file, or ``{"files": {path: metrics}}`` for several."""
    from frameavg.cli.main import print_json
    from frameavg.training.inference import evaluate, paper_unit_metrics

    task, keys, precision = _load_model(args)
    per_file = {}
    for path in args.data:
        structures, failed = _read(path, args, task, keys, precision)
        missing = [t for t in task.config.targets.enabled if t not in structures[0]]
        if missing:
            raise FrameavgError(f"{path}: no '{', '.join(missing)}' labels to test against (use --keys)")
        metrics, pred = evaluate(task, structures, args.batch_size, failed=failed, precision=precision,
                                 source=path)
        _report_failures(path, pred["status"])
        if len(failed) == len(structures) or metrics.get("structures_failed") == len(structures):
            raise FrameavgError(f"{path}: no structure could be predicted (first error: "
                                f"{next(m for m in pred['status'] if m != 'ok')})")
        per_file[path] = metrics | paper_unit_metrics(keys.get("energy"), metrics)
    if args.json:
        print_json(per_file[args.data[0]] if len(args.data) == 1 else {"files": per_file})
    else:
        print("\n\n".join((f"{path}\n" if len(per_file) > 1 else "") + format_metrics(metrics)
                          for path, metrics in per_file.items()))
    return 0


def run_predict(args) -> int:
    from frameavg.training.inference import evaluate
    from frameavg.training.predictions import write_predictions

    task, keys, precision = _load_model(args)
    structures, failed = _read(args.data, args, task, keys, precision)
    metrics, pred = evaluate(task, structures, args.batch_size, failed=failed, stress=args.stress or None,
                             precision=precision, source=args.data)
    _report_failures(args.data, pred["status"])
    write_predictions(Path(args.out), structures, pred)
    bad = sum(s != "ok" for s in pred["status"])
    print(f"wrote predictions for {len(structures) - bad} structures to {args.out}"
          + (f" ({bad} failed: status in the file)" if bad else ""))
    labelled = {k: v for k, v in metrics.items() if k != "structures_failed"}
    if labelled:  # the data held labels: how the predictions compare
        print("metrics against the labels in the data:\n" + format_metrics(labelled))
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
