"""Synthetic OC20-Dense-style adsorption data with ASE's EMT as the ground truth.

``generate_adsorption(out, ...)`` builds, for every (metal, facet, adsorbate) system:

* a slab: EMT-relaxed fcc lattice constant, ``layers`` layers of a 3×3 surface cell, ``vacuum``
  Å on each side along z (so ≥ 12 Å between periodic images), the bottom two layers fixed,
  OC20 tags (0 subsurface, 1 top layer, 2 adsorbate), relaxed clean with EMT;
* dense placements, AdsorbML's heuristic + random strategy: every symmetry-distinct site of ASE's
  slab builders (on-top, bridge, fcc and hcp hollows on (111); on-top, bridge and the 4-fold
  hollow on (100)) plus ``random`` placements at uniform positions of the surface cell with a
  random azimuth and a tilt ≤ 30°; the binding atom sits at the sum of the covalent radii from
  its nearest surface atom;
* the ground truth: an EMT relaxation of every placement with the batched relaxation engine
  (LBFGS with AdsorbML's settings, fmax 0.02 eV/Å), anomaly detection on the result
  (``frameavg.evaluation.adsorbml``), relaxed and adsorption energies (referenced to the relaxed
  clean slab and EMT gas-phase references, OC20's scheme: H from H2, O from H2O − H2, C from
  CO − O, N from N2), and up to ``frames_per_placement`` trajectory frames (energy + forces).

Systems are split as OC20's validation sets: ``ood_ads`` holds one adsorbate out, ``ood_cat``
one metal, ``ood_both`` both; the rest is in-domain, ``id_fraction`` of it evaluated (``id``)
and the remainder ``train``. The output folder::

    manifest.json            settings, references, systems, placements, splits (no timings)
    s2ef/<split>.lmdb        trajectory frames: energy (eV), forces (eV/Å), tags, fixed, pos_relaxed
    dense/<split>.lmdb       initial placements: pos_relaxed, energy_relaxed, adsorption_energy
    slabs.extxyz             the relaxed clean slabs (``info['system']``: metal-facet)

Every file is labelled synthetic EMT data. Files are written atomically; finished systems are
cached under ``.partial/`` (``.npz``, no pickles) so an interrupted run resumes where it stopped. The same arguments
give the same records and manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from frameavg.data.adsorption import FORMAT, LABEL, SPLITS
from frameavg.errors import ConfigError, DataError
from frameavg.simulation.relaxation import RelaxStatus

#: Elements EMT models (ASE's ``EMT`` parameters).
EMT_METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
EMT_NONMETALS = ("H", "C", "N", "O")
#: Adsorbates: binding atom first, bond along +z (lengths from ASE's g2 molecules).
ADSORBATES = ("H", "O", "C", "N", "OH", "CO", "NH")
#: Adsorbates EMT describes poorly (molecules: EMT has no directional bonding); shown with a mark.
LESS_PHYSICAL = ("OH", "CO", "NH")
FACETS = ("111", "100")


@dataclass(frozen=True)
class GenerationSettings:
    metals: tuple[str, ...] = ("Cu", "Ag", "Au", "Ni", "Pd", "Al", "Pt")
    adsorbates: tuple[str, ...] = ("H", "O", "C", "OH", "CO", "NH", "N")
    facets: tuple[str, ...] = FACETS
    placements: int = 8  # random placements per system, beside the heuristic sites
    seed: int = 0
    layers: int = 4
    size: int = 3  # surface cell size × size
    vacuum: float = 7.0  # Å on each side of the slab
    fmax: float = 0.02
    steps: int = 500
    frames_per_placement: int = 6
    ood_adsorbate: str | None = None  # default: the last adsorbate
    ood_metal: str | None = None  # default: the last metal
    id_fraction: float = 0.3

    def validated(self) -> "GenerationSettings":
        def unknown(kind, given, allowed):
            bad = [g for g in given if g not in allowed]
            if bad:
                raise ConfigError(f"{kind} {', '.join(bad)}: EMT models only {', '.join(allowed)}"
                                  if kind != "facet" else f"facet {', '.join(bad)}: choose from {', '.join(FACETS)}")

        unknown("metal", self.metals, EMT_METALS)
        unknown("facet", self.facets, FACETS)
        for name in self.adsorbates:
            if name not in ADSORBATES:
                bad = [e for e in _formula_elements(name) if e not in EMT_NONMETALS + EMT_METALS]
                reason = (f"EMT cannot model {', '.join(bad)} (EMT: {', '.join(EMT_METALS + EMT_NONMETALS)})" if bad
                          else "not a built-in adsorbate")
                raise ConfigError(f"adsorbate {name}: {reason}; choose from {', '.join(ADSORBATES)}")
        if not self.metals or not self.adsorbates or not self.facets:
            raise ConfigError("give at least one metal, one adsorbate and one facet")
        if self.placements < 0 or self.layers < 3 or self.size < 2 or self.vacuum < 6.0:
            raise ConfigError("placements must be >= 0, layers >= 3, size >= 2 and vacuum >= 6 Å (12 Å between images)")
        if self.placements + (4 if "111" in self.facets else 3) < 2:
            raise ConfigError("a dense set needs at least 2 placements per system")
        ood_ads = self.ood_adsorbate or self.adsorbates[-1]
        ood_metal = self.ood_metal or self.metals[-1]
        if ood_ads not in self.adsorbates or ood_metal not in self.metals:
            raise ConfigError(f"the held-out adsorbate {ood_ads} and metal {ood_metal} must be among those generated")
        return GenerationSettings(**{**asdict(self), "metals": tuple(self.metals), "adsorbates": tuple(self.adsorbates),
                                     "facets": tuple(self.facets), "ood_adsorbate": ood_ads, "ood_metal": ood_metal})


def _formula_elements(name: str) -> list[str]:
    import re

    return re.findall(r"[A-Z][a-z]?", name)


# --------------------------------------------------------------------------- geometry (ASE builders)
def emt_lattice_constant(metal: str) -> float:
    """The fcc lattice constant (Å) minimising EMT's energy (equation-of-state fit)."""
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers, reference_states
    from ase.eos import EquationOfState

    a0 = reference_states[atomic_numbers[metal]]["a"]
    volumes, energies = [], []
    for scale in np.linspace(0.95, 1.05, 11):
        atoms = bulk(metal, "fcc", a=a0 * scale)
        atoms.calc = EMT()
        volumes.append(atoms.get_volume())
        energies.append(atoms.get_potential_energy())
    v0, _, _ = EquationOfState(volumes, energies).fit()
    return float((4.0 * v0) ** (1.0 / 3.0))


