"""Models side by side on the same real batches: throughput, memory, parameters (``frameavg bench``).

Two comparisons (issue 6):

* ``paper``: every model at its paper / OCP OC20 configuration (FAENet: the IS2RE configuration
  of DESIGN.md §3, 2D SE(3) frames) on the 8 OC20 IS2RE samples shipped with the package;
* ``equal-width``: every model at hidden width 128, 4 interaction blocks, cutoff 6 Å on 64 QM9
  molecules (energy) and 64 rMD17 ethanol frames (energy and conservative forces).

Each (model, configuration, dataset, mode) runs in a fresh child process, so that its peak memory
is its own, and a case that fails (e.g. killed for memory) is reported as such while the others go
on. Modes: inference (``torch.no_grad``, plus the force backward pass where forces are predicted)
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
import importlib
import multiprocessing
import resource
import statistics
import time
from dataclasses import dataclass

import torch

from frameavg.errors import ConfigError

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

EQUAL_WIDTH = dict(hidden_channels=128, num_interactions=4, cutoff=6.0)

#: FAENet at equal width: 128 channels and filters, 4 interactions, 6 Å, atom + period/group embeddings.
FAENET_EQUAL_WIDTH = dict(EQUAL_WIDTH, num_filters=128, num_gaussians=50, tag_hidden_channels=0,
                          pg_hidden_channels=32, phys_embeds=True, max_num_neighbors=40)


@dataclass(frozen=True)
class BenchCase:
    """One child-process job: a model at a configuration on a dataset."""

    model: str
    config: str
    dataset: str
    device: str = "cpu"
    mode: str = "inference"  # or "train"
    min_seconds: float = 2.0
    max_steps: int = 20
    threads: int | None = None


def model_setup(model: str, config: str) -> tuple[str, dict, dict | None]:
    """(registry name, constructor kwargs, frames or None) of a bench model at a configuration.

    Frames: ``{"frames": "3D"|"2D", "train": method, "eval": method}`` for FAENet.
    """
    from frameavg.models import MODELS

    if config not in COMPARISONS:
        raise ConfigError(f"unknown bench configuration {config!r}; choose from {', '.join(COMPARISONS)}")
    if model in ("faenet", "faenet-fa"):
        from frameavg.models.faenet import PAPER_CONFIGS

        if config == "paper":
            frames = {"frames": "2D", "train": "se3-stochastic", "eval": "se3-stochastic"}
            kwargs = dict(PAPER_CONFIGS["is2re"])
        else:
            frames = {"frames": "3D", "train": "stochastic", "eval": "stochastic"}
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
    return cutoff, kwargs.get("max_neighbors", kwargs.get("max_num_neighbors"))


def load_batch(dataset: str, cutoff: float, max_neighbors: int | None, device: str = "cpu"):
    """The dataset's benchmark batch (PyG ``Batch``) with energies in ``energy`` and a radius graph."""
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
    return Batch.from_data_list(graphs).to(device)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def _time_steps(step, device: str, min_seconds: float, max_steps: int) -> float:
    """Median seconds per call of ``step`` after one warm-up call (at least one timed call, more
    until ``min_seconds`` have passed or ``max_steps`` calls were timed)."""
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


