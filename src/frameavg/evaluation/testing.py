"""Assertions for users' own tests: is my model invariant / equivariant, within tolerances?

Example::

    from frameavg.evaluation.testing import assert_invariant, assert_equivariant
    structures = read_structures("my_data.extxyz", dtype=torch.float64)[:8]
    model = FrameAveraging(MyModel(), dims="3D", method="all").double().eval()
    assert_invariant(model, structures)  # default tolerance of float64
    assert_equivariant(model, structures, atol=1e-10)
    assert_symmetric(model, structures)  # both from one report (half the work)

Each helper runs ``frameavg.evaluation.symmetry.symmetry_report`` and raises ``AssertionError``
naming the offending checks, their worst errors, the tolerance and the dtype unless, for every
check, the largest absolute error is within ``atol`` or the largest relative error (|ΔE|/|E| per
structure; |ΔF| over the largest force norm of the data) is within ``rtol``.

Tolerances: with neither ``atol`` nor ``rtol`` given, ``DEFAULT_TOLERANCES`` of the structures'
dtype ("exact up to rounding": float64 atol 1e-10 / rtol 1e-9, float32 atol 1e-5 / rtol 1e-4,
float32's for other dtypes; eV, eV/Å). Giving only ``atol`` means absolute only (``rtol=0``),
only ``rtol`` relative only (``atol=0``). The helpers hide their own frames from pytest's
tracebacks (``__tracebackhide__``), so a failure points at the calling test.
"""

from __future__ import annotations

import torch

from frameavg.evaluation.symmetry import CHECKS, TOLERANCES, SymmetryReport, symmetry_report

INVARIANCE_CHECKS = ("rotation", "reflection", "translation", "permutation", "image", "cell")
#: Default tolerance per dtype: ``{dtype: {"atol": eV or eV/Å, "rtol": relative}}`` (the report's).
DEFAULT_TOLERANCES = {dtype: {"atol": atol, "rtol": rtol} for dtype, (atol, rtol) in TOLERANCES.items()}


def assert_invariant(model, structures, *, atol: float | None = None, rtol: float | None = None,
                     checks=INVARIANCE_CHECKS, **kwargs) -> SymmetryReport:
    """Energies unchanged (max |ΔE| <= atol or max |ΔE|/|E| <= rtol) under every check in ``checks``.

    ``kwargs`` go to ``symmetry_report`` (dim, cutoff, max_neighbors, trials, batch_size, seed).
    Returns the report.
    """
    __tracebackhide__ = True
    report = symmetry_report(model, structures, checks=checks, **kwargs)
    check_invariant(report, atol=atol, rtol=rtol)
    return report


def assert_equivariant(model, structures, *, atol: float | None = None, rtol: float | None = None,
                       checks=INVARIANCE_CHECKS, **kwargs) -> SymmetryReport:
    """Forces follow every transform in ``checks`` (max |ΔF| <= atol or max |ΔF|/max|F| <= rtol)."""
    __tracebackhide__ = True
    report = symmetry_report(model, structures, checks=checks, **kwargs)
    check_equivariant(report, atol=atol, rtol=rtol)
    return report


def assert_symmetric(
    model, structures, *, atol: float | None = None, rtol: float | None = None, forces_atol: float | None = None,
    forces_rtol: float | None = None, checks=INVARIANCE_CHECKS, **kwargs,
) -> SymmetryReport:
    """``assert_invariant`` and ``assert_equivariant`` from one report; each force tolerance not
    given is the energy one (both None: the dtype's defaults)."""
    __tracebackhide__ = True
    report = symmetry_report(model, structures, checks=checks, **kwargs)
    check_invariant(report, atol=atol, rtol=rtol)
    check_equivariant(report, atol=atol if forces_atol is None else forces_atol,
                      rtol=rtol if forces_rtol is None else forces_rtol)
    return report


def check_invariant(report: SymmetryReport, *, atol: float | None = None, rtol: float | None = None) -> None:
    """Raise AssertionError unless every check of ``report`` keeps energies within tolerance."""
    __tracebackhide__ = True
    atol, rtol, where = resolve_tolerance(report, atol, rtol)
    failures = [_line(r.check, "dE", r.energy_abs_max, r.energy_rel_max)
                for r in report.rows if r.energy_abs_max > atol and r.energy_rel_max > rtol]
    if failures:
        raise AssertionError(f"energy not invariant ({where}):\n  " + "\n  ".join(failures))


def check_equivariant(report: SymmetryReport, *, atol: float | None = None, rtol: float | None = None) -> None:
    """Raise AssertionError unless every check of ``report`` transforms forces within tolerance."""
    __tracebackhide__ = True
    atol, rtol, where = resolve_tolerance(report, atol, rtol)
    failures = []
    for r in report.rows:
        if r.forces_abs_max is None:
            raise AssertionError(f"{r.check}: the model gives no forces (no 'forces' output, energy not differentiable)")
        if r.forces_abs_max > atol and r.forces_rel_max > rtol:
            failures.append(_line(r.check, "dF", r.forces_abs_max, r.forces_rel_max))
    if failures:
        raise AssertionError(f"forces not equivariant ({where}):\n  " + "\n  ".join(failures))


def assert_batch_independent(model, structures, *, atol: float | None = None, rtol: float | None = None,
                             batch_size: int = 32, **kwargs) -> SymmetryReport:
    """Each structure's outputs are the same alone and inside a batch of ``batch_size`` (energies
    and forces each within ``atol`` absolute or ``rtol`` relative)."""
    __tracebackhide__ = True
    report = symmetry_report(model, structures, checks=("batch",), batch_size=batch_size, **kwargs)
    atol, rtol, where = resolve_tolerance(report, atol, rtol)
    row = report.row("batch")
    if not row.within(atol, rtol):
        forces = "" if row.forces_abs_max is None else "; " + _line("max", "dF", row.forces_abs_max, row.forces_rel_max)
        raise AssertionError(f"outputs depend on the batch ({where}): "
                             + _line("max", "dE", row.energy_abs_max, row.energy_rel_max) + forces)
    return report


def resolve_tolerance(report: SymmetryReport, atol: float | None, rtol: float | None) -> tuple[float, float, str]:
    """(atol, rtol, description naming dtype and tolerance) for ``report``: ``DEFAULT_TOLERANCES``
    of its dtype when neither is given, else the missing one is 0."""
    name = report.meta.get("dtype", "float32")
    if atol is None and rtol is None:
        default = DEFAULT_TOLERANCES.get(getattr(torch, name, None), DEFAULT_TOLERANCES[torch.float32])
        atol, rtol = default["atol"], default["rtol"]
        return atol, rtol, f"{name}; default atol={atol:g}, rtol={rtol:g}"
    atol, rtol = atol or 0.0, rtol or 0.0
    return atol, rtol, f"{name}; atol={atol:g}, rtol={rtol:g}"


def _line(check: str, quantity: str, absolute: float, relative: float) -> str:
    return f"{check}: max |{quantity}| = {absolute:.3e}, relative = {relative:.3e}"


__all__ = [
    "CHECKS", "DEFAULT_TOLERANCES", "INVARIANCE_CHECKS", "assert_batch_independent", "assert_equivariant",
    "assert_invariant", "assert_symmetric", "check_equivariant", "check_invariant", "resolve_tolerance",
]
