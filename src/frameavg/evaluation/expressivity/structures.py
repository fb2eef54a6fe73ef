"""The geometric graph pairs of the expressivity suite, built from the papers' descriptions.

* k-chains (Joshi et al., ICML 2023, geometric GNN dojo): k + 2 atoms; k atoms on a line 5 Å
  apart and two end atoms bonded at 5 Å, bent to opposite sides (class 0) or to the same side
  (class 1). Bond lengths and angles are equal in both, so invariant models confuse them; they
  are (⌊k/2⌋ + 1)-hop distinguishable.
* L-fold stars (dojo, "rotationally symmetric structures"): a centre atom with L spokes of 1 Å in
  a plane (class 0) and the same star rotated in its plane by 2π/(L + 1), which is not a symmetry
  (class 1).
* Counterexamples (Pozdnyakov et al., PRL 2020, as laid out in the dojo): pairs of environments of
  a centre atom with equal 2-body (distances), 3-body (distances and angles) or 4-body scalars;
  the 4-body chiral pair are mirror images of each other.

Graphs carry the dojo's explicit edges, not a radius graph: a path for k-chains, centre-neighbour
bonds for the stars and counterexamples (both directions, ``cell_offsets`` zero). Chains are all
carbon; stars and counterexamples are a carbon centre with hydrogen neighbours (the dojo uses one
node type throughout; the centre species does not change any equality of invariants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from torch_geometric.data import Data

from frameavg.data import atoms_to_data
from frameavg.errors import ConfigError

CARBON, HYDROGEN = 6, 1
KCHAIN_BOND = 5.0
STAR_SPOKE = 1.0
#: Model cutoff over the longest edge of a pair. With a cutoff just above the bonds (6 Å for 5 Å
#: bonds), envelopes scale each message by ~0.07 and the signal PaiNN or eSCN carry along a
#: 6-atom chain shrinks to round-off (1e-14); at 3x the cosine envelope is 0.75 on the longest edge.
CUTOFF_FACTOR = 3.0
#: Counterexample names (the ``case`` of their records).
COUNTEREXAMPLES = ("2-body", "3-body", "4-body non-chiral", "4-body chiral")


@dataclass
class GeometricPair:
    """Two geometric graphs to tell apart (class 0 and class 1).

    Attributes:
        test: ``k-chains``, ``stars`` or ``counterexamples``.
        case: e.g. ``k=4``, ``L=5``, ``2-body``.
        graphs: the two ``Data`` objects (pos [N,3] Å, atomic_numbers [N], edge_index [2,E],
            cell_offsets [E,3], cell [1,3,3] zeros, pbc [1,3] False, natoms [1]).
        cutoff: radius every model is built with, Å: ``CUTOFF_FACTOR`` x the longest edge, so
            that smooth cutoff envelopes keep every message (see ``pair_cutoff``).
        centre: index of the centre atom (read out by the star test), or None.
        description: one line for the docs.
    """

    test: str
    case: str
    graphs: tuple[Data, Data]
    cutoff: float
    centre: int | None
    description: str


def _graph(numbers: list[int], positions: np.ndarray, bonds: list[tuple[int, int]], dtype: torch.dtype) -> Data:
    atoms = Atoms(numbers=numbers, positions=positions)
    data = atoms_to_data(atoms, source="expressivity suite", dtype=dtype)
    pairs = torch.tensor(bonds, dtype=torch.long).t()
    data.edge_index = torch.cat([pairs, pairs.flip(0)], dim=1)
    data.cell_offsets = torch.zeros(data.edge_index.shape[1], 3, dtype=dtype)
    return data


def pair_cutoff(graphs: tuple[Data, Data]) -> float:
    """``CUTOFF_FACTOR`` x the longest edge of the two graphs, Å (rounded up to 0.5 Å)."""
    longest = max(float((g.pos[g.edge_index[0]] - g.pos[g.edge_index[1]]).norm(dim=-1).max()) for g in graphs)
    return math.ceil(2 * CUTOFF_FACTOR * longest) / 2


def _centred(positions) -> np.ndarray:
    positions = np.asarray(positions, dtype=np.float64)
    return positions - positions.mean(axis=0)


def k_chain_pair(k: int, dtype: torch.dtype = torch.float32) -> GeometricPair:
    """The two k-chains (k >= 2): end atoms bent to opposite sides (class 0) or the same side (1)."""
    if k < 2:
        raise ConfigError(f"k-chains need k >= 2, got k={k}")
    line = [[0.0, KCHAIN_BOND * i, 0.0] for i in range(k)]
    top = [4.0, KCHAIN_BOND * (k - 1) + 3.0, 0.0]
    bonds = [(i, i + 1) for i in range(k + 1)]
    numbers = [CARBON] * (k + 2)
    graphs = tuple(
        _graph(numbers, _centred([[start_x, -3.0, 0.0], *line, top]), bonds, dtype) for start_x in (-4.0, 4.0)
    )
    return GeometricPair(
        "k-chains", f"k={k}", graphs, cutoff=pair_cutoff(graphs), centre=None,
        description=f"{k + 2} C atoms, {k} on a line, bonds 5 Å; end atoms on opposite vs the same side",
    )


def star_rotation_angle(fold: int) -> float:
    """Rotation (rad) between the two stars: 2π/(L + 1), never a multiple of 2π/L."""
    return 2.0 * math.pi / (fold + 1)


def star_pair(fold: int, dtype: torch.dtype = torch.float32) -> GeometricPair:
    """An L-fold symmetric star in the xy plane (class 0) and the same star rotated about z by
    :func:`star_rotation_angle` (class 1). Atom 0 is the centre."""
    if fold < 2:
        raise ConfigError(f"stars need L >= 2 spokes, got L={fold}")
    graphs = []
    for offset in (0.0, star_rotation_angle(fold)):
        angles = offset + 2.0 * math.pi * np.arange(fold) / fold
        spokes = STAR_SPOKE * np.stack([np.cos(angles), np.sin(angles), np.zeros(fold)], axis=1)
        positions = np.concatenate([np.zeros((1, 3)), spokes])
        graphs.append(_graph([CARBON] + [HYDROGEN] * fold, positions, [(0, i) for i in range(1, fold + 1)], dtype))
    return GeometricPair(
        "stars", f"L={fold}", tuple(graphs), cutoff=pair_cutoff(tuple(graphs)), centre=0,
        description=f"C centre, {fold} H spokes of 1 Å; rotated by 2π/{fold + 1} in the plane",
    )


def _environment_pair(case: str, neighbours: tuple[list, list], description: str,
                      dtype: torch.dtype) -> GeometricPair:
    graphs = []
    for positions in neighbours:
        n = len(positions)
        full = np.concatenate([np.zeros((1, 3)), np.asarray(positions, dtype=np.float64)])
        graphs.append(_graph([CARBON] + [HYDROGEN] * n, full, [(0, i) for i in range(1, n + 1)], dtype))
    graphs = tuple(graphs)
    return GeometricPair("counterexamples", case, graphs, cutoff=pair_cutoff(graphs), centre=0, description=description)


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def counterexample_pair(case: str, dtype: torch.dtype = torch.float32) -> GeometricPair:
    """One of :data:`COUNTEREXAMPLES`: a carbon centre (atom 0) and hydrogen neighbours.

    * ``2-body``: two neighbours at 5 Å, at 53° vs 180° (equal centre distances).
    * ``3-body``: Pozdnyakov et al. Fig. 1(b): four neighbours with equal distances and angle
      triplets; one neighbour's y flips.
    * ``4-body non-chiral``: Fig. 2(f): seven neighbours; one neighbour's y flips (not a mirror
      image of the other environment).
    * ``4-body chiral``: Fig. 2(e): four neighbours; the second environment is the mirror image
      of the first (three neighbours lie in the mirror plane y = 0).

    The dojo's coordinates for the two 4-body pairs give congruent environments (the second is a
    180° rotation of the first, because its triangles have an in-plane mirror), so no model
    could separate them. One neighbour is moved at its distance from the centre to remove that
    mirror: the pairs are then not congruent (the chiral one only by a reflection) and keep
    equal 2-, 3- and 4-body scalars (checked in tests/evaluation/test_expressivity.py).
    """
    if case == "2-body":
        pair = ([[5, 0, 0], [3, 0, 4]], [[5, 0, 0], [-5, 0, 0]])
        return _environment_pair(case, pair, "2 H at 5 Å from C; equal distance sets", dtype)
    if case == "3-body":
        a, b, c = [5, 0, 5], [5, 5, 5], [0, 5, 5]
        shared = [a, b, [-b[0], -b[1], b[2]]]
        pair = (shared + [c], shared + [[c[0], -c[1], c[2]]])
        return _environment_pair(case, pair, "4 H around C; equal distances and angles", dtype)
    if case == "4-body non-chiral":
        q = _rotation_y(2.0 * math.pi / 10.0)
        upper = [[4, 2, -3], [0, 2, 5], [-3, 2, -4]]  # the dojo's [3, 2, -4] made scalene (see docstring)
        lower = ((np.array(upper, dtype=np.float64) * [1, -1, 1]) @ q).tolist()  # mirrored in y, turned
        pair = (upper + lower + [[0, 5, 0]], upper + lower + [[0, -5, 0]])
        return _environment_pair(case, pair, "7 H around C; equal 4-body scalars, not mirror images", dtype)
    if case == "4-body chiral":
        plane = [[3, 0, -4], [0, 0, 5], [-4, 0, -3]]  # the dojo's [-3, 0, -4] moved (see docstring)
        pair = (plane + [[0, 5, 0]], plane + [[0, -5, 0]])
        return _environment_pair(case, pair, "4 H around C; mirror images (chiral pair)", dtype)
    raise ConfigError(f"unknown counterexample {case!r}; choose one of {', '.join(COUNTEREXAMPLES)}")
