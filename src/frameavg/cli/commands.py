"""The ``frameavg`` commands: name -> (module that registers it, one-line help).

Kept free of heavy imports: ``frameavg --help`` lists these without importing torch, PyG or
Lightning, and only the module of the command being run is imported.
"""

from __future__ import annotations

import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("frameavg.cli.data_cmd", "inspect and convert structure files"),
    "train": ("frameavg.cli.train_cmd", "train a model from a YAML config"),
    "config": ("frameavg.cli.config_cmd", "a run's configuration resolved and checked (defaults, overrides, cutoffs, "
               "frames), or every key with its default, unit and meaning"),
    "pretrain": ("frameavg.cli.train_cmd", "denoising pre-training on structures without labels (fine-tune with "
                 "model.init_from)"),
    "oversmoothing": ("frameavg.cli.train_cmd", "mean average distance of FAENet's atom states per layer "
                      "(the oversmoothing measure of Noisy Nodes)"),
    "test": ("frameavg.cli.train_cmd", "evaluate a checkpoint on labelled data (OC20 metrics)"),
    "predict": ("frameavg.cli.train_cmd", "predict energies/forces with a checkpoint"),
    "convert-checkpoint": ("frameavg.cli.checkpoint_cmd", "convert FAENet weights of the original faenet package or the OCP fork"),
    "relax": ("frameavg.cli.simulation_cmd", "relax structures with a trained model (batched FIRE/LBFGS), IS2RS metrics"),
    "md": ("frameavg.cli.simulation_cmd", "molecular dynamics with a trained model (NVE, Langevin, Bussi): drift, stability"),
    "adsorbml": ("frameavg.cli.simulation_cmd", "AdsorbML screening on a dense adsorption folder: ML relaxations, "
                 "anomalies, success rates (ML-only, ML+SP@k, ML+RX@k), speed-ups"),
    "bench": ("frameavg.cli.bench_cmd", "throughput, peak memory and parameters of FAENet and the baselines on the same "
              "batches (or, with --accuracy, test MAE after the same training budget)"),
    "symmetry": ("frameavg.cli.symmetry_cmd", "invariance/equivariance errors of a model under rotations, reflections, "
                 "translations, permutations, periodic image shifts and cell choices"),
    "expressivity": ("frameavg.cli.expressivity_cmd", "train each model to tell apart geometric graph pairs "
                     "(k-chains, L-fold stars, counterexamples)"),
}


def command_help(name: str) -> str:
    return COMMANDS[name][1]


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0 (``--limit``)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, counts)."""
    import argparse

    value = nonnegative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def module_list(text: str) -> list[str]:
    """argparse type: comma-separated module names (``--plugins``)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def add_plugins_arg(p) -> None:
    """``--plugins MODULE[,MODULE]``: modules imported (by ``cli.main``) before the command runs, so
    that the models and readers they register can be named (see docs/extending.md)."""
    p.add_argument("--plugins", type=module_list, default=[], metavar="MODULE[,MODULE]",
                   help="import these modules first: your own models and readers (a checkpoint imports its own)")


def add_checkpoint_args(p, several_files: bool = False) -> None:
    """``--checkpoint``, ``--data`` (one file, or ``several_files``), ``--format``, ``--trusted`` and
    ``--plugins`` of the commands that run a trained model on structures."""
    p.add_argument("--checkpoint", required=True, help="checkpoint written by frameavg train")
    add_plugins_arg(p)
    if several_files:
        p.add_argument("--data", required=True, nargs="+", metavar="FILE",
                       help="structures (any format frameavg reads); several files: one model load, metrics per file")
    else:
        p.add_argument("--data", required=True, help="structures (any format frameavg reads)")
    p.add_argument("--format", default=None, help="reader name (default: detected from the path)")
    p.add_argument("--trusted", action="store_true", help="allow pickled legacy OC20 LMDBs")


def add_precision_args(p, default_precision: str = "32-true") -> None:
    """``--precision`` and ``--device`` of the commands that evaluate a checkpoint."""
    from frameavg.precision import ACCEPTED

    p.add_argument("--precision", default=default_precision, choices=ACCEPTED, metavar="PRECISION",
                   help=f"64-true, 32-true, bf16-mixed or 16-mixed (CUDA); default {default_precision}. "
                        "bf16-mixed falls back to 32-true on a CPU without bf16 instructions")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default cpu")


def runtime_precision(args):
    """The resolved ``Precision`` of ``--precision`` on ``--device`` (warns on a fallback)."""
    import warnings

    from frameavg.precision import resolve

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        precision = resolve(args.precision, args.device)
    for warning in caught:
        print(f"frameavg: warning: {warning.message}", file=sys.stderr)
    return precision
