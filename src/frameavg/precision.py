"""Numerical precision: ``64-true``, ``32-true``, ``bf16-mixed`` and ``16-mixed`` (Lightning's names).

Mixed precision runs the matrix products and activations of a model in bfloat16 (or float16,
CUDA only) under ``torch.autocast``, and keeps in float32/float64 what precision needs:
positions, frames (covariance, eigenvectors, degeneracy tests), distances and edge vectors, radial
bases and envelopes, energy sums, normaliser arithmetic and derivatives with respect to positions.
Models mark those regions with ``full_precision()``.

A CPU without bfloat16 instructions (AVX512-BF16 or AMX) runs bf16 products 30x slower than
float32 (measured: 1.1 against 32 GFLOP/s on the development AMD EPYC); ``resolve`` then falls back
to float32 with a warning, unless ``allow_emulated=True`` asks for bf16 anyway (accuracy studies).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from frameavg.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions: the CLI reads the names here without loading it.

PRECISIONS = ("64-true", "32-true", "bf16-mixed", "16-mixed")
_ALIASES = {"64": "64-true", "32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed", "double": "64-true",
            "float64": "64-true", "float32": "32-true"}


@dataclass(frozen=True)
class Precision:
    """name (one of PRECISIONS, after any fallback), ``dtype`` of weights and inputs, ``autocast``
    dtype (None: no autocast), ``device_type`` (cpu/cuda), and why a requested precision fell back."""

    name: str
    dtype: torch.dtype
    autocast: torch.dtype | None
    device_type: str
    fallback: str | None = None

    def record(self, requested: str) -> dict:
        """What a checkpoint or a report stores: requested and effective precision, and why."""
        return {"requested": normalize_name(requested), "used": self.name, "fallback": self.fallback}

    def context(self):
        """``torch.autocast`` for mixed precision, else a no-op context."""
        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast)


@functools.lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, frozenset]:
    """(model name, flags) of this CPU from /proc/cpuinfo (empty where it is unreadable)."""
    try:
        with open("/proc/cpuinfo") as handle:
            lines = handle.read().splitlines()
    except OSError:
        lines = []
    flags = frozenset(next((line for line in lines if line.startswith("flags")), "").split())
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")
    return model, flags


def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    return bool(_cpu_info()[1] & {"avx512_bf16", "amx_bf16"})


def cpu_flags() -> dict:
    """The CPU's bf16-relevant flags (reported next to benchmark figures)."""
    model, flags = _cpu_info()
    return {"model": model, **{flag: flag in flags for flag in ("avx512f", "avx512_bf16", "amx_bf16", "avx2")}}


#: Every spelling ``normalize_name`` accepts (Lightning's names and short aliases).
ACCEPTED = PRECISIONS + tuple(_ALIASES)


def normalize_name(precision: str | int) -> str:
    """One of PRECISIONS for a name or alias (``ConfigError`` otherwise)."""
    name = _ALIASES.get(str(precision), str(precision))
    if name in ("bf16-true", "16-true"):
        raise ConfigError(f"precision {name} (all weights and geometry in low precision) is not supported: "
                          "frames and forces need float32; use bf16-mixed or 16-mixed")
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    return name


def device_of_accelerator(accelerator: str) -> str:
    """The torch device type a Lightning ``accelerator`` runs on (``auto``: CUDA when present)."""
    import torch

    accelerator = str(accelerator).lower()
    if accelerator in ("gpu", "cuda"):
        return "cuda"
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def resolve(precision: str | int, device: str | torch.device = "cpu", *, allow_emulated: bool = False,
            warn: bool = True) -> Precision:
    """The ``Precision`` to run ``precision`` with on ``device`` (see the module docstring)."""
    import torch

    name = normalize_name(precision)
    device_type = torch.device(device).type
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for, but no CUDA device is available")
    if name == "64-true":
        return Precision(name, torch.float64, None, device_type)
    if name == "32-true":
        return Precision(name, torch.float32, None, device_type)
    if name == "16-mixed":
        if device_type != "cuda":
            raise ConfigError("precision 16-mixed (float16) needs a CUDA device; use bf16-mixed or 32-true on CPU")
        return Precision(name, torch.float32, torch.float16, device_type)
    if device_type == "cpu" and not cpu_has_bf16() and not allow_emulated:
        reason = "this CPU has no bfloat16 instructions (avx512_bf16/amx_bf16), where bf16 is ~30x slower"
        if warn:
            warnings.warn(f"bf16-mixed falls back to 32-true: {reason}", stacklevel=2)
        return Precision("32-true", torch.float32, None, device_type, fallback=reason)
    if device_type == "cuda" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        raise ConfigError("this GPU has no bfloat16 support; use 16-mixed or 32-true")
    return Precision(name, torch.float32, torch.bfloat16, device_type)


@contextlib.contextmanager
def full_precision():
    """Disable autocast (CPU and CUDA) inside: geometry, radial bases, sums, derivatives."""
    import torch

    with torch.autocast(device_type="cpu", enabled=False), torch.autocast(device_type="cuda", enabled=False):
        yield


def autocast_dtype(tensor: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype that applies to ``tensor``'s device, or None outside autocast."""
    import torch

    device_type = tensor.device.type if tensor.device.type in ("cpu", "cuda") else "cpu"
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 when it is in a lower precision (float64 and float32 unchanged)."""
    return tensor.float() if tensor.dtype.itemsize == 2 and tensor.is_floating_point() else tensor
