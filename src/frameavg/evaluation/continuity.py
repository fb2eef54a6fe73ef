"""Is a model's energy a continuous function of the positions? Measured along a straight path.

``continuity_check`` moves every atom of one structure along one seeded random direction
d [N,3] (Gaussian, scaled to a root-mean-square of 1 per atom, so each step moves the atoms by
``step`` Å RMS) in ``steps`` equal steps: x_k = x_0 + k · step · d, k = 0..steps. The cell stays
fixed, positions are not wrapped, and the neighbour list is rebuilt at every k. With
ΔE_i = E(x_{i+1}) − E(x_i) (eV), i = 0..steps−1, it reports:

* ``max_abs_step_eV`` = max_i |ΔE_i| and its index ``largest_step``; ``median_abs_step_eV``
  = median_i |ΔE_i|; ``max_over_median`` = their ratio;
* the local smooth change of step i: ``local_i`` = median of |ΔE_j| over the other steps of the
  window j ∈ [i − window, i + window] (clipped to the path), floored at the float noise
  64 · eps(dtype) · max(max_k |E_k|, 1 eV);
* ``jumps``: the number of steps with |ΔE_i| > factor · local_i (``jump_steps``: their i; a
  jump at i lies between x_i and x_{i+1}), and ``max_over_local`` = max_i |ΔE_i| / local_i.
  A smooth energy gives |ΔE_i| ≈ local_i (a ratio of a few at most near a turning point), a step
  discontinuity gives a ratio of (jump height) / (smooth change per step).

For a model wrapped in ``FrameAveraging`` it also reports how often the frame set changes between
consecutive structures: ``frame_changes`` counts the i where the set size differs or the
symmetric Hausdorff distance between the two sets of rotations U [F,3,3] (Frobenius norm) exceeds
``frame_tol``, and ``frame_set_sizes`` lists the sizes seen. A change is harmless when the
averaging weights make it continuous; the energy jumps are the criterion.

``reference_structures`` builds the structures of issue 30's continuity measurements.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from frameavg.data.neighbors import RadiusGraph
from frameavg.errors import ConfigError
from frameavg.evaluation.symmetry import is_periodic, model_inputs
from frameavg.outputs import ENERGY


@dataclass
class ContinuityResult:
    """Energies [steps+1] (eV) along the path and the statistics of the module docstring."""

    atoms: int
    periodic: bool
    steps: int
    step_A: float
    factor: float
    window: int
    max_abs_step_eV: float
    median_abs_step_eV: float
    max_over_median: float
    max_over_local: float
    largest_step: int
    jumps: int
    jump_steps: list = field(default_factory=list)
    frame_changes: int | None = None
    frame_set_sizes: list | None = None
    energies: list = field(default_factory=list, repr=False)

    def to_dict(self, energies: bool = False) -> dict:
        out = asdict(self)
        if not energies:
            out.pop("energies")
        return out


def path_direction(n: int, seed: int = 0) -> np.ndarray:
    """Seeded random direction [n,3] with root-mean-square 1 per atom."""
    d = np.random.default_rng(seed).standard_normal((n, 3))
    return d / np.sqrt((d ** 2).sum(axis=1).mean())


def step_statistics(energies, *, factor: float = 10.0, window: int = 5, noise: float = 0.0) -> dict:
    """Statistics of the steps of ``energies`` [S] (eV) as defined in the module docstring."""
    e = np.asarray(energies, dtype=np.float64)
    if e.size < 2:
        raise ConfigError("a continuity path needs at least 1 step")
    steps = np.abs(np.diff(e))
    local = np.empty_like(steps)
    for i in range(steps.size):
        lo, hi = max(0, i - window), min(steps.size, i + window + 1)
        others = np.delete(steps[lo:hi], i - lo)
        local[i] = max(float(np.median(others)) if others.size else 0.0, noise)
    local = np.maximum(local, np.finfo(np.float64).tiny)
    median = float(np.median(steps))
    ratio = steps / local
    jump_steps = np.flatnonzero(ratio > factor)
    return {
        "max_abs_step_eV": float(steps.max()),
        "median_abs_step_eV": median,
        "max_over_median": float(steps.max() / median) if median > 0 else (0.0 if steps.max() == 0 else np.inf),
        "max_over_local": float(ratio.max()),
        "largest_step": int(steps.argmax()),
        "jumps": int(jump_steps.size),
        "jump_steps": [int(i) for i in jump_steps],
    }


def _energy_only(model, batch) -> torch.Tensor:
    """Energies [B] (float64) without forces where the model can skip them (training tasks)."""
    forward = getattr(model, "forward", model)
    kwargs = {"forces": False} if "forces" in inspect.signature(forward).parameters else {}
    with torch.no_grad():
        out = model(batch, **kwargs)
    if ENERGY not in out:
        raise ConfigError(f"model output has no 'energy' (keys: {', '.join(out)})")
    return out[ENERGY].reshape(-1).detach().double()


def frames_of(model, batch):
    """``Frames`` of ``batch`` from the first ``FrameAveraging`` inside ``model`` (None if none)."""
    from frameavg.frames.averaging import FrameAveraging

    modules = model.modules() if isinstance(model, torch.nn.Module) else ()
    averaging = next((m for m in modules if isinstance(m, FrameAveraging)), None)
    return None if averaging is None else averaging.frames_of(batch)


def path_energies(model, structures: list[Data], graph=None, batch_size: int = 16):
    """(energies [S] float64 eV, rotation sets: one [F,3,3] tensor per structure, or None when the
    model has no ``FrameAveraging``)."""
    energies, rotations = [], []
    for start in range(0, len(structures), batch_size):
        chunk = [graph(d.clone()) if graph is not None else d for d in structures[start:start + batch_size]]
        batch = Batch.from_data_list(chunk)
        energies.append(_energy_only(model, batch))
        frames = frames_of(model, batch)
        if frames is None:
            rotations = None
        elif rotations is not None:
            rotation, graph_of = frames.rotation.detach().double(), frames.graph
            rotations.extend(rotation[graph_of == b] for b in range(len(chunk)))
    return torch.cat(energies), rotations


def frame_set_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Symmetric Hausdorff distance between rotation sets [Fa,3,3] and [Fb,3,3] (Frobenius)."""
    d = torch.cdist(a.reshape(len(a), 9), b.reshape(len(b), 9))
    return float(torch.maximum(d.min(dim=1).values.max(), d.min(dim=0).values.max()))


