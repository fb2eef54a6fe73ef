"""`frameavg demo`: the main job on data shipped inside the package."""

from __future__ import annotations

from frameavg.data.shipped import shipped_path


def register(sub) -> None:
    parser = sub.add_parser("demo", help="run the main job on the shipped rMD17 ethanol data")
    parser.set_defaults(func=run)


def run(args) -> int:
    from frameavg.cli.data_cmd import run_info

    return run_info(path=str(shipped_path("rmd17_ethanol/train")), cutoff=5.0, as_json=False)
