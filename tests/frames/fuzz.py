"""A seeded generator of hostile structures for the frame-averaging fuzz test.

Every structure is an ``ase.Atoms`` with a frame dimension (``3D``, or ``2D`` for slabs, whose z axis
is special). The kinds cover what breaks frames: random clouds with near-duplicate atoms, planar
and linear shapes (exactly and nearly), exactly symmetric shapes (rings, polyhedra, symmetrised
clouds), skewed and mixed-pbc periodic cells, ideal crystals, and slabs with adsorbates close to
or far above the surface. Each is placed in a random orientation (about z for slabs).
"""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from ase.build import bcc110, bulk, fcc100, fcc111, molecule

MAX_Z = 100
METALS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Fe", "W", "Mo")
ADSORBATES = ("H", "O", "C", "N", "CO", "OH", "NH3", "CH4", "H2O", "CO2")
#: Slightly above the data layer's coincident-atom limit (0.1 Å): near-duplicates that are valid.
NEAR_DUPLICATE = (0.12, 0.4)


def random_structures(seed: int, count: int) -> list[tuple[str, Atoms, str]]:
    """``count`` structures as (kind, atoms, frame dimension), the same for the same seed."""
    rng = np.random.default_rng(seed)
    kinds = list(_GENERATORS)
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        atoms, dim = _GENERATORS[kind](rng)
        out.append((kind, _orient(atoms, rng, dim), dim))
    return out


def _numbers(rng, n: int) -> np.ndarray:
    """Random atomic numbers: mostly few distinct elements (as real data), sometimes many."""
    if rng.random() < 0.5:
        palette = rng.integers(1, MAX_Z + 1, size=rng.integers(1, 4))
        return rng.choice(palette, size=n)
    return rng.integers(1, MAX_Z + 1, size=n)