def build_slab(metal: str, facet: str, a: float, settings: GenerationSettings):
    """The clean slab: OC20 tags (top layer 1, below 0), bottom two layers fixed, periodic in 3D."""
    from ase.build import fcc100, fcc111
    from ase.constraints import FixAtoms

    builder = {"111": fcc111, "100": fcc100}[facet]
    slab = builder(metal, size=(settings.size, settings.size, settings.layers), a=a, vacuum=settings.vacuum)
    layer = slab.get_tags()  # ASE: 1 = top layer ... layers = bottom
    slab.set_constraint(FixAtoms(mask=layer > settings.layers - 2))
    slab.set_tags(np.where(layer == 1, 1, 0))
    slab.pbc = True
    return slab


def adsorbate_atoms(name: str):
    """The adsorbate with its binding atom at the origin and its bond along +z."""
    from ase import Atoms
    from ase.build import molecule

    if len(name) == 1 or name not in ("OH", "CO", "NH"):
        return Atoms(name, positions=[[0.0, 0.0, 0.0]])
    gas = molecule(name)
    first = next(i for i, s in enumerate(gas.get_chemical_symbols()) if s == name[0])
    other = 1 - first
    length = gas.get_distance(first, other)
    return Atoms(name, positions=[[0.0, 0.0, 0.0], [0.0, 0.0, length]])


def _height(binding: str, metal: str, lateral: float) -> float:
    """Height (Å) above the top layer that puts the binding atom at the covalent-radii distance
    from a surface atom ``lateral`` Å away in the plane (at least 0.5 Å)."""
    from ase.data import atomic_numbers, covalent_radii

    bond = covalent_radii[atomic_numbers[binding]] + covalent_radii[atomic_numbers[metal]]
    return float(math.sqrt(max(bond ** 2 - lateral ** 2, 0.25)))


