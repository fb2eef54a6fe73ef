"""Memory budget of a batch: estimated before anything is allocated, and batches formed by it.

Every path that runs a model over many structures (validation and test loaders, ``evaluate``
behind ``frameavg test/predict``, symmetry checks, bench, AdsorbML, oversmoothing) forms its
batches with ``batches_by_budget``: consecutive structures, at most ``max_structures`` of them (a
config's ``eval_batch_size`` is an upper bound, not a promise), and at most ``budget.limit`` bytes
by the cost model below. A structure that alone exceeds the limit is refused with a ``DataError``
that names it and its estimate, before any tensor of it is built.

Cost model (bytes of one structure inside a batch; float32, 128 channels)::

    cost = frames × (atoms × ATOM_BYTES + edges × EDGE_BYTES) × hidden / 128 × itemsize / 4

plus ``BASE_BYTES`` once per batch. ``frames``: graphs a frame-averaged model runs per structure
(``frames_per_graph``); ``edges``: directed edges of the neighbour list (its length when built,
else atoms × density × cutoff-ball volume along the periodic axes, ``lattice.expected_neighbors``;
atoms - 1 for a molecule; capped by ``max_neighbors``); ``hidden``: the widest linear layer of
the network. Two regimes: evaluation (forward with forces as the energy gradient, no second
backward) and training (forward and ``create_graph`` forces, then backward).

Calibration: FAENet of configs/faenet_ethanol_small.yaml (128 channels, 3 interactions, cutoff
5 Å, gradient forces) with ``frames.train=eval=all``, cloud frames, plain frame sets (8 frames per
structure), 1 thread, Intel Xeon, a fresh process per point; peak RSS growth (``ru_maxrss``) of one
pass over the RSS once model and batch were built. EMT Cu fcc cells: 108 atoms, ~5 210 edges;
rMD17 ethanol: 9 atoms, 72 edges.

===========  =====  ==========  ==========  ===========  ===========
structures   count  atoms       edges       eval, MiB    train, MiB
===========  =====  ==========  ==========  ===========  ===========
Cu cells     1      108         5 230       533          1 842
Cu cells     2      216         10 430      —            2 437
Cu cells     4      432         20 842      1 653        4 427
Cu cells     8      864         41 672      3 275        —
ethanol      100    900         7 200       777          2 474
ethanol      400    3 600       28 800      2 722        7 264
===========  =====  ==========  ==========  ===========  ===========

Slopes per structure (eval: 392 MiB per Cu cell, 6.5 MiB per ethanol; train: 861 and 16.0 MiB)
solved for the per-frame edge and atom terms give eval 9.5 kB/edge and 19 kB/atom, train 20 kB/edge
and 71 kB/atom; intercepts 130-140 MiB (eval) and 0.9-1.0 GiB (train). The constants below are
those rounded up by ~20 %. Models with triplets (DimeNet++) cost more per edge than this model;
the estimate is meant for FAENet-, SchNet- and PaiNN-like message passing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from frameavg.errors import ConfigError, DataError

#: Bytes per directed edge per frame at 128 channels, float32 (calibrated above): evaluation, training.
EDGE_BYTES = {False: 11_500.0, True: 24_000.0}
#: Bytes per atom per frame at 128 channels, float32: evaluation, training.
ATOM_BYTES = {False: 22_000.0, True: 85_000.0}
#: Fixed bytes of one batch (graph bookkeeping, autograd, allocator slack): evaluation, training.
BASE_BYTES = {False: 160 * 2**20, True: 2**30}
#: Default fraction of the available memory a batch may use (config ``data.memory_fraction``).
MEMORY_FRACTION = 0.5
#: Frames of ``all`` on a 3D (2D) frame set with reflections; SE(3) variants keep half.
_ALL_FRAMES = {"3D": 8, "2D": 4}
#: Upper estimate of the frames of ``lattice-symmetric`` (the holohedry of a cubic lattice).
_LATTICE_SYMMETRIC_FRAMES = 48


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes still free for this process: on CUDA the device's free memory, else what the system
    can give without swapping (``MemAvailable``)."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of lightning
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read the available memory")  # pragma: no cover


def frames_per_graph(net, periodic: bool, training: bool = False) -> int:
    """Upper estimate of the graphs ``net`` runs per structure: 1 without frame averaging; with a
    ``FrameAveraging`` (train or eval method): ``all`` 8 in 3D, 4 in 2D (half for ``se3-``),
    doubled for continuous (weighted) frames, which may blend two frame options; ``k`` sampled
    frames: k; stochastic, det, DA, learned: 1; periodic graphs with ``lattice`` frames: 1, with
    ``lattice-symmetric``: 48."""
    if not hasattr(net, "eval_spec") and isinstance(getattr(net, "net", None), torch.nn.Module):
        net = net.net  # a training task: its network
    spec = getattr(net, "train_spec" if training else "eval_spec", None)
    if spec is None:
        return 1
    if periodic and getattr(net, "periodic", "cloud") != "cloud":
        return 1 if net.periodic == "lattice" else _LATTICE_SYMMETRIC_FRAMES
    if spec.kind == "sample":
        return spec.samples
    if spec.kind != "all":
        return 1
    count = _ALL_FRAMES[spec.dim] // (2 if spec.proper else 1)
    return count * (2 if getattr(net, "continuous", False) else 1)


def hidden_width(net: torch.nn.Module) -> int:
    """The widest output of the network's linear layers (channels), 128 when it has none."""
    widths = [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    return max(widths, default=128)


def estimated_edges(data, cutoff: float, max_neighbors: int | None = None) -> int:
    """Directed edges of ``data``'s neighbour list: its length when it has one, else atoms × the
    expected neighbours within ``cutoff`` (Å): density × ball volume along the periodic axes (as
    ``lattice.expected_neighbors``, without its floor of atoms − 1), atoms − 1 for a molecule;
    capped at ``max_neighbors`` per atom."""
    if getattr(data, "edge_index", None) is not None:
        return int(data.edge_index.shape[1])
    from frameavg.data import lattice

    atoms = int(data.num_nodes)
    per_atom = atoms - 1.0  # a molecule: every other atom at most
    if is_periodic(data):  # density × ball volume along the periodic axes
        basis = lattice.periodic_basis(data.cell.detach().cpu().numpy(), data.pbc.detach().cpu().numpy())
        d = basis.shape[0]
        ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1) * cutoff**d
        per_atom = atoms / max(lattice.measure(basis), 1e-300) * ball
    if max_neighbors:
        per_atom = min(per_atom, float(max_neighbors))
    return int(math.ceil(atoms * per_atom))


