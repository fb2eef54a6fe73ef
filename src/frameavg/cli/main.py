"""`frameavg` command: dispatches to one module per command group.

``frameavg.cli.commands.COMMANDS`` names each command's module, which exposes
``register(subparsers)``: it adds its parser(s) and sets ``func`` (called with the parsed args,
returns an exit code or None). Only the module of the command on the line is imported; the others
appear in ``--help`` from the table alone, so start-up stays cheap. A command with ``--plugins``
(``commands.add_plugins_arg``) gets those modules imported before ``func`` runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from frameavg import __version__
from frameavg.cli.commands import COMMANDS
from frameavg.errors import FrameavgError


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``prog: error: message (see prog --help)``), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; the command named in ``argv`` gets its full parser, the others a stub (all of
    them fully when ``argv`` is None)."""
    parser = Parser(prog="frameavg", description="frame averaging and FAENet for machine learning on 3D atomic systems")
    parser.add_argument("--version", action="version", version=f"frameavg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = [a for a in (argv or []) if not a.startswith("-")][:1] if argv is not None else list(COMMANDS)
    modules = dict.fromkeys(COMMANDS[name][0] for name in wanted if name in COMMANDS)
    for module in modules:
        importlib.import_module(module).register(sub)
    for name, (_, text) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=text)
    return parser


def print_json(document) -> None:
    """Print one JSON document to stdout (the `--json` contract of reporting commands)."""
    json.dump(document, sys.stdout, indent=2, default=_json_default)
    sys.stdout.write("\n")


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr, like errors."""
    print(f"frameavg: warning: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    import warnings

    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():  # restores the caller's warning display afterwards
            if not args.debug:
                warnings.showwarning = _show_warning
            if getattr(args, "plugins", None):
                from frameavg.plugins import import_plugins

                import_plugins(args.plugins, where="--plugins")
            code = args.func(args)
    except (FrameavgError, FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        if args.debug:
            raise
        print(f"frameavg: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("frameavg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (| head): not an error
        _silence_stdout()
        return 0
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    return int(code or 0)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