def _lateral_distance(slab, xy) -> float:
    """Smallest in-plane distance (Å) from point ``xy`` to a top-layer atom, periodic images included."""
    top = slab.positions[slab.get_tags() == 1][:, :2]
    cell = slab.cell.array[:2, :2]
    best = math.inf
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            shift = i * cell[0] + j * cell[1]
            best = min(best, float(np.linalg.norm(top + shift - np.asarray(xy), axis=1).min()))
    return best


def _tilt(adsorbate, rng):
    """A random azimuth and a tilt of at most 30° about the binding atom (molecules only)."""
    if len(adsorbate) == 1:
        return adsorbate
    adsorbate = adsorbate.copy()
    adsorbate.rotate(float(rng.uniform(0, 30)), "x", center=(0, 0, 0))
    adsorbate.rotate(float(rng.uniform(0, 360)), "z", center=(0, 0, 0))
    return adsorbate


def placements(slab, metal: str, name: str, count: int, rng) -> list[tuple[str, object]]:
    """(site label, structure) of every heuristic site and ``count`` random placements."""
    from ase.build import add_adsorbate

    adsorbate = adsorbate_atoms(name)
    info = slab.info["adsorbate_info"]
    unit = np.asarray(info["cell"])
    out = []
    for site, (u, v) in info["sites"].items():
        xy = np.array([u, v]) @ unit
        atoms = slab.copy()
        add_adsorbate(atoms, adsorbate, _height(name[0], metal, _lateral_distance(slab, xy)), position=site)
        out.append((site, atoms))
    surface = slab.cell.array[:2, :2]
    for k in range(count):
        xy = rng.uniform(0, 1, size=2) @ surface
        atoms = slab.copy()
        add_adsorbate(atoms, _tilt(adsorbate, rng), _height(name[0], metal, _lateral_distance(slab, xy)),
                      position=tuple(xy))
        out.append((f"random-{k}", atoms))
    for _, atoms in out:
        tags = atoms.get_tags()
        tags[len(slab):] = 2
        atoms.set_tags(tags)
    return out


# --------------------------------------------------------------------------- gas-phase references
def gas_references() -> dict[str, float]:
    """EMT energies (eV) per element from relaxed gas-phase molecules, as OC20 references them."""
    from ase.build import molecule
    from ase.calculators.emt import EMT

    from frameavg.simulation.relaxation import relax

    names = ("H2", "H2O", "CO", "N2")
    mols = []
    for name in names:
        mol = molecule(name)
        mol.center(vacuum=6.0)
        mols.append(mol)
    energies = {name: r.info["energy"] for name, r in
                zip(names, relax(mols, EMT(), optimizer="lbfgs", fmax=0.001, steps=1000))}
    h = energies["H2"] / 2
    o = energies["H2O"] - energies["H2"]
    return {"H": h, "O": o, "C": energies["CO"] - o, "N": energies["N2"] / 2}


# --------------------------------------------------------------------------- splits
def split_of(metal: str, adsorbate: str, facet: str, settings: GenerationSettings) -> str:
    held_ads, held_metal = adsorbate == settings.ood_adsorbate, metal == settings.ood_metal
    if held_ads and held_metal:
        return "ood_both"
    if held_ads:
        return "ood_ads"
    if held_metal:
        return "ood_cat"
    digest = hashlib.sha256(f"{settings.seed}-{metal}-{facet}-{adsorbate}".encode()).digest()
    return "id" if int.from_bytes(digest[:8], "big") / 2 ** 64 < settings.id_fraction else "train"


# --------------------------------------------------------------------------- generation
@dataclass
class SystemResult:
    name: str
    metal: str
    facet: str
    adsorbate: str
    split: str
    slab_energy: float
    sites: list[str]
    initial: list = field(default_factory=list)  # Atoms
    relaxed: list = field(default_factory=list)  # Atoms (info: status, steps, energy, fmax)
    anomalies: list = field(default_factory=list)  # list[list[str]]
    frames: list = field(default_factory=list)  # list[list[Atoms]]


def _subsample(frames: list, count: int) -> list:
    if len(frames) <= count:
        return list(frames)
    picks = np.unique(np.linspace(0, len(frames) - 1, count).round().astype(int))
    return [frames[i] for i in picks]


