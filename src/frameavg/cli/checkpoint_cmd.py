"""`frameavg convert-checkpoint IN OUT`: original FAENet weights -> a frameavg FAENet checkpoint."""

from __future__ import annotations

from pathlib import Path

from frameavg.cli.commands import command_help


def register(sub) -> None:
    parser = sub.add_parser(
        "convert-checkpoint",
        help=command_help("convert-checkpoint"),
        description=(
            "Read a checkpoint of the original FAENet (faenet package state dict, OCP-fork trainer "
            "checkpoint, Lightning checkpoint) with torch.load(weights_only=True), load it into "
            "frameavg's FAENet and write a frameavg checkpoint (config + state dict)."
        ),
    )
    parser.add_argument("input", type=Path, help="checkpoint to convert (.pt/.pth/.ckpt)")
    parser.add_argument("output", type=Path, help="frameavg checkpoint to write")
    parser.add_argument(
        "--config", type=Path, default=None,
        help="model arguments (YAML/JSON); required when the checkpoint carries no model config, "
        "and overrides the checkpoint's values",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.set_defaults(func=run)


def run(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.errors import ConfigError
    from frameavg.models.faenet_checkpoint import (
        load_checkpoint_file,
        load_original_state_dict,
        normalise_original_config,
        read_config_file,
        save_converted,
        split_checkpoint,
    )

    state_dict, embedded = split_checkpoint(load_checkpoint_file(args.input))
    config = normalise_original_config(embedded) if embedded else {}
    if args.config is not None:
        config.update(normalise_original_config(read_config_file(args.config)))
    elif not embedded:
        raise ConfigError(f"{args.input}: the checkpoint carries no model configuration; pass --config")
    model = load_original_state_dict(state_dict, config)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_converted(model, config, args.output)
    summary = {
        "input": str(args.input),
        "output": str(args.output),
        "parameters": model.num_params,
        "tensors": len(model.state_dict()),
        "config": {k: v for k, v in sorted(config.items())},
    }
    if args.json:
        print_json(summary)
    else:
        print(f"converted {args.input} -> {args.output}: FAENet with {model.num_params:,} parameters")
    return 0