def run_case(case: BenchCase) -> dict:
    """The record of one case (one model, configuration, dataset and mode); meant to run in a
    fresh process, so that peak memory is the case's own."""
    from frameavg.frames.averaging import FrameAveraging
    from frameavg.models import build_model

    if case.threads:
        torch.set_num_threads(case.threads)
    torch.manual_seed(0)
    name, kwargs, frames = model_setup(case.model, case.config)
    with_forces = DATASETS[case.dataset][3]
    kwargs["regress_forces"] = "from_energy" if with_forces else None
    cutoff, max_neighbors = _neighbor_settings(kwargs)
    batch = load_batch(case.dataset, cutoff, max_neighbors, case.device)
    net = build_model(name, **kwargs)
    params = sum(p.numel() for p in net.parameters())
    if frames is not None:
        net = FrameAveraging(net, frames=frames["frames"], method=frames["train"], eval_method=frames["eval"], seed=0)
    net = net.to(case.device)

    def predict():  # force models differentiate inside, without keeping a graph for a backward pass
        with torch.no_grad():
            return net(batch)

    def train_step():
        batch.pos.requires_grad_(with_forces)
        out = net(batch)
        loss = torch.nn.functional.mse_loss(out["energy"], batch.energy.to(out["energy"].dtype))
        if with_forces:
            loss = loss + torch.nn.functional.mse_loss(out["forces"], batch.forces.to(out["forces"].dtype))
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
    if case.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _current_rss_mb()
    seconds = _time_steps(step, case.device, case.min_seconds, case.max_steps)
    if case.device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = max(0.0, _peak_rss_mb() - base)
    return {"model": case.model, "config": case.config, "dataset": case.dataset, "mode": case.mode,
            "graphs_per_s": batch.num_graphs / seconds, "params": params, "peak_mem_mb": round(peak, 1),
            "ms_per_batch": 1000 * seconds, "graphs": batch.num_graphs, "device": case.device,
            "threads": torch.get_num_threads()}


def _run_isolated(case: BenchCase) -> dict:
    """``run_case`` in a fresh spawned process; a failure (out of memory, a model error) becomes a
    record with ``error`` and no throughput instead of ending the benchmark."""
    context = multiprocessing.get_context("spawn")
    try:
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            return pool.submit(run_case, case).result()
    except concurrent.futures.process.BrokenProcessPool:
        error = "the benchmark process died (killed for memory?)"
    except Exception as exc:  # noqa: BLE001 - reported in the record, the other cases go on
        error = f"{type(exc).__name__}: {exc}"
    return {"model": case.model, "config": case.config, "dataset": case.dataset, "mode": case.mode,
            "graphs_per_s": None, "params": None, "peak_mem_mb": None, "device": case.device, "error": error}


def run_benchmark(models=BENCH_MODELS, configs=tuple(COMPARISONS), device: str = "cpu", min_seconds: float = 2.0,
                  max_steps: int = 20, threads: int | None = None, train: bool = True, progress=None) -> list[dict]:
    """Records for every model × configuration × dataset, each in its own process, with
    ``ratio_to_faenet`` (graphs/s over FAENet's for the same configuration, dataset and mode)."""
    from frameavg.models import MODELS

    for model in models:
        if model not in BENCH_MODELS and model not in MODELS:
            raise ConfigError(f"unknown model {model!r}; choose from {', '.join(BENCH_MODELS)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    modes = ("inference", "train") if train else ("inference",)
    cases = [BenchCase(m, c, d, device, mode, min_seconds, max_steps, threads)
             for c in configs for d in COMPARISONS[c] for m in models for mode in modes
             if not (mode == "train" and m == "faenet-fa")]
    records: list[dict] = []
    for case in cases:
        records.append(_run_isolated(case))
        if progress is not None:
            progress(case)
    reference = {(r["config"], r["dataset"], r["mode"]): r["graphs_per_s"] for r in records if r["model"] == "faenet"}
    for r in records:
        ref = reference.get((r["config"], r["dataset"], r["mode"]))
        r["ratio_to_faenet"] = r["graphs_per_s"] / ref if ref and r["graphs_per_s"] else None
    return records


def format_table(records: list[dict]) -> str:
    """A markdown table of benchmark records."""
    lines = ["| config | dataset | mode | model | graphs/s | × FAENet | params | peak MB |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    for r in records:
        if r.get("error"):
            lines.append(f"| {r['config']} | {r['dataset']} | {r['mode']} | {r['model']} | failed: {r['error']} | | | |")
            continue
        ratio = "" if r.get("ratio_to_faenet") is None else f"{r['ratio_to_faenet']:.2f}"
        lines.append(f"| {r['config']} | {r['dataset']} | {r['mode']} | {r['model']} | {r['graphs_per_s']:.1f} | "
                     f"{ratio} | {r['params']:,} | {r['peak_mem_mb']:.0f} |")
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
        "frames": frames | {"eval": "all"} if frames else {"frames": "none"},
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