def _relax_system(name, metal, facet, adsorbate, slab, slab_energy, split, settings, rng) -> SystemResult:
    from ase.calculators.emt import EMT

    from frameavg.evaluation.adsorbml import detect_anomalies
    from frameavg.simulation.optimizers import ADSORBML_LBFGS
    from frameavg.simulation.relaxation import relax

    sites, structures = zip(*placements(slab, metal, adsorbate, settings.placements, rng))
    relaxed = relax(list(structures), EMT(), optimizer="lbfgs", optimizer_options=ADSORBML_LBFGS,
                    fmax=settings.fmax, steps=settings.steps, trajectory=True)
    result = SystemResult(name, metal, facet, adsorbate, split, slab_energy, list(sites))
    for initial, final in zip(structures, relaxed):
        frames = final.info.pop("trajectory", [])
        result.initial.append(initial)
        result.relaxed.append(final)
        result.anomalies.append(detect_anomalies(initial, final, slab) if math.isfinite(final.info["energy"]) else [])
        result.frames.append([_labelled(frame) for frame in _subsample(frames, settings.frames_per_placement)])
    return result


def _labelled(frame):
    """A trajectory frame with EMT's energy and forces on every atom (the engine's record has zero
    forces on fixed atoms, as ASE's constrained ``get_forces``; training data keeps the true ones)."""
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = frame.copy()
    constraints = atoms.constraints
    atoms.set_constraint()
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.set_constraint(constraints)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def _settings_key(settings: GenerationSettings) -> str:
    return hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode()).hexdigest()[:16]


def generate_adsorption(out: str | Path, settings: GenerationSettings = GenerationSettings(),
                        progress: Callable[[int, int, str], None] | None = None, workers: int = 1) -> dict:
    """Generate the data set into folder ``out``; returns the manifest (see the module docstring).
    ``progress(done, total, system)`` is called after every system. ``workers``: processes
    relaxing systems in parallel (the result does not depend on it)."""
    settings = settings.validated()
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError("output path exists and is not a folder", source=str(out))
    partial = out / ".partial" / _settings_key(settings)
    partial.mkdir(parents=True, exist_ok=True)
    references = gas_references()
    slabs, tasks = {}, []
    for m, metal in enumerate(settings.metals):
        a = emt_lattice_constant(metal)
        for f, facet in enumerate(settings.facets):
            slabs[(metal, facet)] = clean = _relaxed_clean_slab(metal, facet, a, settings)
            for k, adsorbate in enumerate(settings.adsorbates):
                tasks.append((f"{metal}-{facet}-{adsorbate}", metal, facet, adsorbate, clean,
                              split_of(metal, adsorbate, facet, settings), settings, (settings.seed, m, f, k),
                              partial))
    systems: list[SystemResult] = []
    if workers == 1:
        results = map(_system_task, tasks)
    else:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(_system_task, tasks)  # in order: the output does not depend on workers
    try:
        for result in results:
            systems.append(result)
            if progress is not None:
                progress(len(systems), len(tasks), result.name)
    finally:
        if workers > 1:
            pool.terminate()
    manifest = _manifest(settings, references, slabs, systems)
    _write_outputs(out, manifest, slabs, systems, references)
    import shutil

    shutil.rmtree(out / ".partial", ignore_errors=True)
    return json.loads(json.dumps(manifest))  # as written (lists, not tuples)


def _relaxed_clean_slab(metal, facet, a, settings):
    from ase.calculators.emt import EMT

    from frameavg.simulation.relaxation import relax

    slab = build_slab(metal, facet, a, settings)
    clean = relax([slab], EMT(), optimizer="lbfgs", fmax=settings.fmax, steps=settings.steps)[0]
    if RelaxStatus.of(clean.info["status"]) is not RelaxStatus.CONVERGED:
        raise DataError(f"the clean {metal}({facet}) slab did not relax: {clean.info['status']}")
    clean.calc = None
    clean.info = {"system": f"{metal}-{facet}", "energy": clean.info["energy"], "lattice_constant": a,
                  "adsorbate_info": slab.info["adsorbate_info"]}
    return clean


def _system_task(task) -> SystemResult:
    """One system's ground truth, from its cache file when an earlier run finished it."""
    name, metal, facet, adsorbate, clean, split, settings, seed, partial = task
    cache = partial / f"{name}.npz"
    if cache.is_file():
        return _read_cache(cache)
    result = _relax_system(name, metal, facet, adsorbate, clean, clean.info["energy"], split, settings,
                           np.random.default_rng(list(seed)))
    _write_cache(cache, result)
    return result


