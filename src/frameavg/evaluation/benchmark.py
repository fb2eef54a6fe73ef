"""Models side by side on the same real batches: throughput, memory, parameters (``frameavg bench``).

Two comparisons (issue 6):

* ``paper``: every model at its paper / OCP OC20 configuration (FAENet: the IS2RE configuration
  of docs/faenet.md, 2D SE(3) frames) on the 8 OC20 IS2RE samples shipped with the package;
* ``equal-width``: every model at hidden width 128, 4 interaction blocks, cutoff 6 Å on 64 QM9
  molecules (energy) and 64 rMD17 ethanol frames (energy and conservative forces).

The models (and precisions) of one (configuration, dataset, mode) are timed in one fresh child
process, interleaved round by round (A B C A B C ...), and every ratio is the median of per-round
ratios with its spread: on a machine whose load drifts, ratios of runs made minutes apart are not
comparable (measured: 0.36 against 1.05 quiet). Peak memory is a separate pass with each case in
its own process, so that the peak is its own. A case that fails (e.g. killed for memory) is
reported as such while the others go on. Modes: inference (``torch.no_grad``, plus the force backward pass where forces are predicted)
and training step (forward, MSE loss on energies (and forces), backward, AdamW step). Neighbour lists
are built once before timing, for every model alike, with that model's cutoff and neighbour cap.
Throughput is graphs per second of the median step; ``ratio_to_faenet`` divides by FAENet's in the
same run. Peak memory: on CUDA ``torch.cuda.max_memory_allocated``; on CPU the growth of the
child's peak resident set size over its size once model and batch are built.

FAENet runs as trained and deployed: ``faenet`` with one random frame per graph (stochastic frame
averaging, the paper's fast setting), ``faenet-fa`` averaging over all frames (inference only).
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import multiprocessing
import resource
import statistics
import time
from dataclasses import dataclass

import torch

from frameavg.errors import ConfigError
from frameavg.outputs import ENERGY, FORCES

#: Benchmark datasets: shipped file, number of graphs in the batch, energy key, forces predicted.
DATASETS = {
    "oc20": ("shipped:oc20_is2re/bs8", 8, "y_init", False),
    "qm9": ("shipped:qm9_subset", 64, "U0", False),
    "ethanol": ("shipped:rmd17_ethanol/train", 64, "energy", True),
}

#: Which datasets each comparison runs on.
COMPARISONS = {"paper": ("oc20",), "equal-width": ("qm9", "ethanol")}

#: Models of the comparisons in report order; ``faenet-fa`` is FAENet with all frames at inference.
BENCH_MODELS = ("faenet", "faenet-fa", "schnet", "dimenetpp", "painn", "escn")

#: The study's extensions as further bench models (not in the default set): ``<model>-ewald`` adds
#: Ewald blocks with default settings (``models.ewald``; periodic on OC20, aperiodic on molecules),
#: ``faenet-learned`` trains and evaluates on learned frames (``frames.learned``).
EXTENSION_MODELS = ("faenet-ewald", "faenet-learned", "schnet-ewald", "painn-ewald")

EQUAL_WIDTH = dict(hidden_channels=128, num_interactions=4, cutoff=6.0)

#: FAENet at equal width: 128 channels and filters, 4 interactions, 6 Å, atom + period/group embeddings.
FAENET_EQUAL_WIDTH = dict(EQUAL_WIDTH, num_filters=128, num_gaussians=50, tag_hidden_channels=0,
                          pg_hidden_channels=32, phys_embeds=True, max_neighbors=40)


@dataclass(frozen=True)
class BenchCase:
    """One measurement: a model at a configuration on a dataset, in a mode and a precision."""

    model: str
    config: str
    dataset: str
    device: str = "cpu"
    mode: str = "inference"  # or "train"
    min_seconds: float = 2.0
    max_steps: int = 20
    threads: int | None = None
    precision: str = "32-true"

    @property
    def group(self) -> tuple:
        """Cases timed together, interleaved (same batch, same mode)."""
        return (self.config, self.dataset, self.mode, self.device)


def model_setup(model: str, config: str) -> tuple[str, dict, dict | None]:
    """(registry name, constructor kwargs, frames or None) of a bench model at a configuration.

    Frames: ``{"dims": "3D"|"2D", "train": method, "eval": method}`` (a config's ``frames`` section) for FAENet.
    """
    from frameavg.models import MODELS

    if config not in COMPARISONS:
        raise ConfigError(f"unknown bench configuration {config!r}; choose from {', '.join(COMPARISONS)}")
    if model in EXTENSION_MODELS:
        base, extension = model.rsplit("-", 1)
        name, kwargs, frames = model_setup(base, config)
        if extension == "ewald":
            kwargs["ewald"] = {}
        else:
            frames = dict(frames, train="learned", eval="learned")
        return name, kwargs, frames
    if model in ("faenet", "faenet-fa"):
        from frameavg.models.faenet import PAPER_CONFIGS

        if config == "paper":
            frames = {"dims": "2D", "train": "se3-stochastic", "eval": "se3-stochastic"}
            kwargs = dict(PAPER_CONFIGS["is2re"])
        else:
            frames = {"dims": "3D", "train": "stochastic", "eval": "stochastic"}
            kwargs = dict(FAENET_EQUAL_WIDTH)
        if model == "faenet-fa":
            frames["eval"] = "se3-all" if config == "paper" else "all"
        return "faenet", kwargs, frames
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; registered: {', '.join(sorted(MODELS))}")
    module = importlib.import_module(MODELS[model].__module__)
    name = "PAPER_CONFIG" if config == "paper" else "EQUAL_WIDTH_CONFIG"
    kwargs = getattr(module, name, None)
    if kwargs is None:
        raise ConfigError(f"model {model!r} defines no {name} in {module.__name__}")
    return model, dict(kwargs), None


def _neighbor_settings(kwargs: dict) -> tuple[float, int | None]:
    cutoff = float(kwargs.get("cutoff", 6.0))
    return cutoff, kwargs.get("max_neighbors", kwargs.get("max_num_neighbors"))  # FAENet takes both names


def load_batch(dataset: str, cutoff: float, max_neighbors: int | None, device: str = "cpu", budget=None):
    """The dataset's benchmark batch (PyG ``Batch``) with energies in ``energy`` and a radius graph:
    its first graphs, as many as fit ``budget`` (``data.budget.MemoryBudget``; None: all)."""
    from frameavg.data.budget import batches_by_budget

    from torch_geometric.data import Batch

    from frameavg.data.neighbors import RadiusGraph
    from frameavg.data.readers import read_structures

    path, count, energy_key, _ = DATASETS[dataset]
    transform = RadiusGraph(cutoff, max_neighbors, strict=False)
    graphs = []
    for data in read_structures(path)[:count]:
        data.energy = getattr(data, energy_key).to(torch.float32)
        if "tags" not in data:
            data.tags = torch.zeros(data.num_nodes, dtype=torch.long)
        graphs.append(transform(data))
    first = next(batches_by_budget(graphs, budget, source=path))
    return Batch.from_data_list(graphs[:len(first)]).to(device)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _time_steps(step, device: str, min_seconds: float, max_steps: int, warm_up: bool = True) -> float:
    """Median seconds per call of ``step`` after one warm-up call (at least one timed call, more
    until ``min_seconds`` have passed or ``max_steps`` calls were timed)."""
    if warm_up:
        step()
    times: list[float] = []
    start = time.perf_counter()
    while not times or (len(times) < max_steps and time.perf_counter() - start < min_seconds):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class _Prepared:
    step: object
    graphs: int
    params: int
    precision: object


def _prepare(case: BenchCase) -> _Prepared:
    """Build the case's model and batch; ``step`` runs one inference or training step."""
    from frameavg.data.budget import MemoryBudget
    from frameavg.frames.averaging import FrameAveraging
    from frameavg.models import build_model
    from frameavg.precision import resolve

    torch.manual_seed(0)
    precision = resolve(case.precision, case.device, warn=False)
    name, kwargs, frames = model_setup(case.model, case.config)
    with_forces = DATASETS[case.dataset][3]
    kwargs["regress_forces"] = "from_energy" if with_forces else None
    cutoff, max_neighbors = _neighbor_settings(kwargs)
    net = build_model(name, **kwargs)
    if frames is not None:
        net = FrameAveraging(net, dims=frames["dims"], method=frames["train"], eval_method=frames["eval"], seed=0,
                             canonicalizer=frames.get("canonicalizer"), periodic=frames.get("periodic", "lattice"),
                             continuous=frames.get("continuous", True))
    params = sum(p.numel() for p in net.parameters())  # a learned-frames canonicaliser included
    net = net.to(case.device)
    # the case's batch, cut to what the memory budget allows (``graphs`` in the record says how many)
    budget = MemoryBudget.for_network(net, cutoff=cutoff, max_neighbors=max_neighbors, training=case.mode == "train")
    batch = load_batch(case.dataset, cutoff, max_neighbors, case.device, budget=budget)

    def predict():  # force models differentiate inside, without keeping a graph for a backward pass
        with torch.no_grad(), precision.context():
            return net(batch)

    def train_step():
        with precision.context():
            out = net(batch)
            loss = torch.nn.functional.mse_loss(out[ENERGY], batch.energy.to(out[ENERGY].dtype))
            if with_forces:
                loss = loss + torch.nn.functional.mse_loss(out[FORCES], batch.forces.to(out[FORCES].dtype))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if case.mode == "train":
        net.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        step = train_step
    else:
        net.eval()
        step = predict
    return _Prepared(step, batch.num_graphs, params, precision)


def _record(case: BenchCase, **fields) -> dict:
    return {"model": case.model, "config": case.config, "dataset": case.dataset, "mode": case.mode,
            "precision": case.precision, "device": case.device, **fields}


def run_case(case: BenchCase) -> dict:
    """Peak memory (and a throughput) of one case; meant to run in a fresh process, so that the
    peak is the case's own. Peak: on CUDA ``torch.cuda.max_memory_allocated``, on CPU the growth of
    the peak resident set size over its size once model and batch are built."""
    if case.threads:
        torch.set_num_threads(case.threads)
    prepared = _prepare(case)
    if case.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_mb()
    seconds = _time_steps(prepared.step, case.device, case.min_seconds, case.max_steps)
    if case.device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = max(0.0, _peak_rss_mb() - base)
    return _record(case, graphs_per_s=prepared.graphs / seconds, params=prepared.params, peak_mem_mb=round(peak, 1),
                   ms_per_batch=1000 * seconds, graphs=prepared.graphs, threads=torch.get_num_threads(),
                   precision_used=prepared.precision.name)


def run_interleaved(cases: list[BenchCase], rounds: int = 5) -> list[dict]:
    """Time ``cases`` (one group: same batch and mode) in one process, interleaved: in each of
    ``rounds`` rounds every case runs its steps in turn (A B C A B C ...), so that a change of
    machine load hits all of them alike. Records hold the median seconds per step of each round
    (``round_seconds``); a case that fails gets ``error`` and the others go on."""
    if cases and cases[0].threads:
        torch.set_num_threads(cases[0].threads)
    prepared: dict[BenchCase, _Prepared] = {}
    errors: dict[BenchCase, str] = {}
    for case in cases:
        try:
            prepared[case] = _prepare(case)
            prepared[case].step()  # warm-up
        except Exception as exc:  # noqa: BLE001 - reported in the record, the other cases go on
            errors[case] = f"{type(exc).__name__}: {exc}"
            prepared.pop(case, None)
    times: dict[BenchCase, list[float]] = {case: [] for case in prepared}
    for _ in range(rounds):
        for case, item in prepared.items():
            times[case].append(_time_steps(item.step, case.device, case.min_seconds / rounds,
                                           max(1, case.max_steps // rounds), warm_up=False))
    records = []
    for case in cases:
        if case in errors:
            records.append(_record(case, graphs_per_s=None, params=None, error=errors[case]))
            continue
        item, seconds = prepared[case], statistics.median(times[case])
        records.append(_record(case, graphs_per_s=item.graphs / seconds, params=item.params,
                               ms_per_batch=1000 * seconds, graphs=item.graphs, round_seconds=times[case],
                               threads=torch.get_num_threads(), precision_used=item.precision.name))
    return records


def _in_fresh_process(function, argument, failed_records):
    """``function(argument)`` in a fresh spawned process; a failure (out of memory, a model
    error) becomes ``failed_records(error)`` instead of ending the benchmark."""
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(function, argument).result()
    except concurrent.futures.process.BrokenProcessPool:
        error = "the benchmark process died (killed for memory?)"
    except Exception as exc:  # noqa: BLE001 - reported in the record, the other cases go on
        error = f"{type(exc).__name__}: {exc}"
    return failed_records(error)


def _run_isolated(case: BenchCase) -> dict:
    """``run_case`` in a fresh process (an error record if it fails)."""
    return _in_fresh_process(run_case, case, lambda error: _record(
        case, graphs_per_s=None, params=None, peak_mem_mb=None, error=error))


def _run_group_isolated(cases: list[BenchCase], rounds: int) -> list[dict]:
    return _in_fresh_process(functools.partial(run_interleaved, rounds=rounds), cases, lambda error: [
        _record(case, graphs_per_s=None, params=None, error=error) for case in cases])


def _median_and_spread(values: list[float]) -> tuple[float | None, list[float] | None]:
    if not values:
        return None, None
    return statistics.median(values), [min(values), max(values)]


def add_ratios(records: list[dict]) -> None:
    """Per-round ratios, median and [min, max] over rounds: ``ratio_to_faenet`` (graphs/s over
    FAENet's, same group and precision) and ``ratio_to_32`` (a mixed-precision record's
    graphs/s over the same model's ``32-true``)."""
    by_key = {(r["config"], r["dataset"], r["mode"], r["device"], r["model"], r["precision"]): r for r in records}
    for r in records:
        group = (r["config"], r["dataset"], r["mode"], r["device"])
        for field, other in (("ratio_to_faenet", by_key.get(group + ("faenet", r["precision"]))),
                             ("ratio_to_32", by_key.get(group + (r["model"], "32-true")))):
            if field == "ratio_to_32" and r["precision"] == "32-true":
                continue
            mine, theirs = r.get("round_seconds"), (other or {}).get("round_seconds")
            ratios = [b / a for a, b in zip(mine, theirs)] if mine and theirs else []
            r[field], r[field + "_spread"] = _median_and_spread(ratios)


def run_benchmark(models=BENCH_MODELS, configs=tuple(COMPARISONS), device: str = "cpu", min_seconds: float = 2.0,
                  max_steps: int = 20, threads: int | None = None, train: bool = True, progress=None,
                  precisions=("32-true",), rounds: int = 5, memory: bool = True) -> list[dict]:
    """Records for every model × configuration × dataset × mode × precision.

    Throughput: the cases of one (configuration, dataset, mode) are timed together in one fresh
    process, interleaved over ``rounds`` rounds (``run_interleaved``); ratios are medians of
    per-round ratios with their spread (``add_ratios``). Peak memory (``memory``): a separate
    pass, every case in its own process (``run_case``)."""
    from frameavg.models import MODELS
    from frameavg.precision import normalize_name

    for model in models:
        if model not in BENCH_MODELS + EXTENSION_MODELS and model not in MODELS:
            raise ConfigError(f"unknown model {model!r}; choose from {', '.join(BENCH_MODELS + EXTENSION_MODELS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    precisions = [normalize_name(p) for p in precisions]
    modes = ("inference", "train") if train else ("inference",)
    cases = [BenchCase(m, c, d, device, mode, min_seconds, max_steps, threads, precision)
             for c in configs for d in COMPARISONS[c] for mode in modes for m in models for precision in precisions
             if not (mode == "train" and m == "faenet-fa")]
    groups: dict[tuple, list[BenchCase]] = {}
    for case in cases:
        groups.setdefault(case.group, []).append(case)
    records: list[dict] = []
    for group in groups.values():
        records += _run_group_isolated(group, rounds)
        if progress is not None:
            progress(group[0], "timed")
    if memory:
        for record, case in zip(records, [c for g in groups.values() for c in g]):
            if record.get("error"):
                continue
            measured = _run_isolated(BenchCase(**{**case.__dict__, "min_seconds": 0.0, "max_steps": 2}))
            record["peak_mem_mb"] = measured.get("peak_mem_mb")
            if progress is not None:
                progress(case, "memory")
    add_ratios(records)
    return records


def _ratio(r: dict, field: str) -> str:
    value, spread = r.get(field), r.get(field + "_spread")
    if value is None:
        return ""
    return f"{value:.2f} ({spread[0]:.2f}–{spread[1]:.2f})" if spread else f"{value:.2f}"


def format_table(records: list[dict]) -> str:
    """A markdown table of benchmark records (ratios: median of rounds, (min–max))."""
    lines = ["| config | dataset | mode | model | precision | graphs/s | × FAENet | × 32-true | params | peak MB |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        head = f"| {r['config']} | {r['dataset']} | {r['mode']} | {r['model']} | {r.get('precision', '32-true')}"
        if r.get("error"):
            lines.append(f"{head} | failed: {r['error']} | | | | |")
            continue
        if r.get("precision_used", r.get("precision")) != r.get("precision"):
            head += f" (ran {r['precision_used']})"
        peak = "" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
        lines.append(f"{head} | {r['graphs_per_s']:.1f} | {_ratio(r, 'ratio_to_faenet')} | {_ratio(r, 'ratio_to_32')} | "
                     f"{r['params']:,} | {peak} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- accuracy for a fixed CPU budget

#: Training set-ups of the accuracy comparison (shipped data; same optimiser for every model).
ACCURACY_DATASETS = {
    "ethanol": {
        "data": {"train": "shipped:rmd17_ethanol/train", "test": "shipped:rmd17_ethanol/test", "val_fraction": 0.05,
                 "batch_size": 16, "eval_batch_size": 100},
        "targets": {"energy": True, "forces": True},
        "loss": {"energy": "mse", "forces": "mse", "energy_weight": 1.0, "forces_weight": 10.0},
    },
    "qm9": {
        "data": {"train": "shipped:qm9_subset", "options": {"targets": ["U0"]}, "keys": {"energy": "U0"},
                 "val_fraction": 0.1, "test_fraction": 0.1, "batch_size": 32},
        "targets": {"energy": True, "forces": False},
        "loss": {"energy": "mae"},
    },
}


def budget_overrides(minutes: float) -> dict:
    """Optimiser settings for training "as far as ``minutes`` of wall time allow": reduce-on-plateau
    (a cosine schedule needs the number of epochs in advance) and an epoch cap that never binds."""
    return {"max_time_minutes": minutes, "max_epochs": 100_000, "scheduler": "plateau", "plateau_patience": 3}


def accuracy_config(model: str, dataset: str, minutes: float, run_dir: str, seed: int = 0) -> dict:
    """Training configuration of one model (equal-width set-up) on an accuracy dataset."""
    from frameavg.training.config import load_config, merge

    name, kwargs, frames = model_setup(model, "equal-width")
    setup = ACCURACY_DATASETS[dataset]
    cutoff, max_neighbors = _neighbor_settings(kwargs)
    kwargs["regress_forces"] = "from_energy" if setup["targets"]["forces"] else None
    config = load_config(None)
    merge(config, {
        "name": f"{model}_{dataset}", "seed": seed, "run_dir": run_dir,
        "model": {"name": name, **kwargs},
        "frames": frames | {"eval": "all"} if frames else {"dims": "none"},
        "data": {**setup["data"], "cutoff": cutoff, "max_neighbors": max_neighbors},
        "targets": setup["targets"], "loss": setup["loss"],
        "optim": {"lr": 1e-3, "warmup_steps": 50, **budget_overrides(minutes)},
        "trainer": {"enable_progress_bar": False},
    }, where="bench")
    return config


def run_accuracy(models=BENCH_MODELS, datasets=tuple(ACCURACY_DATASETS), minutes: float = 5.0,
                 run_dir: str = "runs/bench", progress=None) -> list[dict]:
    """Test MAE of every model trained for ``minutes`` on each dataset (accuracy per CPU-minute)."""
    from frameavg.training.run import train

    records = []
    for dataset in datasets:
        for model in models:
            if model == "faenet-fa":
                continue
            start = time.perf_counter()
            config = accuracy_config(model, dataset, minutes, run_dir)
            result = train(config)
            test, baseline = result["test"], result["baseline"]
            record = {"model": model, "config": "equal-width", "dataset": dataset, "mode": "accuracy",
                      "minutes": minutes, "wall_s": round(time.perf_counter() - start, 1), "epochs": result["epochs"],
                      "energy_mae": test["energy_mae"], "baseline_energy_mae": baseline["energy_mae"],
                      "run_dir": result["run_dir"]}
            if "forces_mae" in test:
                record |= {"forces_mae": test["forces_mae"], "baseline_forces_mae": baseline["forces_mae"]}
            records.append(record)
            if progress is not None:
                progress(record)
    return records


def format_accuracy_table(records: list[dict]) -> str:
    """A markdown table of accuracy records (MAE in meV and meV/Å)."""
    lines = ["| dataset | model | minutes | epochs | energy MAE (meV) | forces MAE (meV/Å) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in records:
        forces = f"{1000 * r['forces_mae']:.1f}" if "forces_mae" in r else ""
        lines.append(f"| {r['dataset']} | {r['model']} | {r['minutes']:g} | {r['epochs']} | "
                     f"{1000 * r['energy_mae']:.1f} | {forces} |")
    return "\n".join(lines)
