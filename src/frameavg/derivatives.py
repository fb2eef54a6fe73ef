"""Derivatives of energies: forces, virials and stress, in one place.

Models with conservative forces, ``FrameAveraging`` (forces through the frames), the training
module, the symmetry report, the ASE calculator and the relaxation engine all differentiate
energies here, in the way MACE's ``compute_forces_virials`` does:

* forces F = −∂E/∂x [N,3] (eV/Å);
* for a strain ε [B,3,3] (symmetric, evaluated at 0) applied to every graph as x → x (I + ε) and
  cell rows h → h (I + ε): the virial W = −∂E/∂ε [B,3,3] (eV) and the stress
  σ = (1/V) ∂E/∂ε = −W / V [B,3,3] (eV/Å³), ASE's sign convention (positive under tension;
  pressure = −trace(σ)/3). V = |det(cell)|; graphs without a volume (molecules) get NaN stress.

The strain is applied to the inputs *before* a model (or ``FrameAveraging``) sees them, so the
derivative runs through everything that depends on positions and cell: edge vectors, radial bases,
and the frames of frame averaging (their clouds and canonical cells).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor

from frameavg.outputs import ENERGY, FORCES, STRESS, VIRIAL
from frameavg.precision import full_precision


@dataclass
class Strain:
    """A zero strain ``displacement`` [B,3,3] (requires grad) and the positions [N,3] and cells
    [B,3,3] it deforms (equal in value to the inputs, differentiable in ``displacement``)."""

    displacement: Tensor
    pos: Tensor
    cell: Tensor


def apply_strain(pos: Tensor, cell: Tensor, batch: Tensor | None, num_graphs: int) -> Strain:
    """Deform ``pos`` [N,3] and ``cell`` [B,3,3] by a symmetric zero strain per graph."""
    displacement = torch.zeros(num_graphs, 3, 3, dtype=pos.dtype, device=pos.device, requires_grad=True)
    symmetric = 0.5 * (displacement + displacement.transpose(-1, -2))
    graph = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device) if batch is None else batch
    with full_precision():
        strained_pos = pos + torch.einsum("ni,nij->nj", pos, symmetric.index_select(0, graph))
        strained_cell = cell.reshape(num_graphs, 3, 3).to(pos.dtype)
        strained_cell = strained_cell + torch.bmm(strained_cell, symmetric)
    return Strain(displacement, strained_pos, strained_cell)


def energy_gradients(
    energy: Tensor, pos: Tensor, strain: Strain | None = None, *, create_graph: bool = False,
    retain_graph: bool | None = None,
) -> tuple[Tensor, Tensor | None]:
    """(forces −∂E/∂x [N,3], virial −∂E/∂ε [B,3,3] or None) of the summed energies [B].

    ``create_graph``: keep the graph of the derivatives (training on forces or stress). Positions
    the energy does not depend on get zero forces. Under autocast, the recorded double-backward
    graph (``create_graph``) is built without it: the derivatives are in the dtype of ``pos``."""
    inputs = [pos] if strain is None else [pos, strain.displacement]
    # grad_outputs rather than energy.sum(): callers may run under no_grad, where a sum has no graph
    with full_precision():
        grads = torch.autograd.grad(energy, inputs, grad_outputs=torch.ones_like(energy), create_graph=create_graph,
                                    retain_graph=create_graph if retain_graph is None else retain_graph,
                                    allow_unused=True)
    forces = -grads[0] if grads[0] is not None else torch.zeros_like(pos)
    if strain is None:
        return forces, None
    virial = -grads[1] if grads[1] is not None else torch.zeros_like(strain.displacement)
    return forces, virial


def stress_from_virial(virial: Tensor, cell: Tensor) -> Tensor:
    """σ = −W / V [B,3,3] (eV/Å³); NaN for graphs whose cell has no volume."""
    volume = torch.linalg.det(cell.reshape(-1, 3, 3).to(virial.dtype)).abs()
    safe = torch.where(volume > 0, volume, torch.ones_like(volume))
    stress = -virial / safe[:, None, None]
    return torch.where((volume > 0)[:, None, None], stress, torch.full_like(stress, float("nan")))


def conservative_forces(energy: Tensor, pos: Tensor, *, create_graph: bool = False) -> Tensor:
    """−∂E/∂x [N,3] of the summed energies (models' ``from_energy`` forces)."""
    return energy_gradients(energy, pos, create_graph=create_graph, retain_graph=create_graph)[0]


@dataclass
class DifferentiableInputs:
    """A shallow copy ``batch`` of a caller's batch whose ``pos`` (and, with a strain, ``cell``)
    are new tensors the energy can be differentiated by; ``pos`` [N,3] is the leaf."""

    batch: object
    pos: Tensor
    strain: Strain | None = None

    def derivatives(self, energy: Tensor, *, create_graph: bool = False) -> dict:
        """{forces [N,3], and with a strain virial [B,3,3] and stress [B,3,3]} of ``energy`` [B]."""
        forces, virial = energy_gradients(energy, self.pos, self.strain, create_graph=create_graph)
        out = {FORCES: forces}
        if self.strain is not None:
            out[VIRIAL] = virial
            out[STRESS] = stress_from_virial(virial, self.strain.cell.detach())
        return out


def differentiable_inputs(batch, *, stress: bool = False) -> DifferentiableInputs:
    """Prepare ``batch`` (never modified) for forces and, with ``stress``, for the strain
    derivative. Call under ``torch.enable_grad()``."""
    num_graphs = int(batch.num_graphs) if getattr(batch, "num_graphs", None) is not None else 1
    inputs = copy.copy(batch)
    pos = batch.pos.detach().requires_grad_(True)
    strain = None
    if stress:
        cell = getattr(batch, "cell", None)
        if cell is None:
            cell = torch.zeros(num_graphs, 3, 3, dtype=pos.dtype, device=pos.device)
        strain = apply_strain(pos, cell.detach(), getattr(batch, "batch", None), num_graphs)
        inputs.pos, inputs.cell = strain.pos, strain.cell.to(cell.dtype)
    else:
        inputs.pos = pos
    return DifferentiableInputs(inputs, pos, strain)


def with_derivatives(net, batch, *, forces: bool = True, stress: bool = False, create_graph: bool = False,
                     energy_key: str = ENERGY) -> dict:
    """``net(batch)`` plus forces −∂E/∂x (``forces``) and the virial and stress of every graph
    (``stress``), taken through everything ``net`` does (frames included).

    ``batch`` is not modified (see ``differentiable_inputs``). Outputs ``net`` already gives under
    these names are replaced. ``create_graph`` keeps the derivatives differentiable (training)."""
    if not (forces or stress):
        return dict(net(batch))
    with torch.enable_grad():
        inputs = differentiable_inputs(batch, stress=stress)
        out = dict(net(inputs.batch))
        derived = inputs.derivatives(out[energy_key], create_graph=create_graph)
    if not forces:
        derived.pop(FORCES)
    return out | derived


def voigt_to_matrix(stress: Tensor) -> Tensor:
    """[B,6] Voigt stress (xx, yy, zz, yz, xz, xy, ASE's order) or [B,3,3] / [B,9] -> [B,3,3]."""
    if stress.shape[-1] == 6:
        xx, yy, zz, yz, xz, xy = stress.unbind(-1)
        rows = [torch.stack([xx, xy, xz], -1), torch.stack([xy, yy, yz], -1), torch.stack([xz, yz, zz], -1)]
        return torch.stack(rows, -2)
    return stress.reshape(*stress.shape[:-2] if stress.shape[-2:] == (3, 3) else stress.shape[:-1], 3, 3)


def matrix_to_voigt(stress: Tensor) -> Tensor:
    """[..., 3, 3] -> [..., 6] (xx, yy, zz, yz, xz, xy)."""
    return torch.stack([stress[..., 0, 0], stress[..., 1, 1], stress[..., 2, 2],
                        stress[..., 1, 2], stress[..., 0, 2], stress[..., 0, 1]], -1)
