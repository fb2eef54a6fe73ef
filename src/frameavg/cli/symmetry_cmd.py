"""`frameavg symmetry`: measure how invariant/equivariant a model is on real structures."""

from __future__ import annotations

import argparse
import itertools
import sys

import torch

from frameavg.cli.commands import add_plugins_arg, command_help, nonnegative_int, positive_int
from frameavg.errors import ConfigError

_CLAIMS_ALL = {"rotation": True, "reflection": True, "translation": True, "permutation": True,
               "image": True, "cell": True, "batch": True, "repeat": True}


def register(sub) -> None:
    from frameavg.evaluation.symmetry import CHECKS
    from frameavg.frames.methods import METHODS, PERIODIC_FRAMES

    parser = sub.add_parser(
        "symmetry",
        help=command_help("symmetry"),
        description="Transforms every structure at random, rebuilds its neighbour list, predicts again and "
                    "reports energy and force errors (mean/max, absolute/relative), plus batch independence "
                    "and determinism. Frame-averaged models also get errors per degeneracy class.",
    )
    parser.add_argument("--data", required=True, help="structures (any format `frameavg data formats` lists)")
    parser.add_argument("--format", default=None, help="reader name (default: detected)")
    parser.add_argument("--limit", type=nonnegative_int, default=None,
                        help="use the first N structures (default 64, with --continuity 1; 0 = all)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", default=None,
                       help="model name from the registry, randomly initialised (default raw-mpnn: a raw-coordinate "
                            "network that is not invariant by itself)")
    which.add_argument("--checkpoint", default=None, help="trained frameavg checkpoint (.ckpt)")
    add_plugins_arg(parser)
    parser.add_argument("--dims", "--frames", dest="dims", default=None, choices=["3D", "2D", "none"],
                        help="frame averaging dimension (default: the checkpoint's, else 3D); none = the bare model")
    parser.add_argument("--method", default=None, choices=list(METHODS),
                        help="frame method (default: the checkpoint's evaluation method, else all)")
    parser.add_argument("--periodic", default=None, choices=list(PERIODIC_FRAMES),
                        help="frames of periodic structures (default: the checkpoint's, else lattice)")
    parser.add_argument("--continuous", default=None, action=argparse.BooleanOptionalAction,
                        help="weighted frames whose average is continuous (default: the checkpoint's, else on)")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    parser.add_argument("--trials", type=int, default=1, help="random transforms per structure and check")
    parser.add_argument("--cutoff", type=float, default=None, help="neighbour-list cutoff, Å (default: the model's, else 6)")
    parser.add_argument("--max-neighbors", type=int, default=None,
                        help="neighbour cap (default: the checkpoint's, else none); ties at the cap are kept")
    parser.add_argument("--strict-neighbors", action="store_true",
                        help="cut ties at --max-neighbors arbitrarily (not rotation invariant in symmetric crystals)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--atol", type=float, default=None,
                        help="absolute tolerance of 'holds' (default: 1e-10 float64, 1e-5 float32; eV, eV/Å)")
    parser.add_argument("--rtol", type=float, default=None,
                        help="relative tolerance of 'holds' (default: 1e-9 float64, 1e-4 float32)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a claimed symmetry is measured above the tolerance")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    path = parser.add_argument_group("continuity (--continuity)")
    path.add_argument("--continuity", action="store_true",
                      help="instead of the symmetry checks: the energy along a seeded random straight path from each "
                           "structure (neighbour list rebuilt at every step, cell fixed); reports the largest and "
                           "median |dE| step, the jumps (steps above --factor x the local smooth change) and how "
                           "often the frame set changes. --strict: exit 1 on a jump")
    path.add_argument("--steps", type=positive_int, default=300, help="steps of the path (default 300)")
    path.add_argument("--step", type=float, default=0.002,
                      help="RMS displacement per atom per step, Å (default 0.002)")
    path.add_argument("--factor", type=float, default=10.0,
                      help="a jump: a step above FACTOR x the median |dE| of the 5 steps either side (default 10)")
    parser.set_defaults(func=run)