_RELAXED_INFO = ("converged", "steps", "energy", "fmax", "status")


def _write_cache(path: Path, s: SystemResult) -> None:
    """A finished system as plain arrays and JSON in one ``.npz`` (no pickles; full precision)."""
    from frameavg.data.atomic_data import fixed_mask
    from frameavg.files import atomic_output

    first = s.initial[0]
    meta = {"name": s.name, "metal": s.metal, "facet": s.facet, "adsorbate": s.adsorbate, "split": s.split,
            "slab_energy": s.slab_energy, "sites": s.sites, "anomalies": s.anomalies,
            "relaxed_info": [{key: final.info[key] for key in _RELAXED_INFO} for final in s.relaxed]}
    arrays = {"meta": np.array(json.dumps(meta)), "numbers": first.numbers, "tags": first.get_tags(),
              "fixed": fixed_mask(first), "cell": first.cell.array, "pbc": first.pbc}
    for p, (initial, final, frames) in enumerate(zip(s.initial, s.relaxed, s.frames)):
        arrays[f"initial_{p}"] = initial.positions
        arrays[f"relaxed_{p}"] = final.positions
        arrays[f"relaxed_forces_{p}"] = final.calc.results["forces"] if final.calc is not None else np.zeros((0, 3))
        arrays[f"frames_{p}"] = np.array([f.positions for f in frames]).reshape(-1, len(first), 3)
        arrays[f"frames_energy_{p}"] = np.array([f.calc.results["energy"] for f in frames])
        arrays[f"frames_forces_{p}"] = np.array([f.calc.results["forces"] for f in frames]).reshape(-1, len(first), 3)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def _read_cache(path: Path) -> SystemResult:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    meta = json.loads(str(arrays["meta"]))

    def atoms(positions, energy=None, forces=None):
        made = Atoms(numbers=arrays["numbers"], positions=positions, cell=arrays["cell"], pbc=arrays["pbc"],
                     tags=arrays["tags"])
        made.set_constraint(FixAtoms(mask=arrays["fixed"]))
        if energy is not None:
            made.calc = SinglePointCalculator(made, energy=float(energy), forces=forces)
        return made

    result = SystemResult(meta["name"], meta["metal"], meta["facet"], meta["adsorbate"], meta["split"],
                          meta["slab_energy"], meta["sites"], anomalies=meta["anomalies"])
    for p, info in enumerate(meta["relaxed_info"]):
        result.initial.append(atoms(arrays[f"initial_{p}"]))
        forces = arrays[f"relaxed_forces_{p}"]
        final = atoms(arrays[f"relaxed_{p}"], info["energy"] if len(forces) else None, forces if len(forces) else None)
        final.info.update(info)
        result.relaxed.append(final)
        result.frames.append([atoms(x, e, f) for x, e, f in zip(arrays[f"frames_{p}"], arrays[f"frames_energy_{p}"],
                                                                  arrays[f"frames_forces_{p}"])])
    return result


def _reference_energy(adsorbate: str, references: dict) -> float:
    return sum(references[element] for element in _formula_elements(adsorbate))


def _manifest(settings, references, slabs, systems) -> dict:
    entries = []
    for index, s in enumerate(systems):
        ref = s.slab_energy + _reference_energy(s.adsorbate, references)
        rows = []
        for p, (site, final, flags) in enumerate(zip(s.sites, s.relaxed, s.anomalies)):
            energy = float(final.info["energy"])
            rows.append({"placement": p, "site": site, "status": final.info["status"], "steps": int(final.info["steps"]),
                         "energy": _round(energy), "adsorption_energy": _round(energy - ref), "anomalies": flags})
        valid = [r for r in rows if RelaxStatus.of(r["status"]) is RelaxStatus.CONVERGED and not r["anomalies"]]
        best = min(valid, key=lambda r: r["energy"]) if valid else None
        entries.append({
            "index": index, "system": s.name, "metal": s.metal, "facet": s.facet, "adsorbate": s.adsorbate,
            "less_physical": s.adsorbate in LESS_PHYSICAL, "split": s.split, "slab_energy": _round(s.slab_energy),
            "reference_energy": _round(ref), "ground_truth_calls": int(sum(r["steps"] + 1 for r in rows)),
            "ground_truth_min": None if best is None else best["energy"],
            "ground_truth_min_placement": None if best is None else best["placement"],
            "placements": rows})
    counts = {split: sum(e["split"] == split for e in entries) for split in SPLITS}
    flagged = sum(RelaxStatus.of(r["status"]) is not RelaxStatus.CONVERGED or bool(r["anomalies"])
                  for e in entries for r in e["placements"])
    return {"format": FORMAT, "label": LABEL, "ground_truth": "ase.calculators.emt.EMT", "settings": asdict(settings),
            "gas_references": {k: _round(v) for k, v in references.items()},
            "lattice_constants": {f"{m}-{f}": _round(slab.info["lattice_constant"]) for (m, f), slab in slabs.items()},
            "splits": counts, "placements": sum(len(e["placements"]) for e in entries), "flagged_placements": flagged,
            "systems": entries}


