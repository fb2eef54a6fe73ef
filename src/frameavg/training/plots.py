"""PNG plots written at the end of training: parity (test set) and learning curves (CSV log)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from frameavg.outputs import ENERGY, FORCES  # noqa: E402


def write_plots(run_dir: Path, structures: list, pred: dict) -> list[Path]:
    """Write ``parity.png`` and ``learning_curve.png`` into ``run_dir``; return their paths."""
    return [p for p in (parity_plot(run_dir, structures, pred), learning_curve(run_dir)) if p]


def parity_plot(run_dir: Path, structures: list, pred: dict) -> Path | None:
    panels = []
    if all("energy" in d for d in structures):
        true_e = torch.cat([d.energy for d in structures]).double()
        panels.append(("energy", "eV", true_e, pred[ENERGY].double()))
    if FORCES in pred and all("forces" in d for d in structures):
        true_f = torch.cat([d.forces for d in structures]).reshape(-1).double()
        panels.append(("force components", "eV/Å", true_f, pred[FORCES].reshape(-1).double()))
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
    """Losses (normalised units) on the left axes, validation MAE (meV, meV/Å) on the right."""
    log = run_dir / "logs" / "metrics.csv"
    if not log.is_file():
        return None
    panels = {"loss (normalised)": ("train/loss_epoch", "val/loss"),
              "validation MAE (meV, meV/Å)": ("val/energy_mae_meV", "val/forces_mae_meV_per_A")}
    series: dict[str, list[tuple[float, float]]] = {}
    with log.open() as handle:
        for row in csv.DictReader(handle):
            for key in (k for keys in panels.values() for k in keys):
                if row.get(key):
                    series.setdefault(key, []).append((float(row["epoch"]), float(row[key])))
    if not series:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, (label, keys) in zip(axes, panels.items()):
        for key in keys:
            if key in series:
                ax.plot(*zip(*series[key]), marker="o", ms=3, label=key)
        ax.set(xlabel="epoch", ylabel=label, yscale="log")
        if any(key in series for key in keys):
            ax.legend()
    fig.suptitle("learning curve")
    fig.tight_layout()
    path = run_dir / "learning_curve.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