def count_frame_changes(rotations: list, tol: float = 0.1) -> int:
    """Consecutive rotation sets whose size differs or whose distance exceeds ``tol``."""
    return sum(len(a) != len(b) or frame_set_distance(a, b) > tol for a, b in zip(rotations, rotations[1:]))


def continuity_check(model, data: Data, *, steps: int = 300, step: float = 0.002, seed: int = 0,
                     factor: float = 10.0, window: int = 5, cutoff: float | None = 6.0,
                     max_neighbors: int | None = None, strict_neighbors: bool = False, batch_size: int = 16,
                     frame_tol: float = 0.1) -> ContinuityResult:
    """Energy of ``model`` along a seeded straight path from ``data`` (module docstring).

    ``model``: ``forward(batch) -> {"energy": [B]}`` in the mode to measure (``eval()``);
    ``data``: one structure (positions Å, in the dtype to measure); ``step``: RMS displacement per
    atom per step, Å; ``cutoff``/``max_neighbors``/``strict_neighbors``: the neighbour list the
    model expects, rebuilt at every step (``cutoff=None``: the model builds its own graph)."""
    if steps < 1 or step <= 0 or factor <= 0 or window < 1:
        raise ConfigError("need steps >= 1, step > 0, factor > 0 and window >= 1")
    data = model_inputs(data)
    direction = torch.as_tensor(path_direction(data.num_nodes, seed), dtype=data.pos.dtype)
    structures = []
    for k in range(steps + 1):
        moved = data.clone()
        moved.pos = data.pos + (k * step) * direction
        structures.append(moved)
    graph = RadiusGraph(cutoff, max_neighbors, strict=strict_neighbors) if cutoff is not None else None
    energies, rotations = path_energies(model, structures, graph, batch_size)
    noise = 64 * float(torch.finfo(data.pos.dtype).eps) * max(float(energies.abs().max()), 1.0)
    stats = step_statistics(energies.numpy(), factor=factor, window=window, noise=noise)
    return ContinuityResult(
        atoms=data.num_nodes, periodic=is_periodic(data), steps=steps, step_A=step, factor=factor, window=window,
        **stats,
        frame_changes=None if rotations is None else count_frame_changes(rotations, frame_tol),
        frame_set_sizes=None if rotations is None else sorted({len(r) for r in rotations}),
        energies=energies.tolist())