def _round(value: float) -> float:
    """Energies in the manifest: 1e-8 eV, so that the file is identical across identical runs."""
    return float(round(value, 8))


def _records(system_index: int, s: SystemResult, references: dict) -> tuple[list, list]:
    """(dense placement records in float64, s2ef frame records in float32) of one system as ``Data``."""
    import torch

    from frameavg.data.atomic_data import atoms_to_data

    ref = s.slab_energy + _reference_energy(s.adsorbate, references)
    dense, frames = [], []
    for p, (initial, final, trajectory) in enumerate(zip(s.initial, s.relaxed, s.frames)):
        atoms = initial.copy()
        atoms.calc = None
        atoms.info = {"energy_relaxed": float(final.info["energy"]),
                      "adsorption_energy": float(final.info["energy"]) - ref,
                      "system_index": system_index, "placement": p, "converged": int(final.info["converged"])}
        atoms.arrays["pos_relaxed"] = np.array(final.positions)
        # float64: the ground truth is reproduced exactly from the stored initial positions
        dense.append(atoms_to_data(atoms, source=s.name, index=p, dtype=torch.float64))
        for step, frame in enumerate(trajectory):
            atoms = frame.copy()
            atoms.info = {"system_index": system_index, "placement": p, "frame": step}
            atoms.arrays["pos_relaxed"] = np.array(final.positions)  # IS2RS target of the frame (Noisy Nodes)
            atoms.calc = frame.calc
            frames.append(atoms_to_data(atoms, required=("energy", "forces"), source=s.name, index=p))
    return dense, frames


def _write_outputs(out: Path, manifest: dict, slabs: dict, systems: Sequence[SystemResult], references: dict) -> None:
    """Write the LMDB files, the slabs and (last) the manifest, which then lists the frame counts."""
    from ase.io import write

    from frameavg.data.lmdb_store import write_lmdb
    from frameavg.files import atomic_output

    (out / "s2ef").mkdir(parents=True, exist_ok=True)
    (out / "dense").mkdir(parents=True, exist_ok=True)
    by_split = {split: ([], []) for split in SPLITS}
    for index, s in enumerate(systems):
        dense, frames = _records(index, s, references)
        by_split[s.split][0].extend(dense)
        by_split[s.split][1].extend(frames)
    meta = {"label": LABEL, "synthetic": True, "ground_truth": "ase.calculators.emt.EMT", "format": FORMAT}
    for split, (dense, frames) in by_split.items():
        if not dense:
            continue
        write_lmdb(dense, out / "dense" / f"{split}.lmdb", metadata=meta | {"split": split, "kind": "dense placements"})
        write_lmdb(frames, out / "s2ef" / f"{split}.lmdb", metadata=meta | {"split": split, "kind": "s2ef frames"})
        manifest.setdefault("s2ef_frames", {})[split] = len(frames)
    slab_list = []
    for (metal, facet), slab in slabs.items():
        atoms = slab.copy()
        atoms.info = {"system": f"{metal}-{facet}", "energy": slab.info["energy"],
                      "lattice_constant": slab.info["lattice_constant"], "label": LABEL}
        slab_list.append(atoms)
    with atomic_output(out / "slabs.extxyz") as tmp:
        write(str(tmp), slab_list, format="extxyz")
    with atomic_output(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