def is_periodic(data) -> bool:
    pbc = getattr(data, "pbc", None)
    return pbc is not None and bool(torch.as_tensor(pbc).any())


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes a batch may use and what the cost of a structure depends on.

    limit: bytes (``fraction`` × available memory when built by ``for_network``); cutoff: Å, and
    max_neighbors, for structures without a neighbour list; frames_molecule / frames_periodic:
    graphs run per structure; hidden: channels; itemsize: bytes of the model's float dtype;
    training: the training regime of the cost model (else evaluation).
    """

    limit: float
    cutoff: float = 6.0
    max_neighbors: int | None = None
    frames_molecule: int = 1
    frames_periodic: int = 1
    hidden: int = 128
    itemsize: int = 4
    training: bool = False
    available: float | None = None
    fraction: float | None = None

    @classmethod
    def for_network(cls, net, *, cutoff: float, max_neighbors: int | None = None, fraction: float = MEMORY_FRACTION,
                    training: bool = False, available: float | None = None) -> "MemoryBudget":
        """The budget of ``net`` (its eval frames, or train frames with ``training``) with
        ``fraction`` of ``available`` bytes (default: the free memory of the device of its parameters
        now)."""
        if not 0 < fraction <= 1:
            raise ConfigError(f"data.memory_fraction must be in (0, 1], got {fraction}")
        param = next((p for p in net.parameters() if p.is_floating_point()), None)
        dtype, device = (torch.float32, "cpu") if param is None else (param.dtype, param.device)
        available = float(available_memory(device) if available is None else available)
        return cls(limit=fraction * available, cutoff=cutoff, max_neighbors=max_neighbors,
                   frames_molecule=frames_per_graph(net, False, training),
                   frames_periodic=frames_per_graph(net, True, training), hidden=hidden_width(net),
                   itemsize=torch.empty(0, dtype=dtype).element_size(), training=training, available=available,
                   fraction=fraction)

    @classmethod
    def for_config(cls, net, data, *, training: bool = False, available: float | None = None) -> "MemoryBudget":
        """``for_network`` with the neighbour settings (``data.neighbors``) and ``memory_fraction``
        of a config's ``data`` section (``training.config_sections.DataConfig``)."""
        return cls.for_network(net, cutoff=data.neighbors.cutoff, max_neighbors=data.neighbors.max_neighbors,
                               fraction=data.memory_fraction, training=training, available=available)

    @property
    def base(self) -> float:
        """Fixed bytes of one batch."""
        return BASE_BYTES[self.training] * self.itemsize / 4

    def cost(self, data) -> float:
        """Estimated bytes of ``data`` inside a batch (see the module docstring)."""
        frames = self.frames_periodic if is_periodic(data) else self.frames_molecule
        atoms, edges = int(data.num_nodes), estimated_edges(data, self.cutoff, self.max_neighbors)
        scale = self.hidden / 128 * self.itemsize / 4
        return frames * (atoms * ATOM_BYTES[self.training] + edges * EDGE_BYTES[self.training]) * scale

    def describe(self) -> str:
        """'X GB (fraction f of Y GB available)' for error messages."""
        if self.available is None:
            return f"{self.limit / 1e9:.2f} GB"
        return f"{self.limit / 1e9:.2f} GB (data.memory_fraction {self.fraction:g} of {self.available / 1e9:.1f} GB available)"


