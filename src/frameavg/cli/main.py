"""`frameavg` command: dispatches to one module per command group.

Each module in COMMAND_MODULES exposes ``register(subparsers)``, which adds its parser(s) and sets
``func`` (called with the parsed args, returns an exit code or None).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from frameavg import __version__
from frameavg.errors import FrameavgError

COMMAND_MODULES = (
    "frameavg.cli.data_cmd",
    "frameavg.cli.train_cmd",
    "frameavg.cli.checkpoint_cmd",
    "frameavg.cli.bench_cmd",
    "frameavg.cli.symmetry_cmd",
    "frameavg.cli.expressivity_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frameavg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"frameavg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def print_json(document) -> None:
    """Print one JSON document to stdout (the `--json` contract of reporting commands)."""
    json.dump(document, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        code = args.func(args)
    except (FrameavgError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if args.debug:
            raise
        print(f"frameavg: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("frameavg: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