def run(args) -> int:
    from frameavg.cli.main import print_json
    from frameavg.data.readers import iter_structures
    from frameavg.evaluation.symmetry import symmetry_report

    dtype = getattr(torch, args.dtype)
    checks = tuple(c.strip() for c in args.checks.split(",") if c.strip())
    model, dims, method, cutoff, max_neighbors, name = build_symmetry_model(args, dtype)
    limit = args.limit if args.limit is not None else (1 if args.continuity else 64)
    stream = iter_structures(args.data, args.format, dtype=dtype)
    structures = list(itertools.islice(stream, limit) if limit else stream)
    if args.continuity:
        return run_continuity(args, model, structures, dims=dims, method=method, cutoff=cutoff,
                              max_neighbors=max_neighbors, name=name)
    report = symmetry_report(
        model, structures, checks=checks, dim=dims if dims != "none" else "3D", cutoff=cutoff,
        max_neighbors=max_neighbors, strict_neighbors=args.strict_neighbors, trials=args.trials, batch_size=args.batch_size, seed=args.seed,
        expected=claims(dims, method, _bare_model(model), periodic=_periodic_frames(model)), atol=args.atol, rtol=args.rtol,
    )
    report.meta.update({"data": str(args.data), "model": name, "dims": dims, "method": method})
    if args.json:
        print_json(report.to_dict())
    else:
        print(f"model {name} | dims {dims} | method {method} | {report.meta['structures']} structures "
              f"({report.meta['periodic']} periodic) | {args.dtype} | cutoff {cutoff} Å")
        print(report.table())
    broken = report.broken_claims()
    if broken:
        worst = ", ".join(f"{r.check} (|dE| {r.energy_abs_max:.2e}, |dF| "
                          f"{r.forces_abs_max if r.forces_abs_max is not None else float('nan'):.2e})" for r in broken)
        print(f"frameavg: warning: claimed symmetries measured above the tolerance: {worst}", file=sys.stderr)
        if args.strict:
            return 1
    return 0


def run_continuity(args, model, structures, *, dims, method, cutoff, max_neighbors, name) -> int:
    """``--continuity``: ``continuity_check`` on each structure; one JSON document with ``--json``."""
    from frameavg.cli.main import print_json
    from frameavg.errors import DataError
    from frameavg.evaluation.continuity import continuity_check

    if not structures:
        raise DataError("no structures to evaluate", source=str(args.data))
    if args.step <= 0 or args.factor <= 0:
        raise ConfigError(f"--step and --factor must be positive, got {args.step} and {args.factor}")
    rows = []
    for index, data in enumerate(structures):
        result = continuity_check(model, data, steps=args.steps, step=args.step, seed=args.seed, factor=args.factor,
                                  cutoff=cutoff, max_neighbors=max_neighbors, strict_neighbors=args.strict_neighbors,
                                  batch_size=args.batch_size)
        rows.append({"index": index, **result.to_dict()})
    jumps = sum(row["jumps"] for row in rows)
    report = {"meta": {"data": str(args.data), "model": name, "dims": dims, "method": method,
                       "dtype": args.dtype, "cutoff": cutoff, "max_neighbors": max_neighbors, "seed": args.seed,
                       "steps": args.steps, "step_A": args.step, "factor": args.factor},
              "jumps": jumps, "structures": rows}
    if args.json:
        print_json(report)
    else:
        print(f"model {name} | dims {dims} | method {method} | {args.dtype} | cutoff {cutoff} Å | "
              f"{args.steps} steps of {args.step} Å RMS per atom, seed {args.seed}")
        for row in rows:
            changes = "" if row["frame_changes"] is None else \
                f"; frame set changed {row['frame_changes']} times (sizes {row['frame_set_sizes']})"
            print(f"structure {row['index']} ({row['atoms']} atoms): largest |dE| step "
                  f"{1000 * row['max_abs_step_eV']:.4g} meV (step {row['largest_step']}), median "
                  f"{1000 * row['median_abs_step_eV']:.4g} meV, ratio {row['max_over_median']:.3g}; "
                  f"{row['jumps']} jump(s) above {args.factor:g}x the local change{changes}")
    if jumps:
        print(f"frameavg: warning: the energy jumped {jumps} time(s) along the path", file=sys.stderr)
        if args.strict:
            return 1
    return 0


