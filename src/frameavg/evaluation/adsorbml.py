"""AdsorbML / OC20-Dense screening metrics: anomaly flags, success rates and ground-truth cost.

Pure functions on ``ase.Atoms`` and plain numbers: no model, no relaxation. Adsorbate-slab
structures carry OC20 tags (``atoms.get_tags()``): 0 subsurface, 1 surface, 2 adsorbate.

Anomalies (as fairchem's ``DetectTrajAnomaly``, ``fairchem/data/oc/utils/flag_anomaly.py``) of an
ML relaxation ``initial -> relaxed``; bonds from :func:`connectivity` with cutoff multiplier m:

===============  =================================================================================
anomaly          flagged when
===============  =================================================================================
dissociated      the adsorbate's (tag 2) bonds differ between initial and relaxed (m = 1)
desorbed         no adsorbate atom is bonded to a slab atom (tag 0 or 1) in relaxed (m = 1.5)
surface_changed  the slab part of relaxed and the relaxed clean slab disagree on a bond beyond the
                 cushion: a bond of one (m = 1) absent from the other (m = 1.5), either way round;
                 not checked without a clean slab
intercalated     an adsorbate atom is bonded to a subsurface atom (tag 0) in relaxed (m = 1)
===============  =================================================================================

Success (Lan et al. 2023, "AdsorbML"): a system is a set of placements of one adsorbate on one
surface, with ``gt_min`` the lowest ground-truth (DFT) energy over all placements and ``gt_calls``
the force calls of relaxing every placement. Candidates (ML relaxations) flagged anomalous are
dropped; the rest are ranked by ML energy. With threshold t (eV):

=========  ==========================================================  ===========================
strategy   success when                                                ground-truth calls
=========  ==========================================================  ===========================
ml_only    best ML candidate validated, |E_sp - E_ml| <= t, and         1 single point
           E_sp - gt_min <= t
sp@k       min E_sp over the k lowest-ML candidates - gt_min <= t       k single points
rx@k       min E_rx over the k lowest-ML candidates - gt_min <= t       sum of their rx_calls
=========  ==========================================================  ===========================

"Much better": best - gt_min < -t (ml_only: and validated). Speed-up: total ``gt_calls`` over the
strategy's total ground-truth calls. The ML cost (``ml_steps``) is not part of the speed-up, as in
AdsorbML, which counts DFT calls only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real

import numpy as np
from ase import Atoms
from ase.neighborlist import NeighborList, get_connectivity_matrix, natural_cutoffs

from frameavg.errors import ConfigError, DataError

ANOMALIES = ("dissociated", "desorbed", "surface_changed", "intercalated")
SUBSURFACE_TAG, SURFACE_TAG, ADSORBATE_TAG = 0, 1, 2
SYSTEM_KEYS = ("system", "split", "gt_min", "gt_calls", "candidates")
CANDIDATE_KEYS = ("ml_energy", "anomalous")
ALL_SPLITS = "all"


# --------------------------------------------------------------------------------------------
# anomalies


def connectivity(atoms: Atoms, multiplier: float = 1.0) -> np.ndarray:
    """Bond matrix [n, n] (bool, symmetric, False on the diagonal) of ``atoms``, periodic along
    ``atoms.pbc``.

    Atoms i, j are bonded when some image is closer than m·(r_i + r_j) + 0.6 Å, r the covalent
    radii (ASE ``natural_cutoffs(mult=m)``): ASE ``NeighborList(self_interaction=False,
    bothways=True)`` with its default 0.3 Å skin per atom, exactly as fairchem builds it.
    """
    if not isinstance(multiplier, Real) or not math.isfinite(multiplier) or multiplier <= 0:
        raise ConfigError(f"cutoff multiplier must be a positive number, got {multiplier!r}")
    if len(atoms) == 0:
        return np.zeros((0, 0), dtype=bool)
    neighbors = NeighborList(natural_cutoffs(atoms, mult=multiplier), self_interaction=False, bothways=True)
    neighbors.update(atoms)
    return get_connectivity_matrix(neighbors.nl, sparse=False).astype(bool)


def detect_anomalies(
    initial: Atoms,
    relaxed: Atoms,
    clean_slab: Atoms | None = None,
    *,
    desorption_multiplier: float = 1.5,
    surface_change_multiplier: float = 1.5,
) -> list[str]:
    """Anomalies of the relaxation ``initial -> relaxed`` (names from ANOMALIES, in that order).

    ``initial`` and ``relaxed``: the same adsorbate-slab atoms in the same order; the tags are
    read from ``initial`` (``relaxed`` must carry the same tags or none, i.e. all 0, as many file
    formats lose them). ``clean_slab``: the relaxed clean slab, i.e. the slab atoms (tag != 2)
    of ``relaxed`` in the same order; without it "surface_changed" is not checked. Neither input
    is modified.
    """
    tags = np.asarray(initial.get_tags())
    _check_same_atoms(initial, relaxed, tags)
    adsorbate = np.flatnonzero(tags == ADSORBATE_TAG)
    slab = np.flatnonzero(tags != ADSORBATE_TAG)
    subsurface = np.flatnonzero(tags == SUBSURFACE_TAG)
    if len(adsorbate) == 0:
        raise DataError("initial structure has no adsorbate atom (tag 2); set OC20 tags "
                        "(0 subsurface, 1 surface, 2 adsorbate)")
    if len(slab) == 0:
        raise DataError("initial structure has no slab atom (tag 0 or 1): nothing to adsorb on")
    if clean_slab is not None:
        _check_clean_slab(clean_slab, relaxed, slab)

    found = set()
    if not np.array_equal(connectivity(initial[adsorbate]), connectivity(relaxed[adsorbate])):
        found.add("dissociated")
    if not connectivity(relaxed, desorption_multiplier)[np.ix_(adsorbate, slab)].any():
        found.add("desorbed")
    if clean_slab is not None and _surface_changed(relaxed[slab], clean_slab, surface_change_multiplier):
        found.add("surface_changed")
    if connectivity(relaxed)[np.ix_(adsorbate, subsurface)].any():
        found.add("intercalated")
    return [name for name in ANOMALIES if name in found]


def _surface_changed(adslab_slab: Atoms, clean_slab: Atoms, multiplier: float) -> bool:
    """True when a bond (m = 1) of either slab is absent from the other one with the cushion."""
    adslab_bonds, clean_bonds = connectivity(adslab_slab), connectivity(clean_slab)
    adslab_cushioned = connectivity(adslab_slab, multiplier)
    clean_cushioned = connectivity(clean_slab, multiplier)
    return bool((adslab_bonds & ~clean_cushioned).any() or (clean_bonds & ~adslab_cushioned).any())


def _check_same_atoms(initial: Atoms, relaxed: Atoms, tags: np.ndarray) -> None:
    if len(initial) != len(relaxed):
        raise DataError(f"initial and relaxed structures differ in size: {len(initial)} vs {len(relaxed)} atoms")
    mismatch = np.flatnonzero(initial.get_atomic_numbers() != relaxed.get_atomic_numbers())
    if len(mismatch):
        i = int(mismatch[0])
        raise DataError(f"initial and relaxed structures differ in element order: atom {i} is "
                        f"{initial[i].symbol} vs {relaxed[i].symbol}")
    relaxed_tags = np.asarray(relaxed.get_tags())
    if relaxed_tags.any() and not np.array_equal(relaxed_tags, tags):
        i = int(np.flatnonzero(relaxed_tags != tags)[0])
        raise DataError(f"initial and relaxed structures differ in tags: atom {i} has tag "
                        f"{tags[i]} vs {relaxed_tags[i]}")


def _check_clean_slab(clean_slab: Atoms, relaxed: Atoms, slab: np.ndarray) -> None:
    if len(clean_slab) != len(slab):
        raise DataError(f"clean slab has {len(clean_slab)} atoms, the adsorbate-slab structure "
                        f"{len(slab)} slab atoms (tag 0 or 1)")
    expected = relaxed.get_atomic_numbers()[slab]
    mismatch = np.flatnonzero(clean_slab.get_atomic_numbers() != expected)
    if len(mismatch):
        i = int(mismatch[0])
        raise DataError(f"clean slab differs in element order from the slab atoms: clean slab atom {i} "
                        f"is {clean_slab[i].symbol}, slab atom {i} is {relaxed[int(slab[i])].symbol}")


# --------------------------------------------------------------------------------------------
# success rates


def strategy_names(ks: Iterable[int] = (1, 2, 3, 4, 5)) -> list[str]:
    """Strategy keys in report order: "ml_only", "sp@k"..., "rx@k"... (ks ascending)."""
    ks = _check_ks(ks)
    return ["ml_only", *(f"sp@{k}" for k in ks), *(f"rx@{k}" for k in ks)]


def success_rates(systems: Sequence[Mapping], ks: Iterable[int] = (1, 2, 3, 4, 5), threshold: float = 0.1) -> dict:
    """AdsorbML success rates and ground-truth cost per split (and over "all" systems).

    ``systems``: dicts with "system" (name), "split", "gt_min" (eV), "gt_calls" (int) and
    "candidates": dicts with "ml_energy" (eV), "anomalous" (bool) and optionally "sp_energy" (eV),
    "rx_energy" (eV), "rx_calls" (int), "rx_anomalous" (bool: the ground-truth relaxation ended
    anomalous, so its energy does not count, its calls do), "ml_steps" (unused). Ties in ML energy keep list order.
    A system without a non-anomalous candidate fails every strategy at no ground-truth cost.
    ``threshold``: t in eV (module docstring).

    Returns ``{split: {strategy: {"success_rate", "successes", "much_better", "systems",
    "gt_calls", "speedup"}}}`` with splits in order of appearance, then "all"; strategies as
    :func:`strategy_names`. A strategy whose ground-truth values (sp_energy; rx_energy and
    rx_calls) are missing for a candidate it needs in a split has every figure None there except
    "systems"; "speedup" is None also when the strategy made no ground-truth call.
    """
    ks = _check_ks(ks)
    if not isinstance(threshold, Real) or not math.isfinite(threshold) or threshold <= 0:
        raise ConfigError(f"success threshold must be a positive number of eV, got {threshold!r}")
    if isinstance(systems, Mapping) or not isinstance(systems, Sequence):
        raise DataError(f"systems must be a list of dicts, got {type(systems).__name__}")
    if len(systems) == 0:
        raise DataError("no system to evaluate (empty list)")
    names = strategy_names(ks)
    by_split: dict[str, list[tuple[int, dict]]] = {}
    seen = set()
    for index, system in enumerate(systems):
        checked = _check_system(system, index)
        if (checked["split"], checked["system"]) in seen:
            raise DataError(f"system {checked['system']!r} appears twice in split {checked['split']!r}")
        seen.add((checked["split"], checked["system"]))
        outcomes = _outcomes(checked, ks, threshold)
        by_split.setdefault(checked["split"], []).append((checked["gt_calls"], outcomes))
    everything = [entry for entries in by_split.values() for entry in entries]
    return {split: _aggregate(entries, names) for split, entries in [*by_split.items(), (ALL_SPLITS, everything)]}


def format_success_table(rates: Mapping) -> str:
    """Markdown table of :func:`success_rates`' result: one row per strategy, success rate (%) and
    speed-up per split ("n/a" where unavailable)."""
    if not isinstance(rates, Mapping) or not rates:
        raise DataError("no success rates to format (expected the dict success_rates returns)")
    splits = list(rates)
    strategies = list(rates[splits[0]])
    header = ["strategy"] + [f"{split} {column}" for split in splits for column in ("success (%)", "speed-up")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for strategy in strategies:
        cells = [_strategy_label(strategy)]
        for split in splits:
            figures = rates[split].get(strategy)
            if figures is None:
                raise DataError(f"split {split!r} has no strategy {strategy!r}")
            rate, speedup = figures["success_rate"], figures["speedup"]
            cells.append("n/a" if rate is None else f"{100 * rate:.1f}")
            cells.append("n/a" if speedup is None else f"{speedup:.1f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _strategy_label(strategy: str) -> str:
    if strategy == "ml_only":
        return "ML-only"
    kind, _, k = strategy.partition("@")
    return f"ML+{kind.upper()}@{k}" if kind in ("sp", "rx") and k else strategy


def _outcomes(system: dict, ks: list[int], threshold: float) -> dict[str, tuple[bool, bool, int] | None]:
    """(success, much_better, gt_calls) of one system per strategy; None: ground truth missing."""
    ranked = sorted((c for c in system["candidates"] if not c["anomalous"]), key=lambda c: c["ml_energy"])
    gt_min = system["gt_min"]
    if not ranked:
        return dict.fromkeys(strategy_names(ks), (False, False, 0))

    def judged(best: float, calls: int, valid: bool = True) -> tuple[bool, bool, int]:
        return valid and best - gt_min <= threshold, valid and best - gt_min < -threshold, calls

    outcomes: dict[str, tuple[bool, bool, int] | None] = {}
    lowest = ranked[0]
    if lowest["sp_energy"] is None:
        outcomes["ml_only"] = None
    else:
        validated = abs(lowest["sp_energy"] - lowest["ml_energy"]) <= threshold
        outcomes["ml_only"] = judged(lowest["sp_energy"], 1, validated)
    for k in ks:
        top = ranked[:k]
        sp = [c["sp_energy"] for c in top]
        outcomes[f"sp@{k}"] = None if None in sp else judged(min(sp), len(top))
    for k in ks:
        top = ranked[:k]
        rx = [c["rx_energy"] for c in top if not c["rx_anomalous"]]
        calls = [c["rx_calls"] for c in top]
        if None in rx or None in calls:
            outcomes[f"rx@{k}"] = None
        else:  # every ground-truth relaxation anomalous: a failure that still cost its calls
            outcomes[f"rx@{k}"] = judged(min(rx), sum(calls)) if rx else (False, False, sum(calls))
    return outcomes


def _aggregate(entries: list[tuple[int, dict]], names: list[str]) -> dict:
    brute_force_calls = sum(gt_calls for gt_calls, _ in entries)
    count = len(entries)
    summary = {}
    for name in names:
        outcomes = [outcomes[name] for _, outcomes in entries]
        if any(outcome is None for outcome in outcomes):
            summary[name] = {"success_rate": None, "successes": None, "much_better": None,
                             "systems": count, "gt_calls": None, "speedup": None}
            continue
        successes = sum(success for success, _, _ in outcomes)
        calls = sum(calls for _, _, calls in outcomes)
        summary[name] = {
            "success_rate": successes / count,
            "successes": successes,
            "much_better": sum(much_better for _, much_better, _ in outcomes),
            "systems": count,
            "gt_calls": calls,
            "speedup": brute_force_calls / calls if calls else None,
        }
    return summary


def _check_ks(ks: Iterable[int]) -> list[int]:
    try:
        values = list(ks)
    except TypeError:
        raise ConfigError(f"ks must be a list of positive integers, got {ks!r}") from None
    if not values:
        raise ConfigError("ks must hold at least one k")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
            raise ConfigError(f"every k must be a positive integer, got {k!r}")
    return sorted({int(k) for k in values})


def _check_system(system, index: int) -> dict:
    """A validated copy of one system: numbers as float/int, optional candidate fields as None."""
    if not isinstance(system, Mapping):
        raise DataError(f"system {index} must be a dict, got {type(system).__name__}")
    name = system.get("system", f"#{index}")
    missing = [key for key in SYSTEM_KEYS if key not in system]
    if missing:
        raise DataError(f"system {name!r} lacks {', '.join(repr(key) for key in missing)}")
    split = system["split"]
    if not isinstance(split, str) or not split or split == ALL_SPLITS:
        raise DataError(f"system {name!r}: split must be a non-empty string other than {ALL_SPLITS!r}, got {split!r}")
    candidates = system["candidates"]
    if isinstance(candidates, (Mapping, str)) or not isinstance(candidates, Sequence):
        raise DataError(f"system {name!r}: candidates must be a list of dicts, got {type(candidates).__name__}")
    checked_candidates = []
    for i, candidate in enumerate(candidates):
        where = f"system {name!r}, candidate {i}"
        if not isinstance(candidate, Mapping):
            raise DataError(f"{where} must be a dict, got {type(candidate).__name__}")
        missing = [key for key in CANDIDATE_KEYS if key not in candidate]
        if missing:
            raise DataError(f"{where} lacks {', '.join(repr(key) for key in missing)}")
        anomalous = candidate["anomalous"]
        if not isinstance(anomalous, (bool, np.bool_)):
            raise DataError(f"{where}: 'anomalous' must be True or False, got {anomalous!r}")
        checked_candidates.append({
            "ml_energy": _energy(candidate["ml_energy"], f"{where}: 'ml_energy'"),
            "anomalous": bool(anomalous),
            "sp_energy": _optional(candidate.get("sp_energy"), _energy, f"{where}: 'sp_energy'"),
            "rx_energy": _optional(candidate.get("rx_energy"), _energy, f"{where}: 'rx_energy'"),
            "rx_calls": _optional(candidate.get("rx_calls"), _count, f"{where}: 'rx_calls'"),
            "rx_anomalous": bool(candidate.get("rx_anomalous", False)),
        })
    return {
        "system": name,
        "split": split,
        "gt_min": _energy(system["gt_min"], f"system {name!r}: 'gt_min'"),
        "gt_calls": _count(system["gt_calls"], f"system {name!r}: 'gt_calls'"),
        "candidates": checked_candidates,
    }


def _optional(value, check, what: str):
    return None if value is None else check(value, what)


def _energy(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise DataError(f"{what} must be a finite energy in eV, got {value!r}")
    return float(value)


def _count(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise DataError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)
