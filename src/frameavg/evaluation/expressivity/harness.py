"""Train and test any registered model on the pairs of ``structures``: binary classification of
the pair, a fresh initialisation per seed, accuracy on the pair as given and under random rigid
motions, mean ± std over seeds.

Protocol per (pair, model, layers, seed):

* the model is built with the common constructor names (``hidden_channels``,
  ``num_interactions`` = layers, ``cutoff``, ``max_neighbors``, ``regress_forces``) and, for the
  ``faenet-*`` suite names, wrapped in ``FrameAveraging`` (3D frames);
* its logit is the per-graph ``energy`` (``regress_forces=None``), or for the star test
  (``readout="centre-vector"``) a learned linear map ``w · v + b`` of the model's vector output
  ``forces`` [3] at the centre atom: the direct force head when the model has one, else −∂E/∂pos;
* Adam on the binary cross-entropy of both graphs in one batch, for ``steps`` steps, stopping
  early once both logits are on the right side by ``FIT_LOGIT`` for ``FIT_PATIENCE`` steps, or
  when both graphs keep the same logit and the loss has stalled (no gain of ``STALL_DELTA`` in
  ``STALL_STEPS`` steps);
* test: ``test_copies`` copies of each graph as given, and as many with an independent uniform
  rotation (SO(3)) and a Gaussian translation (σ = 5 Å) each; stochastic frames draw a frame per
  copy. A copy scores 1 when its logit is on the right side of 0 by more than ``margin``, 0.5
  when |logit| <= ``margin`` (undecided: outputs that are equal up to float round-off must not
  be split by the sign of the noise), 0 otherwise. Accuracy in percent.
"""

from __future__ import annotations

import inspect
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from frameavg.errors import ConfigError
from frameavg.evaluation.expressivity.structures import (
    COUNTEREXAMPLES,
    GeometricPair,
    counterexample_pair,
    k_chain_pair,
    star_pair,
)
from frameavg.frames import FrameAveraging
from frameavg.frames.linalg import random_orthogonal
from frameavg.models import MODELS, FAENet
from frameavg.outputs import ENERGY, FORCES

TESTS = ("k-chains", "stars", "counterexamples")
#: FAENet suite names: ``FrameAveraging`` options (3D frames; evaluation uses the same method).
#: ``faenet-fa-plainpca`` turns degeneracy detection off (tol=0): plain PCA eigenvectors, to show
#: what the degeneracy handling does on the (degenerate) stars.
FAENET_VARIANTS = {
    "faenet-fa": dict(method="all"),
    "faenet-sfa": dict(method="stochastic"),
    "faenet-se3": dict(method="se3-all"),
    "faenet-fa-plainpca": dict(method="all", tol=0.0),
}
DEFAULT_MODELS = ("faenet-fa", "faenet-sfa", "faenet-se3", "schnet", "dimenetpp", "painn", "escn")
#: Suite options of known models, passed when their constructor takes them (they override the
#: common ones): FAENet without tags (the structures have none) and with small period/group
#: embeddings; a small DimeNet++ basis; eSCN with lmax 2, mmax 1, 16 channels, 0.2 Å distance basis.
MODEL_OPTIONS = {
    "faenet": dict(tag_hidden_channels=0, pg_hidden_channels=8, num_gaussians=32),
    "dimenetpp": dict(int_emb_size=32, basis_emb_size=8, out_emb_channels=64, num_spherical=4, num_radial=4),
    "escn": dict(hidden_channels=16, edge_channels=16, lmax=2, mmax=1, distance_resolution=0.2),
}
FIT_LOGIT = 4.0
FIT_PATIENCE = 5
#: Training also stops when both graphs have had the same logit (to 1e-12) and the loss
#: has not improved by STALL_DELTA for STALL_STEPS steps: only the bias moves (loss stays at ln 2).
STALL_STEPS = 20
STALL_DELTA = 1e-4
IDENTICAL_LOGITS = 1e-12
TRANSLATION_SCALE = 5.0  # Å


