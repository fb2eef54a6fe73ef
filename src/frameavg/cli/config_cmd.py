"""`frameavg config`: the resolved configuration of a run, checked, or the reference of every key."""

from __future__ import annotations

import argparse

from frameavg.cli.commands import command_help


def register(sub) -> None:
    p = sub.add_parser("config", help=command_help("config"),
                       description="Print CONFIG with its overrides and every default filled in, after the checks a "
                                   "run makes before it starts (keys, types, ranges, the model's arguments, cutoffs, "
                                   "frames vs. invariances); without CONFIG, the defaults. --keys: every key with its "
                                   "default, unit and meaning.")
    p.add_argument("config", nargs="?", help="YAML config (see configs/)")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="section.key=value or --section.key value")
    p.add_argument("--keys", action="store_true", help="list every key: default, unit, meaning")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=run_config)


def run_config(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.cli.train_cmd import split_flags

    overrides, flags = split_flags(args.overrides, switches=("--json", "--keys"))
    as_json, keys = args.json or "--json" in flags, args.keys or "--keys" in flags
    if keys:
        rows = key_reference()
        if as_json:
            print_json({"keys": rows})
        else:
            width = max(len(row["key"]) for row in rows)
            for row in rows:
                unit = f" [{row['unit']}]" if row["unit"] else ""
                print(f"{row['key']:<{width}}  {row['default']!r}{unit}  {row['doc']}")
        return 0
    import yaml

    from frameavg.training.config import load_run_config

    config = load_run_config(args.config, overrides)
    config.check_model(where=args.config or "config")
    document = config.to_dict()
    if as_json:
        print_json(document)
    else:
        print(yaml.safe_dump(document, sort_keys=False), end="")
    return 0


def key_reference() -> list[dict]:
    """Every key of every section: ``{"key", "default", "unit", "doc"}`` (``model`` and ``trainer``
    also take the model's constructor arguments and Lightning's ``Trainer`` arguments)."""
    import dataclasses

    from frameavg.training.config_sections import RunConfig

    rows = [{"key": item.name, "default": getattr(RunConfig(), item.name), "unit": item.metadata["unit"],
             "doc": item.metadata["doc"]} for item in dataclasses.fields(RunConfig) if item.name not in RunConfig.SECTIONS]
    for section in RunConfig.SECTIONS.values():
        rows += section.describe()
    return rows
