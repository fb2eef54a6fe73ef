"""Test-set evaluation of a trained model: OC20 metrics and per-structure predictions, one bad
structure never stopping the others (``frameavg test``, ``frameavg predict`` and the
end-of-training test of ``frameavg train``). No Lightning: a ``TrainedModel`` of a checkpoint or a
training ``AtomisticTask`` (both ``PhysicalOutputs``) is evaluated the same way."""

from __future__ import annotations

import contextlib
import math

import torch
from torch_geometric.data import Batch

from frameavg.data.budget import MemoryBudget, batches_by_budget
from frameavg.derivatives import voigt_to_matrix
from frameavg.errors import DataError
from frameavg.metrics import oc20_metrics
from frameavg.outputs import ENERGY, FORCES, STRESS
from frameavg.training.network import PhysicalOutputs


@torch.no_grad()
def evaluate(task: PhysicalOutputs, structures: list, batch_size: int = 64,
             failed: dict[int, str] | None = None, stress: bool | None = None,
             precision=None, budget: MemoryBudget | None = None, source: str | None = None) -> tuple[dict, dict]:
    """OC20 metrics over all structures at once, and the predictions (eV, eV/Å, eV/Å³) per structure.

    A structure the model refuses (a ``DataError``: an element it does not embed, bad tags) does
    not stop the others: its batch is re-run one structure at a time, its predictions are NaN,
    ``pred["status"]`` holds ``"ok"`` or its error message for every structure, and the metrics
    cover the structures that were predicted (``metrics["structures_failed"]`` counts the rest).
    ``failed``: {index: message} of structures already known to be bad (not predicted).
    ``stress``: predict stress [B,3,3] too (default: when the model was trained on it; NaN for
    structures without a cell volume). ``precision``: a ``frameavg.precision.Precision`` to run the
    model under (its autocast; the task's net and the structures must already be in its dtype and
    on the task's device).
    Batches hold at most ``batch_size`` structures and fit ``budget`` (``data.budget``; default:
    the task's network and ``data.memory_fraction`` of the memory available now); a structure that
    alone does not fit raises a ``DataError`` naming it (in ``source``) before anything runs.
    """
    task.eval()
    stress = task.predict_stress if stress is None else stress
    status = ["ok"] * len(structures)
    for i, message in (failed or {}).items():
        status[i] = message
    outputs: list[dict | None] = [None] * len(structures)
    todo = [i for i in range(len(structures)) if status[i] == "ok"]
    if budget is None:
        budget = MemoryBudget.for_config(task.net, task.config.data)
    for chunk in list(batches_by_budget(structures, budget, batch_size, source=source, indices=todo)):
        try:
            parts = _predict_split(task, [structures[i] for i in chunk], stress, precision)
        except DataError:
            parts = []
            for i in chunk:
                try:
                    parts += _predict_split(task, [structures[i]], stress, precision)
                except DataError as exc:
                    parts.append(None)
                    status[i] = str(exc)
        for i, part in zip(chunk, parts):
            outputs[i] = part
    natoms = torch.tensor([int(d.natoms.reshape(-1)[0]) for d in structures], dtype=torch.long)
    pred = {}
    for key, per_atom, shape in ((ENERGY, False, ()), (FORCES, True, (3,)), (STRESS, False, (3, 3))):
        if not any(o is not None and key in o for o in outputs):
            continue
        pred[key] = torch.cat([o[key] if o is not None else torch.full((int(n) if per_atom else 1, *shape), math.nan,
                                                                       dtype=torch.float64)
                               for o, n in zip(outputs, natoms)])
    ok = torch.tensor([s == "ok" for s in status])
    atom_ok = torch.repeat_interleave(ok, natoms)
    target = {}
    if all(ENERGY in d for d in structures):
        target[ENERGY] = torch.cat([d.energy.reshape(-1) for d in structures])[ok]
    if FORCES in pred and all(FORCES in d for d in structures):
        target[FORCES] = torch.cat([d.forces for d in structures])[atom_ok]
    if STRESS in pred and all(STRESS in d for d in structures):
        target[STRESS] = torch.cat([voigt_to_matrix(d.stress.double()) for d in structures])[ok]
    kept = {key: value[atom_ok] if key == FORCES else value[ok] for key, value in pred.items()}
    free = None
    if task.config.loss.train_on_free_atoms:
        free = torch.cat([~d.fixed if "fixed" in d else torch.ones(int(d.natoms), dtype=torch.bool)
                          for d in structures])[atom_ok]
    metrics = oc20_metrics(kept, target, natoms[ok], free) if bool(ok.any()) else {}
    if not bool(ok.all()):
        metrics["structures_failed"] = int((~ok).sum())
    pred["natoms"] = natoms
    pred["status"] = status
    return metrics, pred


def _predict_split(task: PhysicalOutputs, chunk: list, stress: bool, precision=None) -> list[dict]:
    """Predictions of one batch, split per structure: [{"energy": [1], "forces": [n,3], "stress": [1,3,3]}]."""
    batch = Batch.from_data_list(chunk).to(task.device)
    with precision.context() if precision is not None else contextlib.nullcontext():
        out = task(batch, stress=stress)
    parts = []
    for k, (lo, hi) in enumerate(zip(batch.ptr[:-1].tolist(), batch.ptr[1:].tolist())):
        part = {ENERGY: out[ENERGY][k:k + 1].detach().cpu().double()}
        if FORCES in out:
            part[FORCES] = out[FORCES][lo:hi].detach().cpu().double()
        if STRESS in out:
            part[STRESS] = out[STRESS][k:k + 1].detach().cpu().double()
        parts.append(part)
    return parts


def baseline_metrics(task: PhysicalOutputs, structures: list) -> dict:
    """Metrics of the per-element-mean baseline: E = sum of element references + mean, F = 0."""
    batch = Batch.from_data_list([structures[i] for i in range(len(structures))])
    zeros = torch.zeros(batch.num_graphs, dtype=torch.float64)
    pred = {ENERGY: task.normalizer.denormalize_energy(zeros, batch.atomic_numbers, batch.batch)}
    target = {ENERGY: batch.energy}
    if task.predict_forces:
        pred[FORCES], target[FORCES] = torch.zeros_like(batch.forces), batch.forces
    free = ~batch.fixed if task.config.loss.train_on_free_atoms else None
    return oc20_metrics(pred, target, batch.natoms, free)


def paper_unit_metrics(target: str | None, metrics: dict) -> dict:
    """The energy MAE as QM9 papers report it (e.g. ``U0_mae_meV``) when ``target``, the key the
    energy was read from, is a QM9 target."""
    from frameavg.data.readers.qm9 import paper_units

    units = paper_units(target) if target and "energy_mae" in metrics else None
    if units is None:
        return {}
    unit, factor = units
    return {f"{target}_mae_{unit}": metrics["energy_mae"] * factor}