def _frame_options(args, net) -> dict:
    """``periodic``/``continuous`` for a new FrameAveraging: the flags given, else those of the
    checkpoint's wrapper ``net`` (when it has one)."""
    options = {}
    for key in ("periodic", "continuous"):
        value = getattr(args, key, None)
        if value is None and net is not None and hasattr(net, key):
            value = getattr(net, key)
        if value is not None:
            options[key] = value
    return options


def claims(dims: str, method: str | None, model=None, periodic: str = "cloud") -> dict:
    """The symmetries guaranteed by the frame method (exactly for all/det; approximately never) or
    by the model's construction (its ``invariances`` attribute, e.g. SchNet's rotations).
    ``periodic="lattice"`` frames depend on how a cell is written: no claim on ``cell``."""
    if dims == "none" or method is None:
        out = {"permutation": True, "image": True, "cell": True, "batch": True, "repeat": True,
               "rotation": False, "reflection": False, "translation": False}
    else:
        kind = method.removeprefix("se3-")
        out = dict(_CLAIMS_ALL)
        if kind in ("stochastic", "DA") or kind.isdigit():  # random frames: k of the set, per call
            out.update(rotation=False, reflection=False, repeat=False)
        if method.startswith("se3-"):
            out["reflection"] = False
        if periodic == "lattice":
            out["cell"] = False
    for check in getattr(model, "invariances", ()):
        out[check] = True
    return out


def _periodic_frames(model) -> str:
    """The ``periodic`` option of the frame-averaging wrapper in ``model`` ("cloud" without one)."""
    return getattr(getattr(model, "net", model), "periodic", "cloud")


def _bare_model(model):
    """The network inside a training task and/or a frame-averaging wrapper."""
    from frameavg.frames.averaging import FrameAveraging

    model = getattr(model, "net", model)
    return model.model if isinstance(model, FrameAveraging) else model


def build_symmetry_model(args, dtype):
    """(model in eval mode, dims, method, cutoff, max_neighbors, description)."""
    from frameavg.frames.averaging import FrameAveraging

    if args.checkpoint:
        from frameavg.training.checkpoint_io import load_trained_model

        task = load_trained_model(args.checkpoint)
        net = task.net
        inner = net.model if isinstance(net, FrameAveraging) else net
        dims = args.dims or (net.eval_spec.dim if isinstance(net, FrameAveraging) else "none")
        method = args.method or (net.eval_spec.name if isinstance(net, FrameAveraging) else None)
        if dims != "none":
            if isinstance(net, FrameAveraging) and dims == net.eval_spec.dim and not _frame_options(args, None):
                # the same wrapper, so learned frames keep the checkpoint's trained canonicaliser
                task.net = net.with_eval_method(method or "all")
                task.net.reset_generator(args.seed)
            elif (method or "").removeprefix("se3-") == "learned":
                raise ConfigError(f"--dims {dims}: learned frames need the canonicaliser trained with the "
                                  "checkpoint's own frames; leave --dims out")
            else:
                task.net = FrameAveraging(inner, dims=dims, method=method or "all", seed=args.seed,
                                          **_frame_options(args, net))
        else:
            task.net = inner
            method = None
        neighbors = task.config.data.neighbors
        cutoff = args.cutoff or neighbors.cutoff
        max_neighbors = args.max_neighbors if args.max_neighbors is not None else neighbors.max_neighbors
        return task.to(dtype).eval(), dims, method, cutoff, max_neighbors, f"checkpoint {args.checkpoint}"

    from frameavg.models import build_model
    from frameavg.training.config_sections import NEW_RUN_MODEL_DEFAULTS, FramesConfig

    name = args.model or "raw-mpnn"
    torch.manual_seed(args.seed)
    inner = build_model(name, **NEW_RUN_MODEL_DEFAULTS.get(name, {}))  # as a new run would build it
    dims = args.dims or "3D"
    method = None if dims == "none" else (args.method or "all")
    options = {"periodic": FramesConfig.periodic, "continuous": FramesConfig.continuous,
               **_frame_options(args, None)}
    model = inner if dims == "none" else FrameAveraging(inner, dims=dims, method=method, seed=args.seed,
                                                          **options)
    cutoff = args.cutoff or float(getattr(inner, "cutoff", 6.0))
    if args.limit is not None and args.limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {args.limit}")
    return model.to(dtype).eval(), dims, method, cutoff, args.max_neighbors, f"{name} (random init, seed {args.seed})"