def batches_by_budget(structures: Sequence, budget: MemoryBudget | None, max_structures: int | None = None,
                      *, source: str | None = None, indices: Sequence[int] | None = None) -> Iterator[list[int]]:
    """Consecutive index lists of ``structures`` (``indices``: only these, in this order): at most
    ``max_structures`` per batch and at most ``budget.limit`` estimated bytes (no budget: by count
    only). Raises ``DataError`` naming the structure (and ``source``) that alone exceeds the limit."""
    order = range(len(structures)) if indices is None else indices
    base = 0.0 if budget is None else budget.base
    batch: list[int] = []
    used = base
    for i in order:
        cost = 0.0 if budget is None else budget.cost(structures[i])
        if budget is not None and base + cost > budget.limit:
            raise DataError(f"needs an estimated {(base + cost) / 1e9:.2f} GB alone, more than the batch "
                            f"budget of {budget.describe()}", source=source, index=int(i))
        full = bool(max_structures) and len(batch) >= max_structures
        if batch and (full or (budget is not None and used + cost > budget.limit)):
            yield batch
            batch, used = [], base
        batch.append(int(i))
        used += cost
    if batch:
        yield batch


class BudgetBatchSampler(torch.utils.data.Sampler):
    """Batches of ``batches_by_budget`` over a dataset in order, for ``DataLoader(batch_sampler=...)``
    (the costs are estimated on the first pass, from the structures as the dataset returns them)."""

    def __init__(self, dataset, budget: MemoryBudget | None, max_structures: int | None, source: str | None = None):
        self.dataset, self.budget, self.max_structures, self.source = dataset, budget, max_structures, source
        self._batches: list[list[int]] | None = None

    def batches(self) -> list[list[int]]:
        if self._batches is None:
            self._batches = list(batches_by_budget(self.dataset, self.budget, self.max_structures, source=self.source))
        return self._batches

    def __iter__(self):
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


def check_training_batches(dataset, budget: MemoryBudget, batch_size: int, *, key: str = "data.batch_size") -> None:
    """Refuse, before the first step, a ``batch_size`` whose worst batch (its largest structures)
    exceeds the budget: a ``ConfigError`` naming ``key`` and the largest size that fits."""
    costs = sorted((budget.cost(dataset[i]) for i in range(len(dataset))), reverse=True)
    worst = budget.base + sum(costs[:batch_size])
    if worst <= budget.limit:
        return
    fits, total = 0, budget.base
    while fits < len(costs) and total + costs[fits] <= budget.limit:
        total += costs[fits]
        fits += 1
    hint = f"lower {key} to {fits} or less" if fits else "no structure fits alone: raise data.memory_fraction or use fewer frames"
    raise ConfigError(f"{key}={batch_size}: a training batch of the largest structures needs an estimated "
                      f"{worst / 1e9:.2f} GB, more than the budget of {budget.describe()}; {hint}")