def _with_near_duplicates(rng, positions: np.ndarray) -> np.ndarray:
    """Move a few atoms next to another one (within NEAR_DUPLICATE Å)."""
    n = len(positions)
    if n < 2 or rng.random() < 0.4:
        return positions
    positions = positions.copy()
    for _ in range(rng.integers(1, max(2, n // 5))):
        i, j = rng.choice(n, size=2, replace=False)
        direction = rng.normal(size=3)
        positions[i] = positions[j] + direction / np.linalg.norm(direction) * rng.uniform(*NEAR_DUPLICATE)
    return positions


def _spread(rng, n: int, spacing: float = 1.3) -> np.ndarray:
    """n points in a ball, at least ``spacing`` Å apart where possible (rejection sampling)."""
    radius = spacing * (n ** (1 / 3)) * 0.9 + 0.5
    points: list[np.ndarray] = []
    for _ in range(200 * n):
        if len(points) == n:
            break
        p = rng.uniform(-radius, radius, size=3)
        if np.linalg.norm(p) <= radius and all(np.linalg.norm(p - q) >= spacing for q in points):
            points.append(p)
    while len(points) < n:
        points.append(rng.uniform(-radius, radius, size=3))
    return np.array(points)


def molecule_random(rng):
    n = int(rng.integers(1, 61))
    return Atoms(numbers=_numbers(rng, n), positions=_with_near_duplicates(rng, _spread(rng, n))), "3D"


def molecule_planar(rng):
    n = int(rng.integers(3, 40))
    pos = _spread(rng, n)
    pos[:, 2] = 0.0 if rng.random() < 0.7 else rng.normal(scale=1e-3, size=n)  # exactly or nearly planar
    return Atoms(numbers=_numbers(rng, n), positions=pos), "3D"


def molecule_linear(rng):
    n = int(rng.integers(2, 12))
    x = np.cumsum(rng.uniform(0.9, 1.6, size=n))
    pos = np.zeros((n, 3))
    pos[:, 0] = x - x.mean()
    if rng.random() < 0.3:  # nearly linear
        pos[:, 1:] = rng.normal(scale=1e-4, size=(n, 2))
    return Atoms(numbers=_numbers(rng, n), positions=pos), "3D"


def molecule_symmetric(rng):
    """Rings (C_p / D_p), stacked rings, regular polyhedra and symmetrised random clouds."""
    choice = rng.integers(0, 4)
    if choice == 0:  # one or two rings of p atoms (benzene-like), optionally a centre atom
        p = int(rng.integers(3, 9))
        angles = 2 * math.pi * np.arange(p) / p
        ring = np.stack([np.cos(angles), np.sin(angles), np.zeros(p)], -1) * rng.uniform(1.2, 2.5)
        layers = [ring] if rng.random() < 0.5 else [ring, ring + [0, 0, 1.5]]
        pos = np.concatenate(layers + ([np.zeros((1, 3))] if rng.random() < 0.5 else []))
        numbers = np.concatenate([np.full(p, rng.integers(1, MAX_Z + 1)) for _ in layers]
                                 + ([[rng.integers(1, MAX_Z + 1)]] if len(pos) > p * len(layers) else []))
        return Atoms(numbers=numbers, positions=pos), "3D"
    if choice == 1:  # tetrahedron / octahedron / cube around an optional centre (CH4, SF6, ...)
        shapes = {
            "tetra": np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float),
            "octa": np.concatenate([np.eye(3), -np.eye(3)]),
            "cube": np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float),
        }
        shell = shapes[list(shapes)[rng.integers(0, 3)]] * rng.uniform(0.8, 1.5)
        centre = rng.random() < 0.7
        pos = np.concatenate([np.zeros((1, 3))] * centre + [shell])
        numbers = np.concatenate([[rng.integers(1, MAX_Z + 1)]] * centre + [np.full(len(shell), rng.integers(1, MAX_Z + 1))])
        return Atoms(numbers=numbers, positions=pos), "3D"
    if choice == 2:  # a random cloud symmetrised by a cyclic group C_p about z (with mirror: D_p)
        p = int(rng.integers(2, 7))
        seed_points = _spread(rng, int(rng.integers(1, 5)), spacing=1.5) + [1.5, 0, 0]
        seed_numbers = rng.integers(1, MAX_Z + 1, size=len(seed_points))
        pos, numbers = [], []
        for k in range(p):
            c, s = math.cos(2 * math.pi * k / p), math.sin(2 * math.pi * k / p)
            rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
            pos.append(seed_points @ rot.T)
            numbers.append(seed_numbers)
            if rng.random() < 0.3:
                pos.append(seed_points @ rot.T * [1, 1, -1])
                numbers.append(seed_numbers)
        return Atoms(numbers=np.concatenate(numbers), positions=np.concatenate(pos)), "3D"
    name = ("CH4", "C6H6", "CO2", "NH3", "SiH4", "C2H2", "C2H6", "H2O")[rng.integers(0, 8)]
    return molecule(name), "3D"


def _skewed_cell(rng, volume: float) -> np.ndarray:
    cell = np.eye(3) + rng.uniform(-0.45, 0.45, size=(3, 3))
    return cell * (volume / abs(np.linalg.det(cell))) ** (1 / 3)


def periodic_random(rng):
    """A random cell (skewed, mixed pbc) with random atoms at a realistic density."""
    n = int(rng.integers(1, 41))
    density = rng.uniform(0.02, 0.08)  # atoms / Å^3
    cell = _skewed_cell(rng, max(n / density, 30.0))
    pbc = [True, True, True] if rng.random() < 0.5 else list(rng.random(3) < 0.5)
    if not any(pbc):
        pbc[rng.integers(0, 3)] = True
    frac = rng.random((n, 3))
    pos = _with_near_duplicates(rng, frac @ cell)
    return Atoms(numbers=_numbers(rng, n), positions=pos, cell=cell, pbc=pbc), "3D"


def periodic_crystal(rng):
    """Ideal crystals (high symmetry: triple-degenerate clouds), primitive or cubic, sometimes as a
    supercell or with one atom displaced."""
    kind = ("fcc", "bcc", "sc", "hcp", "rocksalt", "diamond")[rng.integers(0, 6)]
    a = rng.uniform(2.8, 4.5)
    element = ("Cu", "Fe", "Po", "Mg", "NaCl", "Si")[("fcc", "bcc", "sc", "hcp", "rocksalt", "diamond").index(kind)]
    kwargs = {"a": a * (1.4 if kind in ("rocksalt", "diamond") else 1.0)}
    if kind == "hcp":
        kwargs["c"] = a * 1.633
    atoms = bulk(element, kind, cubic=bool(rng.random() < 0.4) and kind != "hcp", **kwargs)
    if rng.random() < 0.3:
        atoms = atoms.repeat((1, 1, 2))
    if rng.random() < 0.3:
        atoms.positions[0] += rng.normal(scale=0.05, size=3)
    return atoms, "3D"


def slab_with_adsorbate(rng):
    """fcc(111)/fcc(100)/bcc(110) slabs (pbc x, y) with an adsorbate near the surface, or far
    above it (desorbed: the case whose reference-atom cloud is a single line)."""
    metal = METALS[rng.integers(0, len(METALS))]
    size = (int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(2, 5)))
    builder = (fcc111, fcc100, bcc110)[rng.integers(0, 3)]
    a = rng.uniform(2.9, 4.1)
    if builder is bcc110:
        size = (size[0], 2 * max(1, size[1] // 2), size[2])  # an orthogonal bcc(110) cell needs an even y
    slab = builder(metal, size=size, a=a, vacuum=rng.uniform(6.0, 12.0), orthogonal=builder is not fcc111)
    name = ADSORBATES[rng.integers(0, len(ADSORBATES))]
    adsorbate = Atoms(name) if len(name) == 1 else molecule(name)
    top = slab.positions[:, 2].max()
    height = rng.uniform(1.2, 2.5) if rng.random() < 0.5 else rng.uniform(6.0, 9.0)
    anchor = slab.positions[np.argmax(slab.positions[:, 2])][:2] + rng.uniform(-1.0, 1.0, size=2)
    shift = np.array([anchor[0], anchor[1], top + height]) - adsorbate.positions[0]
    adsorbate.positions += shift
    atoms = slab + adsorbate
    atoms.cell[2, 2] = max(atoms.cell[2, 2], atoms.positions[:, 2].max() + 8.0)
    atoms.set_tags([0] * len(atoms))
    return atoms, "2D"


_GENERATORS = {
    "molecule-random": molecule_random,
    "molecule-planar": molecule_planar,
    "molecule-linear": molecule_linear,
    "molecule-symmetric": molecule_symmetric,
    "periodic-random": periodic_random,
    "periodic-crystal": periodic_crystal,
    "slab-adsorbate": slab_with_adsorbate,
}


def _orient(atoms: Atoms, rng, dim: str) -> Atoms:
    """A random rigid motion (about z for slabs) and atom order; cell rows rotate with the atoms."""
    atoms = atoms.copy()
    if dim == "2D":
        angle = rng.uniform(0, 2 * math.pi)
        c, s = math.cos(angle), math.sin(angle)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    else:
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        rotation = q * np.sign(np.diag(r))
    atoms.positions = atoms.positions @ rotation.T + rng.normal(scale=3.0, size=3)
    atoms.cell = atoms.cell.array @ rotation.T
    order = rng.permutation(len(atoms))
    return atoms[order]
