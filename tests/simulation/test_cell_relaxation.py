"""A model trained on one oxide's equation of state relaxes strained copies back to the DFT
minimum (relax_cell: the model's stress, taken through its frames, drives the cell)."""

from __future__ import annotations

import ase.io
import ase.db
import numpy as np
import pytest
from ase.eos import EquationOfState

from frameavg.simulation import relax
from frameavg.training.config import load_config
from frameavg.training.run import train


@pytest.mark.slow
def test_model_relaxes_strained_tio2_back_to_the_dft_minimum(real_data, tmp_path):
    """The 10 PBE equation-of-state points of the 3-atom TiO2 cell in oxides_eos (24.1–31.7 Å³):
    SchNet trained on their energies and forces (a model with a smooth cutoff: FAENet, like the
    original, has none, so its energy jumps where neighbours cross the cutoff — 0.03 eV for a random
    model's CO pair — and scaling a small cell moves whole shells across it); copies of the EOS point nearest the minimum,
    strained by ±3 % along every axis (volumes ±9 %), relax (FIRE, cell filter) back to one volume,
    the model's minimum, from both sides (within 0.5 %), and that is the DFT Birch–Murnaghan
    minimum within 3 %."""
    rows = [row.toatoms() for row in ase.db.connect(real_data / "oxides_eos" / "oxides.db").select()]
    eos = [atoms for atoms in rows if len(atoms) == 3 and 22 in atoms.numbers]
    assert len(eos) == 10
    volumes = [atoms.get_volume() for atoms in eos]
    energies = [atoms.get_potential_energy() for atoms in eos]
    dft_minimum, _, _ = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
    data = tmp_path / "tio2_eos.extxyz"
    ase.io.write(data, eos)
    config = load_config(None, [
        "model.name=schnet", "model.hidden_channels=32", "model.num_filters=32", "model.num_gaussians=20",
        "model.num_interactions=2", "model.cutoff=5.0", "frames.dims=none", f"data.train={data}",
        f"data.val={data}", "data.cutoff=5.0", "data.batch_size=10", "targets.forces=true", "loss.energy=mse",
        "loss.forces=mse", "loss.forces_weight=1.0", "normalize.std=0.1", "optim.lr=3e-3", "optim.max_epochs=300",
        "optim.warmup_steps=10", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=50",
        f"run_dir={tmp_path}"])
    checkpoint = train(config)["checkpoint"]
    start = eos[int(np.argmin(energies))]
    strained = []
    for sign in (1, -1):
        atoms = start.copy()
        atoms.set_cell(start.cell.array * (1 + sign * 0.03), scale_atoms=True)
        strained.append(atoms)
    results = relax(strained, checkpoint, optimizer="fire", relax_cell=True, fmax=0.002, steps=600)
    relaxed = [r.get_volume() for r in results]
    print(f"\nTiO2: strained {[round(a.get_volume(), 3) for a in strained]} Å3 -> relaxed {[round(v, 3) for v in relaxed]}"
          f" Å3; DFT minimum {dft_minimum:.3f} Å3")
    assert all(r.info["converged"] for r in results)
    assert abs(relaxed[0] / relaxed[1] - 1) < 0.005  # the same minimum from both sides
    assert all(abs(v / dft_minimum - 1) < 0.03 for v in relaxed)  # the model's minimum is the DFT one
