"""The relaxation engine's per-step Python work does not grow with the number of structures: its
state is flat tensors with a structure index, so no step loops over structures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

from frameavg.simulation import relax
from frameavg.simulation import optimizers, relaxation

ENGINE_FILES = {str(Path(relaxation.__file__).resolve()), str(Path(optimizers.__file__).resolve())}


class HarmonicProvider:
    """A batched tensor force provider: every atom in a harmonic well (k = 1 eV/Å²) around the
    origin shifted by (1, 2, 3) Å: E = Σ ½ k |r − c|², F = −k (r − c)."""

    def __init__(self):
        self.sizes: dict[int, int] = {}
        self.calls: list[int] = []  # structures per call

    def prepare(self, key, atoms):
        self.sizes[key] = len(atoms)

    def release(self, key):
        self.sizes.pop(key)

    def evaluate(self, keys, positions, cells, stress):
        self.calls.append(len(keys))
        offset = positions - torch.tensor([1.0, 2.0, 3.0], dtype=positions.dtype)
        system = torch.repeat_interleave(torch.arange(len(keys)), torch.tensor([self.sizes[k] for k in keys]))
        energy = torch.zeros(len(keys), dtype=positions.dtype).index_add_(0, system, 0.5 * (offset ** 2).sum(-1))
        return {"energy": energy, "forces": -offset, "errors": {}}


def _traced_lines(structures, optimizer: str, steps: int) -> int:
    """Lines of the engine's modules executed by a relaxation of ``structures`` for ``steps`` steps."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
        return local

    def global_trace(frame, event, arg):
        return local if frame.f_code.co_filename in ENGINE_FILES else None

    provider = HarmonicProvider()
    sys.settrace(global_trace)
    try:
        results = relax(structures, provider, optimizer=optimizer, fmax=1e-12, steps=steps,
                        max_atoms_per_batch=10 ** 6)
    finally:
        sys.settrace(None)
    assert all(r.info["steps"] == steps and r.info["status"] == "not converged" for r in results)
    assert provider.calls == [len(structures)] * (steps + 1)  # one call per step, all structures
    return count


@pytest.mark.parametrize("optimizer", ["fire", "lbfgs"])
def test_per_step_python_work_does_not_grow_with_the_number_of_structures(optimizer):
    """Engine lines executed per step (steps 4..8, joining and leaving cancel out) are the same for
    4 and 64 molecules; a per-structure loop in a step would add lines for every structure."""
    rng = np.random.default_rng(0)
    per_step = {}
    for count in (4, 64):
        structures = []
        for _ in range(count):
            atoms = molecule("CH3CH2OH")
            atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
            structures.append(atoms)
        lines = [_traced_lines(structures, optimizer, steps) for steps in (4, 8)]
        per_step[count] = (lines[1] - lines[0]) / 4
    assert per_step[4] > 0 and per_step[4] == per_step[64], per_step