# --------------------------------------------------------------------------------------------
# issue 30's reference structures

#: Names of ``reference_structures``, in order.
REFERENCE_STRUCTURES = ("bulk_thermal", "bulk_ideal", "slab_adsorbate", "slab_ideal", "ethanol")


def reference_structures(seed: int = 0, md_steps: int = 200) -> dict:
    """``{name: ase.Atoms}`` of the continuity measurements (issue 30), deterministic given ``seed``:

    * ``bulk_ideal``: cubic fcc Cu, a = 3.61 Å, repeated 3×3×3 (108 atoms);
    * ``bulk_thermal``: the same after ``md_steps`` Langevin steps with EMT at 600 K (1 fs,
      friction 0.01/fs, seeded Maxwell–Boltzmann start; ~0.2 Å RMS off the lattice at 200 steps);
    * ``slab_ideal``: Cu fcc(111), 3×3 surface cell, 4 layers, 10 Å vacuum each side (36 atoms),
      OC20 tags (1 top layer, 0 below), the 3 lower layers fixed;
    * ``slab_adsorbate``: the slab with O on an fcc hollow site 1.2 Å above the top layer (tag 2),
      free atoms rattled by a seeded σ = 0.05 Å;
    * ``ethanol``: the first structure of the shipped rMD17 ethanol test set.
    """
    from ase.build import bulk

    ideal = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    return {
        "bulk_thermal": thermal_bulk(ideal, seed=seed, steps=md_steps),
        "bulk_ideal": ideal,
        "slab_adsorbate": cu111_slab(adsorbate="O", rattle=0.05, seed=seed),
        "slab_ideal": cu111_slab(),
        "ethanol": _shipped_ethanol(),
    }


def thermal_bulk(atoms, *, seed: int = 0, steps: int = 200, temperature_K: float = 600.0):
    """A copy of ``atoms`` after ``steps`` seeded EMT Langevin steps (1 fs) at ``temperature_K``."""
    import warnings

    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
        Langevin(atoms, timestep=units.fs, temperature_K=temperature_K, friction=0.01 / units.fs, fixcm=False,
                 rng=rng).run(steps)
    atoms.calc = None
    atoms.set_velocities(np.zeros((len(atoms), 3)))
    return atoms


def cu111_slab(adsorbate: str | None = None, rattle: float = 0.0, seed: int = 0):
    """Cu fcc(111) 3×3×4 slab, vacuum 10 Å, OC20 tags and fixed subsurface (``reference_structures``)."""
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", size=(3, 3, 4), a=3.61, vacuum=10.0)
    tags = np.where(slab.get_tags() == 1, 1, 0)  # ASE numbers layers from the top: 1 = surface
    if adsorbate is not None:
        add_adsorbate(slab, adsorbate, height=1.2, position="fcc")
        tags = np.append(tags, 2)
    slab.set_tags(tags)
    if rattle > 0:
        free = tags != 0
        slab.positions[free] += np.random.default_rng(seed).normal(0.0, rattle, (int(free.sum()), 3))
    slab.set_constraint(FixAtoms(mask=tags == 0))
    return slab


def _shipped_ethanol():
    import ase.io

    from frameavg.data.shipped import shipped_path

    return ase.io.read(shipped_path("rmd17_ethanol/test"), index=0)
