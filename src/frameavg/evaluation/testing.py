"""Assertions for users' own tests: is my model invariant / equivariant, within explicit tolerances?

Example::

    from frameavg.evaluation.testing import assert_invariant, assert_equivariant
    structures = read_structures("my_data.extxyz", dtype=torch.float64)[:8]
    model = FrameAveraging(MyModel(), frames="3D", method="all").double().eval()
    assert_invariant(model, structures, atol=1e-10)
    assert_equivariant(model, structures, atol=1e-10)
    assert_symmetric(model, structures, atol=1e-10)  # both from one report (half the work)

Each helper runs ``frameavg.evaluation.symmetry.symmetry_report`` and raises ``AssertionError``
naming the offending checks and their errors unless, for every check, the largest absolute error
is within ``atol`` or the largest relative error (|ΔE|/|E| per structure; |ΔF| over the largest
force norm of the data) is within ``rtol`` (``rtol=0``: absolute tolerance only).
"""

from __future__ import annotations

from frameavg.evaluation.symmetry import CHECKS, SymmetryReport, symmetry_report

INVARIANCE_CHECKS = ("rotation", "reflection", "translation", "permutation", "image", "cell")


def assert_invariant(model, structures, *, atol: float, rtol: float = 0.0, checks=INVARIANCE_CHECKS, **kwargs) -> SymmetryReport:
    """Energies unchanged (max |ΔE| <= atol or max |ΔE|/|E| <= rtol) under every check in ``checks``.

    ``kwargs`` go to ``symmetry_report`` (dim, cutoff, max_neighbors, trials, batch_size, seed).
    Returns the report.
    """
    report = symmetry_report(model, structures, checks=checks, **kwargs)
    check_invariant(report, atol=atol, rtol=rtol)
    return report


def assert_equivariant(model, structures, *, atol: float, rtol: float = 0.0, checks=INVARIANCE_CHECKS, **kwargs) -> SymmetryReport:
    """Forces follow every transform in ``checks`` (max |ΔF| <= atol or max |ΔF|/max|F| <= rtol)."""
    report = symmetry_report(model, structures, checks=checks, **kwargs)
    check_equivariant(report, atol=atol, rtol=rtol)
    return report


def assert_symmetric(
    model, structures, *, atol: float, rtol: float = 0.0, forces_atol: float | None = None,
    forces_rtol: float | None = None, checks=INVARIANCE_CHECKS, **kwargs,
) -> SymmetryReport:
    """``assert_invariant`` and ``assert_equivariant`` from one report; force tolerances default
    to the energy ones."""
    report = symmetry_report(model, structures, checks=checks, **kwargs)
    check_invariant(report, atol=atol, rtol=rtol)
    check_equivariant(report, atol=atol if forces_atol is None else forces_atol,
                      rtol=rtol if forces_rtol is None else forces_rtol)
    return report


def check_invariant(report: SymmetryReport, *, atol: float, rtol: float = 0.0) -> None:
    """Raise AssertionError unless every check of ``report`` keeps energies within tolerance."""
    failures = [
        f"{r.check}: max |dE| = {r.energy_abs_max:.3e}, max relative = {r.energy_rel_max:.3e}"
        for r in report.rows
        if r.energy_abs_max > atol and r.energy_rel_max > rtol
    ]
    if failures:
        raise AssertionError(f"energy not invariant (atol={atol:g}, rtol={rtol:g}):\n  " + "\n  ".join(failures))


def check_equivariant(report: SymmetryReport, *, atol: float, rtol: float = 0.0) -> None:
    """Raise AssertionError unless every check of ``report`` transforms forces within tolerance."""
    failures = []
    for r in report.rows:
        if r.forces_abs_max is None:
            raise AssertionError(f"{r.check}: the model gives no forces (no 'forces' output, energy not differentiable)")
        if r.forces_abs_max > atol and r.forces_rel_max > rtol:
            failures.append(f"{r.check}: max |dF| = {r.forces_abs_max:.3e}, relative = {r.forces_rel_max:.3e}")
    if failures:
        raise AssertionError(f"forces not equivariant (atol={atol:g}, rtol={rtol:g}):\n  " + "\n  ".join(failures))


def assert_batch_independent(model, structures, *, atol: float, batch_size: int = 32, **kwargs) -> SymmetryReport:
    """Each structure's outputs are the same alone and inside a batch of ``batch_size``."""
    report = symmetry_report(model, structures, checks=("batch",), batch_size=batch_size, **kwargs)
    row = report.row("batch")
    worst = max(row.energy_abs_max, row.forces_abs_max or 0.0)
    if worst > atol:
        raise AssertionError(
            f"outputs depend on the batch: max |dE| = {row.energy_abs_max:.3e}, "
            f"max |dF| = {row.forces_abs_max if row.forces_abs_max is not None else float('nan'):.3e} (atol={atol:g})"
        )
    return report


__all__ = [
    "CHECKS", "INVARIANCE_CHECKS", "assert_batch_independent", "assert_equivariant", "assert_invariant",
    "assert_symmetric", "check_equivariant", "check_invariant",
]
