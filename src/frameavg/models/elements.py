"""Element table for atom embeddings: period, group and 14 physical properties for Z = 1..100.

The raw values ship as ``models/data/elements.csv`` (made once from mendeleev 0.14.0 by
``scripts/make_element_table.py``; see ``models/data/SOURCE.txt``). They are normalised here the
way faenet's ``PhysEmbedding`` does it:

* each property is z-scored with the mean and (sample, ddof=1) standard deviation of Z = 1..85,
  ignoring missing values;
* a property is kept only if fewer than int(85 / 2) of Z = 1..85 miss it (all 14 pass);
* missing values are filled with the column mean of the z-scored values over Z = 1..85;
* row 0 (no element) is all zeros.

Z = 86..100, which the original does not support, are z-scored with the same statistics and filled
the same way, so the values of Z <= 85 are exactly the original's.

Groups follow mendeleev: 1..18 for s-, p- and d-block elements (La and Ac in group 3); the f-block
elements Ce-Lu (58-71) and Th-Lr (90-103) have no group and get 19, the original's fill value.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

#: Largest atomic number in the table.
MAX_ATOMIC_NUMBER = 100
#: faenet z-scores over Z = 1..85 (``df.loc[:85]``); its atom embedding has 85 rows (Z <= 84).
NORMALISATION_MAX_Z = 85
#: Group given to the f-block elements (no IUPAC group), as faenet's ``fillna(19)``.
F_BLOCK_GROUP = 19

PROPERTY_NAMES = (
    "atomic_radius",
    "atomic_volume",
    "density",
    "dipole_polarizability",
    "electron_affinity",
    "en_allen",
    "vdw_radius",
    "metallic_radius",
    "metallic_radius_c12",
    "covalent_radius_pyykko_double",
    "covalent_radius_pyykko_triple",
    "covalent_radius_pyykko",
    "IE1",
    "IE2",
)

TABLE_PATH = Path(__file__).resolve().parent / "data" / "elements.csv"


@dataclass(frozen=True)
class ElementTable:
    """Per-element data indexed by Z (row 0 = no element).

    symbols: tuple of 101 strings ("" for row 0); period [101] long (1..7, row 0 = 1);
    group [101] long (1..19, row 0 = 1); raw [101, P] float64 raw values (NaN = missing);
    properties [101, P] float64 z-scored and mean-filled (row 0 zeros); property_names: P names.
    """

    symbols: tuple[str, ...]
    period: torch.Tensor
    group: torch.Tensor
    raw: torch.Tensor
    properties: torch.Tensor
    property_names: tuple[str, ...]


def _float(text: str) -> float:
    return float(text) if text.strip() else math.nan


@lru_cache(maxsize=1)
def element_table() -> ElementTable:
    """The shipped table (cached; callers must not modify the tensors in place)."""
    with open(TABLE_PATH, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if [int(r["Z"]) for r in rows] != list(range(1, MAX_ATOMIC_NUMBER + 1)):
        raise RuntimeError(f"{TABLE_PATH}: expected elements 1..{MAX_ATOMIC_NUMBER} in order")
    size = MAX_ATOMIC_NUMBER + 1
    period = torch.ones(size, dtype=torch.long)
    group = torch.ones(size, dtype=torch.long)
    raw = torch.full((size, len(PROPERTY_NAMES)), math.nan, dtype=torch.float64)
    symbols = [""]
    for row in rows:
        z = int(row["Z"])
        symbols.append(row["symbol"])
        period[z] = int(row["period"])
        group[z] = int(row["group"]) if row["group"].strip() else F_BLOCK_GROUP
        raw[z] = torch.tensor([_float(row[name]) for name in PROPERTY_NAMES], dtype=torch.float64)
    names, properties = _normalise(raw)
    return ElementTable(tuple(symbols), period, group, raw, properties, names)


def _normalise(raw: torch.Tensor) -> tuple[tuple[str, ...], torch.Tensor]:
    """faenet's PhysEmbedding normalisation (see module docstring), extended to Z <= 100."""
    reference = raw[1 : NORMALISATION_MAX_Z + 1]
    present = ~torch.isnan(reference)
    keep = present.logical_not().sum(0) < int(NORMALISATION_MAX_Z / 2)
    count = present.sum(0).to(raw.dtype)
    mean = torch.where(present, reference, 0.0).sum(0) / count
    std = torch.sqrt(torch.where(present, (reference - mean) ** 2, 0.0).sum(0) / (count - 1))
    scored = (raw - mean) / std
    fill = torch.where(present, scored[1 : NORMALISATION_MAX_Z + 1], 0.0).sum(0) / count
    scored = torch.where(torch.isnan(scored), fill.expand_as(scored), scored)
    scored[0] = 0.0
    names = tuple(name for name, k in zip(PROPERTY_NAMES, keep.tolist()) if k)
    return names, scored[:, keep]