@dataclass(frozen=True)
class SuiteSettings:
    """What the suite runs and how long it trains.

    chain_lengths: k of the k-chains; each is trained with 1 .. ⌊k/2⌋ + 3 layers (``chain_layers``
        overrides the list). folds: L of the stars (one layer). counterexamples: names from
        ``structures.COUNTEREXAMPLES`` (one layer).
    """

    seeds: int = 10
    steps: int = 120
    lr: float = 5e-3
    hidden_channels: int = 64
    dtype: torch.dtype = torch.float64
    chain_lengths: tuple[int, ...] = (4, 6)
    chain_layers: tuple[int, ...] | None = None
    folds: tuple[int, ...] = (2, 3, 5, 10)
    counterexamples: tuple[str, ...] = COUNTEREXAMPLES
    tests: tuple[str, ...] = TESTS
    test_copies: int = 8
    margin: float = 1e-3

    @classmethod
    def quick(cls) -> "SuiteSettings":
        """Reduced settings (``--quick``): 3 seeds, k = 4 only with 1, 3 and 5 layers, 100 steps."""
        return cls(seeds=3, steps=100, chain_lengths=(4,), chain_layers=(1, 3, 5), test_copies=4)

    def layers_for(self, k: int) -> tuple[int, ...]:
        return self.chain_layers or tuple(range(1, k // 2 + 4))


@dataclass
class Record:
    """One row of results: accuracy (percent) over seeds of ``model`` on one pair."""

    test: str
    case: str
    model: str
    layers: int
    rotated: bool
    mean: float
    std: float
    seeds: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SuiteResult:
    """Records of a run, models skipped (name -> reason), wall time and CPU time (all processes)
    in seconds."""

    records: list[Record] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_seconds: float = 0.0


# ---------------------------------------------------------------------------------- models
def base_model_name(name: str) -> str:
    """Registry name behind a suite name (``faenet-fa`` -> ``faenet``)."""
    return "faenet" if name in FAENET_VARIANTS else name


def model_problem(name: str) -> str | None:
    """None when the suite can build ``name``, else why not (not registered, no common names)."""
    base = base_model_name(name)
    if base not in MODELS:
        return f"not registered in frameavg.models.MODELS (available: {', '.join(sorted(MODELS))})"
    params = inspect.signature(MODELS[base]).parameters
    missing = [p for p in ("hidden_channels", "num_interactions", "cutoff", "regress_forces") if p not in params]
    if missing:
        return f"constructor lacks the common argument(s) {', '.join(missing)}"
    return None


def vector_force_mode(name: str) -> str:
    """``direct`` when the model has a direct force head, else ``from_energy``."""
    cls = MODELS[base_model_name(name)]
    return "direct" if cls is FAENet or getattr(cls, "has_direct_forces", False) else "from_energy"


def _fresh_model(cls: type, kwargs: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kwargs)


def build_model(name: str, layers: int, cutoff: float, hidden_channels: int, regress_forces: str | None,
                seed: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A freshly initialised suite model (FrameAveraging-wrapped for the ``faenet-*`` names)."""
    problem = model_problem(name)
    if problem:
        raise ConfigError(f"model {name!r}: {problem}")
    base = base_model_name(name)
    cls = MODELS[base]
    params = inspect.signature(cls).parameters
    kwargs = dict(hidden_channels=hidden_channels, num_interactions=layers, cutoff=cutoff,
                  regress_forces=regress_forces)
    if "max_neighbors" in params:  # FAENet keeps its original cap of 64 here, the baselines all neighbours
        kwargs["max_neighbors"] = 64 if cls is FAENet else None
    options = dict(MODEL_OPTIONS.get(base, {}), **({"num_filters": hidden_channels} if cls is FAENet else {}))
    kwargs.update({key: value for key, value in options.items() if key in params})
    model = _fresh_model(cls, kwargs, seed).to(dtype)
    if name in FAENET_VARIANTS:
        model = FrameAveraging(model, dims="3D", seed=seed, **FAENET_VARIANTS[name])
    return model


class PairClassifier(nn.Module):
    """Logit [B] of a model: its energy, or ``w · forces[centre] + b`` (``centre`` given)."""

    def __init__(self, model: nn.Module, centre: int | None):
        super().__init__()
        self.model = model
        self.centre = centre
        self.probe = nn.Linear(3, 1) if centre is not None else None

    def forward(self, batch: Batch) -> Tensor:
        out = self.model(batch)
        if self.probe is None:
            return out[ENERGY].reshape(-1)
        vectors = out[FORCES].index_select(0, batch.ptr[:-1] + self.centre)
        return self.probe(vectors.to(self.probe.weight.dtype)).reshape(-1)


# ------------------------------------------------------------------------------- protocol
def rigid_copies(graph: Data, count: int, generator: torch.Generator | None) -> list[Data]:
    """``count`` copies of ``graph``; with a generator, each under its own random rotation (SO(3))
    and translation (σ = 5 Å). Edges are unchanged (they are bonds, not a radius graph)."""
    copies = [graph.clone() for _ in range(count)]
    if generator is None:
        return copies
    rotations = random_orthogonal(count, proper=True, generator=generator, dtype=graph.pos.dtype)
    shifts = TRANSLATION_SCALE * torch.randn(count, 3, generator=generator, dtype=torch.float64).to(graph.pos.dtype)
    for copy, rotation, shift in zip(copies, rotations, shifts):
        copy.pos = graph.pos @ rotation.T + shift
    return copies


def score(logits: Tensor, labels: Tensor, margin: float) -> float:
    """Accuracy in percent: right side of 0 by more than ``margin`` 1, undecided 0.5, wrong 0."""
    signed = (2 * labels - 1) * logits.detach().to(torch.float64)
    points = torch.where(signed > margin, 1.0, torch.where(signed.abs() <= margin, 0.5, 0.0))
    return 100.0 * float(points.mean())


@contextmanager
def one_thread():
    """Run with one intra-op thread, then restore the setting. The suite's graphs have at most 12
    atoms: a second thread only adds synchronisation (on a loaded 2-core machine tiny ops took
    milliseconds waiting for it: 10x slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_and_test(pair: GeometricPair, name: str, layers: int, seed: int, settings: SuiteSettings,
                   readout: str = "energy") -> tuple[float, float]:
    """Accuracy (percent) on the pair as given and under random rigid motions, for one seed."""
    with one_thread():
        return _train_and_test(pair, name, layers, seed, settings, readout)


def _train_and_test(pair: GeometricPair, name: str, layers: int, seed: int, settings: SuiteSettings,
                    readout: str) -> tuple[float, float]:
    regress_forces = vector_force_mode(name) if readout == "centre-vector" else None
    model = build_model(name, layers, pair.cutoff, settings.hidden_channels, regress_forces, seed, settings.dtype)
    classifier = PairClassifier(model, pair.centre if readout == "centre-vector" else None).to(settings.dtype)
    if pair.graphs[0].pos.dtype != settings.dtype:
        raise ConfigError(f"pair {pair.test} {pair.case} is {pair.graphs[0].pos.dtype}, the suite runs in "
                          f"{settings.dtype}: build it with dtype={settings.dtype} (rounded coordinates break "
                          "the symmetries the tests rely on, and training amplifies the difference)")
    batch = Batch.from_data_list(list(pair.graphs))
    labels = torch.tensor([0.0, 1.0])
    optimizer = torch.optim.Adam(classifier.parameters(), lr=settings.lr, foreach=True)
    loss_fn = nn.BCEWithLogitsLoss()
    classifier.train()
    fitted, best, best_step = 0, math.inf, 0
    for step in range(settings.steps):
        optimizer.zero_grad(set_to_none=True)
        logits = classifier(batch)
        loss = loss_fn(logits, labels.to(logits.dtype))
        if not loss.requires_grad:  # nothing to learn (cannot happen with a probe or an energy head)
            break
        loss.backward()
        optimizer.step()
        fitted = fitted + 1 if float(((2 * labels - 1) * logits.detach()).min()) > FIT_LOGIT else 0
        identical = float(logits.detach().max() - logits.detach().min()) <= IDENTICAL_LOGITS
        if float(loss.detach()) < best - STALL_DELTA or not identical:
            best, best_step = min(best, float(loss.detach())), step
        if fitted >= FIT_PATIENCE or step - best_step >= STALL_STEPS:
            break
    classifier.eval()
    generator = torch.Generator().manual_seed(10_000 + seed)
    if isinstance(model, FrameAveraging):
        model.reset_generator(20_000 + seed)
    accuracies = []
    for rotate in (False, True):
        copies = [c for graph in pair.graphs
                  for c in rigid_copies(graph, settings.test_copies, generator if rotate else None)]
        test_labels = torch.tensor([0.0] * settings.test_copies + [1.0] * settings.test_copies)
        with torch.no_grad():
            logits = classifier(Batch.from_data_list(copies))
        accuracies.append(score(logits, test_labels, settings.margin))
    return accuracies[0], accuracies[1]


@dataclass(frozen=True)
class Job:
    """One (pair, model, layers) cell of the suite, trained over all seeds."""

    pair: GeometricPair
    model: str
    layers: int
    readout: str


def suite_jobs(models: Iterable[str], settings: SuiteSettings) -> list[Job]:
    """All cells for ``models`` (suite names) under ``settings``, in table order."""
    jobs = []
    for test in settings.tests:
        if test == "k-chains":
            pairs = [(k_chain_pair(k, settings.dtype), settings.layers_for(k)) for k in settings.chain_lengths]
            readout = "energy"
        elif test == "stars":
            pairs = [(star_pair(fold, settings.dtype), (1,)) for fold in settings.folds]
            readout = "centre-vector"
        elif test == "counterexamples":
            pairs = [(counterexample_pair(case, settings.dtype), (1,)) for case in settings.counterexamples]
            readout = "energy"
        else:
            raise ConfigError(f"unknown test {test!r}; choose from {', '.join(TESTS)}")
        for pair, layer_list in pairs:
            for model in models:
                for layers in layer_list:
                    jobs.append(Job(pair, model, layers, readout))
    return jobs


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def run_job(job: Job, settings: SuiteSettings) -> list[Record]:
    """The two records (as given, rotated) of one cell over ``settings.seeds`` seeds."""
    results = [train_and_test(job.pair, job.model, job.layers, seed, settings, job.readout)
               for seed in range(settings.seeds)]
    records = []
    for column, rotated in ((0, False), (1, True)):
        mean, std = _mean_std([r[column] for r in results])
        records.append(Record(job.pair.test, job.pair.case, job.model, job.layers, rotated,
                              round(mean, 2), round(std, 2), settings.seeds))
    return records




def run_suite(models: Iterable[str] = DEFAULT_MODELS, settings: SuiteSettings | None = None,
              progress: Callable[[str], None] | None = None, workers: int = 1) -> SuiteResult:
    """Run every test for every buildable model; unbuildable ones are skipped with the reason.

    ``workers`` > 1 runs cells in that many processes; records keep table order. Training runs
    with one intra-op thread (see :func:`one_thread`).
    """
    settings = settings or SuiteSettings()
    result = SuiteResult()
    runnable = []
    for name in dict.fromkeys(models):
        problem = model_problem(name)
        if problem:
            result.skipped[name] = problem
            if progress:
                progress(f"skipping {name}: {problem}")
        else:
            runnable.append(name)
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    jobs = suite_jobs(runnable, settings)

    def report(index: int, job: Job) -> None:
        if progress:
            progress(f"[{index}/{len(jobs)}] {job.pair.test} {job.pair.case} {job.model} layers={job.layers} "
                     f"done at {time.perf_counter() - start:.0f} s")

    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(run_job, job, settings) for job in jobs]
            for index, (job, future) in enumerate(zip(jobs, futures), 1):
                result.records.extend(future.result())
                report(index, job)
    else:
        for index, job in enumerate(jobs, 1):
            result.records.extend(run_job(job, settings))
            report(index, job)
    result.seconds = time.perf_counter() - start
    result.cpu_seconds = _cpu_seconds() - cpu_start
    return result


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes), seconds."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


__all__ = [
    "DEFAULT_MODELS", "FAENET_VARIANTS", "TESTS", "Job", "PairClassifier", "Record", "SuiteResult",
    "SuiteSettings", "build_model", "model_problem", "run_job", "run_suite", "score",
    "suite_jobs", "train_and_test",
]
