"""PNG plots written at the end of training: parity (test set) and learning curves (CSV log)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def write_plots(run_dir: Path, structures: list, pred: dict) -> list[Path]:
    """Write ``parity.png`` and ``learning_curve.png`` into ``run_dir``; return their paths."""
    return [p for p in (parity_plot(run_dir, structures, pred), learning_curve(run_dir)) if p]


def parity_plot(run_dir: Path, structures: list, pred: dict) -> Path | None:
    panels = []
    if all("energy" in d for d in structures):
        true_e = torch.cat([d.energy for d in structures]).double()
        panels.append(("energy", "eV", true_e, pred["energy"].double()))
    if "forces" in pred and all("forces" in d for d in structures):
        true_f = torch.cat([d.forces for d in structures]).reshape(-1).double()
        panels.append(("force components", "eV/Å", true_f, pred["forces"].reshape(-1).double()))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
    for ax, (name, unit, true, guess) in zip(axes[0], panels):
        offset = true.mean() if name == "energy" else 0.0
        x, y = (true - offset).numpy(), (guess - offset).numpy()
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1)
        ax.scatter(x, y, s=4, alpha=0.5)
        mae = abs(x - y).mean()
        shift = f" (shifted by {float(offset):.2f})" if name == "energy" else ""
        ax.set(xlabel=f"reference {name} [{unit}]{shift}", ylabel=f"predicted {name} [{unit}]",
               title=f"{name}: MAE {mae:.4g} {unit}")
    fig.tight_layout()
    path = run_dir / "parity.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def learning_curve(run_dir: Path) -> Path | None:
    log = run_dir / "logs" / "metrics.csv"
    if not log.is_file():
        return None
    series: dict[str, list[tuple[float, float]]] = {}
    with log.open() as handle:
        for row in csv.DictReader(handle):
            for key in ("train/loss_epoch", "val/loss", "val/energy_mae", "val/forces_mae"):
                if row.get(key):
                    series.setdefault(key, []).append((float(row["epoch"]), float(row[key])))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key, points in series.items():
        ax.plot(*zip(*points), marker="o", ms=3, label=key)
    ax.set(xlabel="epoch", ylabel="value", yscale="log", title="learning curve")
    ax.legend()
    fig.tight_layout()
    path = run_dir / "learning_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
