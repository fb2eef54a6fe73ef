"""Target normalisation: per-element linear references and mean/std scaling (kept in checkpoints).

A total energy E of a structure with composition counts n_Z is modelled as
``E = sum_Z n_Z * ref_Z + mean + std * e_model`` where ``e_model`` is what the network predicts
(normalised). Forces are scaled by the same ``std`` (eV/Å per unit of normalised output).
"""

from __future__ import annotations

import torch
from torch import nn

from frameavg.data.atomic_data import MAX_Z


def composition_counts(atomic_numbers: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """[B, MAX_Z+1] number of atoms of each element per graph."""
    counts = torch.zeros(num_graphs, MAX_Z + 1, dtype=torch.float64, device=atomic_numbers.device)
    counts.index_put_((batch, atomic_numbers), torch.ones_like(batch, dtype=torch.float64), accumulate=True)
    return counts


class EnergyNormalizer(nn.Module):
    """Maps model outputs (normalised, per structure) to eV and back.

    Buffers: ``element_references`` [MAX_Z+1] (eV per atom of each element, zeros if unused),
    ``mean``, ``std`` (eV) of the reference-subtracted training energies.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0, element_references: torch.Tensor | None = None):
        super().__init__()
        refs = torch.zeros(MAX_Z + 1, dtype=torch.float64) if element_references is None else element_references
        self.register_buffer("element_references", refs.to(torch.float64))
        self.register_buffer("mean", torch.tensor(float(mean), dtype=torch.float64))
        self.register_buffer("std", torch.tensor(float(std), dtype=torch.float64))

    @classmethod
    def fit(cls, atomic_numbers, batch, energy, *, use_element_references=True, scale=True,
            references: torch.Tensor | None = None) -> "EnergyNormalizer":
        """Fit on training data: ``atomic_numbers`` [N], ``batch`` [N], ``energy`` [B] (eV).

        Element references are the minimum-norm least-squares solution of counts @ refs = E
        (elements absent from the data get 0), or the given ``references`` [MAX_Z+1] (eV per atom,
        e.g. isolated-atom energies, see ``isolated_atom_references``); mean/std are those of the
        residuals.
        """
        energy = energy.to(torch.float64)
        refs = torch.zeros(MAX_Z + 1, dtype=torch.float64)
        residual = energy
        if references is not None:
            refs = references.to(torch.float64).clone()
            residual = energy - composition_counts(atomic_numbers, batch, len(energy)) @ refs
        elif use_element_references:
            counts = composition_counts(atomic_numbers, batch, len(energy))
            present = counts.sum(0) > 0
            solution = torch.linalg.lstsq(counts[:, present], energy.unsqueeze(1), driver="gelsd").solution
            refs[present] = solution.squeeze(1)
            residual = energy - counts @ refs
        mean = residual.mean().item()
        std = residual.std().item() if scale and len(residual) > 1 else 1.0
        return cls(mean=mean, std=std if std > 1e-12 else 1.0, element_references=refs)

    def reference_energy(self, atomic_numbers, batch, num_graphs) -> torch.Tensor:
        """[B] sum of element references, eV."""
        refs = self.element_references[atomic_numbers]
        out = torch.zeros(num_graphs, dtype=refs.dtype, device=refs.device)
        return out.index_add_(0, batch, refs)

    def normalize_energy(self, energy, atomic_numbers, batch) -> torch.Tensor:
        ref = self.reference_energy(atomic_numbers, batch, len(energy))
        return ((energy.to(torch.float64) - ref - self.mean) / self.std).to(energy.dtype)

    def denormalize_energy(self, output, atomic_numbers, batch) -> torch.Tensor:
        """Energies in eV as float64: total energies (thousands of eV) lose meV in float32."""
        ref = self.reference_energy(atomic_numbers, batch, len(output))
        return output.to(torch.float64) * self.std + self.mean + ref

    def normalize_forces(self, forces: torch.Tensor) -> torch.Tensor:
        return forces / self.std.to(forces.dtype)

    def denormalize_forces(self, output: torch.Tensor) -> torch.Tensor:
        return output * self.std.to(output.dtype)


def isolated_atom_references(path, energy_key: str = "energy") -> tuple[torch.Tensor, set[int]]:
    """([MAX_Z+1] eV per atom, the atomic numbers given) from a file of one-atom structures with
    energies (as MACE's and SchNetPack's isolated-atom references; any format frameavg reads)."""
    from frameavg.data import read_structures
    from frameavg.errors import DataError

    refs = torch.zeros(MAX_Z + 1, dtype=torch.float64)
    seen: set[int] = set()
    for data in read_structures(path, keys={"energy": energy_key}, required=("energy",), dtype=torch.float64):
        if data.num_nodes != 1:
            raise DataError(f"isolated-atom references must be one-atom structures, found {data.num_nodes} atoms",
                            source=str(path))
        z = int(data.atomic_numbers[0])
        if z in seen:
            raise DataError(f"two isolated-atom energies for Z = {z}", source=str(path))
        seen.add(z)
        refs[z] = float(data.energy.reshape(-1)[0])
    return refs, seen
