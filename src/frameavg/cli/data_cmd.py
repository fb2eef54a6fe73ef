"""`frameavg data`: inspect (`info`), convert (`convert`) structure files, list formats (`formats`)."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Iterable

from frameavg.cli.commands import add_plugins_arg, command_help, nonnegative_int, positive_int
from frameavg.cli.main import print_json
from frameavg.errors import ConfigError

#: Fields describing the structure or the graph, not labels.
STRUCTURAL_FIELDS = {
    "pos", "atomic_numbers", "cell", "pbc", "natoms", "fixed", "tags", "edge_index", "cell_offsets",
    "neighbors", "name",
}
_DTYPES = ("float32", "float64")


def register(sub) -> None:
    parser = sub.add_parser("data", help=command_help("data"))
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    info = data_sub.add_parser("info", help="summary of a structure file: counts, elements, labels, edges")
    info.add_argument("path", help="file or folder (format detected; see `frameavg data formats`)")
    _add_read_options(info)
    info.add_argument("--cutoff", type=float, default=6.0, help="edges per atom at this cutoff, Å (0: skip)")
    info.add_argument("--max-neighbors", type=positive_int, default=None, help="cap neighbours per atom")
    info.add_argument("--limit", type=nonnegative_int, default=None, help="read only the first N structures")
    info.add_argument("--json", action="store_true", help="print one JSON document")
    info.set_defaults(func=_info)

    convert = data_sub.add_parser("convert", help="convert any supported input to our LMDB format")
    convert.add_argument("input", help="file or folder (format detected)")
    convert.add_argument("output", help="output LMDB file, e.g. train.lmdb (written atomically)")
    _add_read_options(convert)
    convert.add_argument("--cutoff", type=float, default=None, help="precompute edges at this cutoff, Å")
    convert.add_argument("--max-neighbors", type=positive_int, default=None, help="cap neighbours per atom")
    convert.add_argument(
        "--keep-ties", action="store_true", help="with --max-neighbors, keep neighbours tied within 0.01 Å (OCP)"
    )
    convert.add_argument("--dtype", choices=_DTYPES, default="float32", help="float precision stored")
    convert.add_argument("--limit", type=nonnegative_int, default=None, help="convert only the first N structures")
    convert.add_argument("--no-progress", action="store_true", help="no progress bar")
    convert.add_argument("--json", action="store_true", help="print one JSON document")
    convert.set_defaults(func=_convert)

    generate = data_sub.add_parser(
        "generate-adsorption",
        help="generate an OC20-Dense-style adsorption set with EMT as the ground truth (synthetic)")
    generate.add_argument("--out", required=True, help="output folder (resumes an interrupted run there)")
    generate.add_argument("--metals", default=None, help="comma-separated, default Cu,Ag,Au,Ni,Pd,Al,Pt")
    generate.add_argument("--adsorbates", default=None, help="comma-separated, default H,O,C,OH,CO,NH,N")
    generate.add_argument("--facets", default=None, help="comma-separated, default 111,100")
    generate.add_argument("--placements", type=nonnegative_int, default=None,
                          help="random placements per system beside the heuristic sites (default 8)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--ood-adsorbate", default=None, help="adsorbate held out (default: the last)")
    generate.add_argument("--ood-metal", default=None, help="metal held out (default: the last)")
    generate.add_argument("--workers", type=positive_int, default=1,
                          help="processes relaxing systems in parallel (same output for any number)")
    generate.add_argument("--no-progress", action="store_true", help="no progress bar")
    generate.add_argument("--json", action="store_true", help="print one JSON document (the split counts)")
    generate.set_defaults(func=_generate_adsorption)

    bulk = data_sub.add_parser(
        "generate-bulk",
        help="generate thermal, strained bulk fcc metal MD frames with EMT as the ground truth (synthetic)",
        description="Langevin MD of a cubic fcc supercell with ASE's EMT at each temperature, one random symmetric "
                    "strain per trajectory, decorrelated frames with energy, forces and stress written to "
                    "DIR/train.extxyz, val.extxyz, test.extxyz (whole trajectories per split) with metadata.json and "
                    "README.md. Deterministic given the seed; the defaults take a few minutes on one core.")
    bulk.add_argument("--out", required=True, metavar="DIR", help="output folder")
    bulk.add_argument("--element", default="Cu", help="fcc metal EMT models: Al, Cu, Ag, Au, Ni, Pd, Pt (default Cu)")
    bulk.add_argument("--size", type=positive_int, default=3, help="cubic cells per axis: 4 size^3 atoms (default 3: 108)")
    bulk.add_argument("--structures", type=positive_int, default=420, help="frames in all (default 420)")
    bulk.add_argument("--seed", type=int, default=0)
    bulk.add_argument("--temperatures", default="300,600,900,1200", help="K, comma-separated, one per trajectory in turn")
    bulk.add_argument("--strain", type=float, default=0.03, help="largest strain component (default 0.03)")
    bulk.add_argument("--frames-per-trajectory", type=positive_int, default=10, help="default 10")
    bulk.add_argument("--interval", type=positive_int, default=40, help="MD steps between frames (default 40)")
    bulk.add_argument("--equilibration", type=nonnegative_int, default=200,
                      help="MD steps before a trajectory's first frame (default 200)")
    bulk.add_argument("--timestep", type=float, default=1.0, help="fs (default 1)")
    bulk.add_argument("--no-progress", action="store_true", help="no progress bar")
    bulk.add_argument("--json", action="store_true", help="print one JSON document (the metadata)")
    bulk.set_defaults(func=_generate_bulk)

    formats = data_sub.add_parser("formats", help="list the input formats")
    formats.add_argument("--json", action="store_true", help="print one JSON document")
    add_plugins_arg(formats)
    formats.set_defaults(func=_formats)


def _add_read_options(parser) -> None:
    parser.add_argument("--format", default=None, help="input format (default: detected)")
    add_plugins_arg(parser)
    parser.add_argument("--keys", default=None, help="key mapping, e.g. energy=U0,forces=F")
    parser.add_argument("--required", default=None, help="labels every structure must have, e.g. energy,forces")
    parser.add_argument(
        "--trusted", action="store_true", help="allow unpickling legacy OC20 LMDBs (pickles can run code)"
    )
    parser.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE",
        help="reader-specific option, e.g. targets=U0,gap (QM9) or include_clean=true (Xu-Kitchin)",
    )


def parse_keys(text: str | None) -> dict[str, str]:
    """``"energy=U0,forces=F"`` -> ``{"energy": "U0", "forces": "F"}``."""
    if not text:
        return {}
    mapping = {}
    for item in text.split(","):
        field, sep, key = (part.strip() for part in item.partition("="))
        if not sep or not field or not key:
            raise ConfigError(f"--keys: expected FIELD=KEY pairs separated by commas, got {item!r}")
        mapping[field] = key
    return mapping


def parse_options(items: Iterable[str]) -> dict:
    """``["targets=U0,gap", "include_clean=true"]`` -> ``{"targets": ["U0", "gap"], "include_clean": True}``."""
    options = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--option: expected NAME=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = [v.strip() for v in value.split(",")] if "," in value else value
        options[name.strip()] = parsed
    return options


def _read_kwargs(args) -> dict:
    required = tuple(r.strip() for r in args.required.split(",") if r.strip()) if args.required else ()
    return {
        "format": args.format,
        "keys": parse_keys(args.keys),
        "required": required,
        "trusted": args.trusted,
        **parse_options(args.option),
    }


# ----------------------------------------------------------------------------- generate-adsorption
def _generate_adsorption(args) -> int:
    import sys
    import time

    from tqdm import tqdm

    from frameavg.simulation.adsorption_data import GenerationSettings, generate_adsorption

    given = {"metals": args.metals, "adsorbates": args.adsorbates, "facets": args.facets}
    options = {key: tuple(v.strip() for v in value.split(",") if v.strip()) for key, value in given.items() if value}
    if args.placements is not None:
        options["placements"] = args.placements
    settings = GenerationSettings(seed=args.seed, ood_adsorbate=args.ood_adsorbate, ood_metal=args.ood_metal, **options)
    settings = settings.validated()
    bar = tqdm(total=len(settings.metals) * len(settings.facets) * len(settings.adsorbates), unit=" systems",
               desc="EMT ground truth", disable=args.no_progress, file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()

    def progress(done, total, name):
        bar.set_postfix_str(name)
        bar.update(done - bar.n)

    try:
        manifest = generate_adsorption(args.out, settings, progress=progress, workers=args.workers)
    finally:
        bar.close()
    summary = adsorption_summary(manifest, args.out) | {"seconds": round(time.perf_counter() - start, 1)}
    if args.json:
        print_json(summary)
    else:
        print(format_adsorption_summary(summary))
    return 0


def adsorption_summary(manifest: dict, folder) -> dict:
    """Counts of a generated adsorption folder (from its manifest)."""
    systems = manifest["systems"]
    return {
        "path": str(folder), "label": manifest["label"], "ground_truth": manifest["ground_truth"],
        "systems": len(systems), "placements": manifest["placements"],
        "flagged_placements": manifest["flagged_placements"], "splits": manifest["splits"],
        "metals": manifest["settings"]["metals"], "adsorbates": manifest["settings"]["adsorbates"],
        "facets": manifest["settings"]["facets"], "held_out": {"adsorbate": manifest["settings"]["ood_adsorbate"],
                                                               "metal": manifest["settings"]["ood_metal"]},
        "less_physical_adsorbates": sorted({s["adsorbate"] for s in systems if s["less_physical"]}),
        "s2ef_frames": {split: count for split, count in manifest.get("s2ef_frames", {}).items()},
    }


def format_adsorption_summary(s: dict) -> str:
    splits = ", ".join(f"{name} {count}" for name, count in s["splits"].items())
    frames = ", ".join(f"{name} {count}" for name, count in s["s2ef_frames"].items())
    lines = [f"{s['path']}: {s['label']}",
             f"systems: {s['systems']} ({splits}); placements: {s['placements']}, "
             f"{s['flagged_placements']} flagged (not converged or anomalous)",
             f"metals {','.join(s['metals'])}; adsorbates {','.join(s['adsorbates'])}; facets {','.join(s['facets'])}; "
             f"held out: {s['held_out']['adsorbate']} and {s['held_out']['metal']}",
             f"less physical under EMT (molecules): {', '.join(s['less_physical_adsorbates']) or 'none'}"]
    if frames:
        lines.append(f"S2EF frames: {frames} (s2ef/<split>.lmdb); placements: dense/<split>.lmdb")
    if "seconds" in s:
        lines.append(f"{s['seconds']:.0f} s")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- generate-bulk
def _generate_bulk(args) -> int:
    import sys
    import time

    from tqdm import tqdm

    from frameavg.simulation.bulk_data import BulkSettings, generate_bulk

    try:
        temperatures = tuple(float(t) for t in args.temperatures.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"--temperatures must be comma-separated numbers (K), got {args.temperatures!r}") from None
    settings = BulkSettings(element=args.element, size=args.size, structures=args.structures, seed=args.seed,
                            temperatures=temperatures, strain=args.strain, timestep_fs=args.timestep,
                            equilibration=args.equilibration, interval=args.interval,
                            frames_per_trajectory=args.frames_per_trajectory).validated()
    bar = tqdm(total=settings.trajectories, unit=" trajectories", desc="EMT MD", disable=args.no_progress,
               file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        metadata = generate_bulk(args.out, settings, progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
    seconds = round(time.perf_counter() - start, 1)
    if args.json:
        print_json(metadata | {"path": str(args.out), "seconds": seconds})
    else:
        counts = metadata["structures"]
        print(f"{args.out}: {metadata['label']}\n{metadata['atoms_per_structure']}-atom {settings.element} cells "
              f"(a = {metadata['lattice_constant_A']:.4f} Å), {metadata['trajectories']} trajectories at "
              f"{', '.join(f'{t:g}' for t in settings.temperatures)} K, strain up to ±{settings.strain}\n"
              f"train {counts['train']}, val {counts['val']}, test {counts['test']} structures "
              f"(train.extxyz, val.extxyz, test.extxyz); {seconds:.0f} s")
    return 0


# ----------------------------------------------------------------------------- info
def _info(args) -> int:
    from frameavg.data.readers import resolve_path
    from frameavg.data.adsorption import is_adsorption_folder, read_manifest

    folder = resolve_path(args.path)
    if is_adsorption_folder(folder):
        summary = adsorption_summary(read_manifest(folder), folder)
        if args.json:
            print_json(summary)
        else:
            print(format_adsorption_summary(summary))
        return 0
    return run_info(
        args.path, args.cutoff, args.json, max_neighbors=args.max_neighbors, limit=args.limit, **_read_kwargs(args)
    )


def run_info(
    path: str | Path,
    cutoff: float | None = 6.0,
    as_json: bool = False,
    *,
    max_neighbors: int | None = None,
    limit: int | None = None,
    **options,
) -> int:
    """Print a summary of the structures at ``path`` (text, or one JSON document); returns 0.

    ``options`` go to ``iter_structures`` (format, keys, required, trusted, reader options).
    """
    from frameavg.data.readers import detect_format, iter_structures, resolve_path

    resolved = resolve_path(path)
    fmt = options.pop("format", None) or detect_format(resolved)
    structures = iter_structures(resolved, fmt, **options)
    if limit is not None:
        structures = islice(structures, limit)
    summary = summarize(structures, cutoff=cutoff or None, max_neighbors=max_neighbors)
    summary = {"path": str(resolved), "format": fmt, **summary}
    if as_json:
        print_json(summary)
    else:
        print(format_summary(summary))
    return 0


def summarize(structures: Iterable, cutoff: float | None = None, max_neighbors: int | None = None) -> dict:
    """Statistics of a stream of ``Data``: counts, elements, labels, periodicity, edges per atom."""
    import numpy as np
    import torch
    from ase.data import chemical_symbols

    from frameavg.data.neighbors import neighbor_list

    count, natoms, elements, periodicity, tags = 0, [], Counter(), Counter(), Counter()
    labels: dict[str, dict] = {}
    fixed = with_tags = edges = 0
    edge_ratios = []
    for data in structures:
        count += 1
        n = int(data.natoms.reshape(-1)[0])
        natoms.append(n)
        elements.update(data.atomic_numbers.tolist())
        periodicity["".join("T" if p else "F" for p in data.pbc.reshape(-1).tolist())] += 1
        fixed += int(data.fixed.sum()) if "fixed" in data else 0
        if "tags" in data:
            with_tags += 1
            tags.update(data.tags.tolist())
        for name, value in data.items():
            if name in STRUCTURAL_FIELDS or not isinstance(value, torch.Tensor):
                continue
            per_atom = value.dim() >= 1 and value.shape[0] == n and not (n == 1 and value.dim() == 1)
            entry = labels.setdefault(name, {"count": 0, "level": "atom" if per_atom else "structure", "values": []})
            entry["count"] += 1
            if not per_atom and value.numel() == 1:
                entry["values"].append(float(value))
        if cutoff:
            e = neighbor_list(data.pos, data.cell[0], data.pbc[0], cutoff, max_neighbors)[0].shape[1]
            edges += e
            edge_ratios.append(e / n)
    summary = {
        "count": count,
        "elements": {chemical_symbols[z]: c for z, c in sorted(elements.items())},
        "atoms_per_structure": {
            "min": min(natoms) if natoms else 0,
            "median": statistics.median(natoms) if natoms else 0,
            "max": max(natoms) if natoms else 0,
            "total": sum(natoms),
        },
        "periodicity": dict(sorted(periodicity.items())),
        "labels": {},
        "tags": {"structures": with_tags, "atoms_per_tag": {str(t): c for t, c in sorted(tags.items())}},
        "fixed_atoms": fixed,
        "cutoff": cutoff,
        "max_neighbors": max_neighbors,
        "edges_per_atom": None,
    }
    for name, entry in sorted(labels.items()):
        item = {"count": entry["count"], "level": entry["level"]}
        if entry["values"]:
            values = np.asarray(entry["values"])
            item.update(min=float(values.min()), mean=float(values.mean()), max=float(values.max()))
        summary["labels"][name] = item
    if cutoff and natoms:
        summary["edges_per_atom"] = {
            "mean": edges / sum(natoms),
            "min": float(min(edge_ratios)),
            "max": float(max(edge_ratios)),
        }
    return summary


def format_summary(s: dict) -> str:
    """Human-readable lines for a ``summarize`` result."""
    a = s["atoms_per_structure"]
    lines = [
        f"{s['path']}  (format: {s['format']})",
        f"  structures        {s['count']}",
        f"  atoms/structure   min {a['min']}, median {a['median']:g}, max {a['max']} (total {a['total']})",
        "  elements          " + ", ".join(f"{el} {c}" for el, c in s["elements"].items()),
        "  periodicity       " + ", ".join(f"pbc {p}: {c}" for p, c in s["periodicity"].items()),
    ]
    if s["labels"]:
        lines.append("  labels")
        for name, item in s["labels"].items():
            text = f"    {name:<16s}per {item['level']:<9s} in {item['count']}/{s['count']}"
            if "mean" in item:
                text += f"   min {item['min']:.6g}, mean {item['mean']:.6g}, max {item['max']:.6g}"
            lines.append(text)
    else:
        lines.append("  labels            none")
    t = s["tags"]
    if t["structures"]:
        per_tag = ", ".join(f"tag {k}: {v}" for k, v in t["atoms_per_tag"].items())
        lines.append(f"  tags              in {t['structures']}/{s['count']} structures ({per_tag} atoms)")
    else:
        lines.append("  tags              none")
    lines.append(f"  fixed atoms       {s['fixed_atoms']} of {a['total']}")
    if s["edges_per_atom"]:
        e = s["edges_per_atom"]
        cap = f", max {s['max_neighbors']} neighbours" if s["max_neighbors"] else ""
        lines.append(
            f"  edges per atom    {e['mean']:.2f} at cutoff {s['cutoff']:g} Å{cap} "
            f"(per structure min {e['min']:.2f}, max {e['max']:.2f})"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- convert
def _convert(args) -> int:
    return run_convert(
        args.input,
        args.output,
        cutoff=args.cutoff,
        max_neighbors=args.max_neighbors,
        strict=not args.keep_ties,
        dtype=args.dtype,
        limit=args.limit,
        progress=not args.no_progress,
        as_json=args.json,
        **_read_kwargs(args),
    )


def run_convert(
    input: str | Path,
    output: str | Path,
    *,
    cutoff: float | None = None,
    max_neighbors: int | None = None,
    strict: bool = True,
    dtype="float32",
    limit: int | None = None,
    progress: bool = True,
    as_json: bool = False,
    **options,
) -> int:
    """Convert ``input`` to our LMDB format at ``output`` (atomic write); returns 0.

    ``dtype``: ``"float32"``/``"float64"`` or a torch dtype."""
    import torch

    from frameavg.data.lmdb_store import write_lmdb
    from frameavg.data.neighbors import RadiusGraph
    from frameavg.data.readers import detect_format, iter_structures, resolve_path
    from frameavg.errors import DataError

    source = resolve_path(input)
    output = Path(output)
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise DataError("output would overwrite the input", source=str(output))
    fmt = options.pop("format", None) or detect_format(source)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    structures = iter_structures(source, fmt, dtype=dtype, **options)
    if limit is not None:
        structures = islice(structures, limit)
    if cutoff:
        transform = RadiusGraph(cutoff, max_neighbors, strict=strict)
        structures = (transform(d) for d in structures)
    metadata = {
        "source": str(source),
        "source_format": fmt,
        "keys": options.get("keys") or {},
        "cutoff": cutoff,
        "max_neighbors": max_neighbors if cutoff else None,
        "strict_max_neighbors": strict if cutoff else None,
        "dtype": str(dtype).replace("torch.", ""),
    }
    count = write_lmdb(structures, output, metadata=metadata, progress=progress)
    result = {"input": str(source), "format": fmt, "output": str(output), "count": count,
              "bytes": output.stat().st_size, **{k: metadata[k] for k in ("cutoff", "max_neighbors", "dtype")}}
    if as_json:
        print_json(result)
    else:
        print(f"wrote {count} structures to {output} ({result['bytes'] / 1e6:.2f} MB)")
    return 0


# ----------------------------------------------------------------------------- formats
def _formats(args) -> int:
    from frameavg.data.readers import available_formats

    formats = available_formats()
    if args.json:
        print_json(formats)
    else:
        for name, description in formats.items():
            print(f"{name:<15s}{description}")
    return 0
