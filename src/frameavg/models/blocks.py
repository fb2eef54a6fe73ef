"""Small building blocks shared by the models: activations, radial bases, cutoff envelopes,
per-graph scatters and GraphNorm.

Scatters use ``torch.Tensor.index_add_`` (no torch_scatter). Every per-graph operation takes the
graph index explicitly, so a graph's result never depends on the other graphs of its batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frameavg.errors import ConfigError
from frameavg.precision import full


def swish(x: Tensor) -> Tensor:
    """x * sigmoid(x) (SiLU), the default FAENet activation."""
    return F.silu(x)


def get_activation(act: str | Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """An activation function from its name (``"swish"`` or any ``torch.nn.functional`` name)."""
    if callable(act):
        return act
    if act == "swish":
        return swish
    function = getattr(F, str(act), None)
    if not callable(function):
        raise ConfigError(f"unknown activation {act!r}: use 'swish' or a torch.nn.functional name")
    return function


_INPLACE = {swish: F.silu, F.silu: F.silu, F.relu: F.relu, F.elu: F.elu, F.leaky_relu: F.leaky_relu,
             F.hardtanh: F.hardtanh, F.relu6: F.relu6, F.selu: F.selu, F.celu: F.celu}


def inplace_activation(act: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A version of ``act`` that overwrites its input when torch offers one (else ``act`` itself).

    Only for tensors no autograd graph needs (inference), where it saves a large allocation.
    """
    function = _INPLACE.get(act)
    if function is None:
        return act
    return lambda x: function(x, inplace=True)


class Activation(nn.Module):
    """A module wrapping an activation function (parameter-free; keeps Sequential indices)."""

    def __init__(self, function: Callable[[Tensor], Tensor]):
        super().__init__()
        self.function = function

    def forward(self, x: Tensor) -> Tensor:
        return self.function(x)


class GaussianSmearing(nn.Module):
    """Gaussian radial basis: exp(coeff * (d - mu_k)^2), mu_k evenly spaced on [start, stop] Å.

    Input distances [E] (Å); output [E, num_gaussians]. ``coeff = -0.5 / spacing^2``.
    Values below exp(``EXPONENT_FLOOR``) = 1e-30 are set to exactly 0 (the original keeps them,
    down to float32 denormals): the output changes by < 1e-30, and the products that follow avoid
    denormal arithmetic and exp's slow path for large negative inputs, both ~40x slower on CPU.
    """

    EXPONENT_FLOOR = -69.0

    def __init__(self, start: float = 0.0, stop: float = 5.0, num_gaussians: int = 50):
        super().__init__()
        if num_gaussians < 2:
            raise ConfigError(f"num_gaussians must be >= 2, got {num_gaussians}")
        offset = torch.linspace(start, stop, num_gaussians)
        self.coeff = -0.5 / (offset[1] - offset[0]).item() ** 2
        self.register_buffer("offset", offset)

    def forward(self, dist: Tensor) -> Tensor:
        diff = dist.view(-1, 1) - self.offset.view(1, -1)
        exponent = diff.square().mul_(self.coeff)
        values = exponent.clamp(min=self.EXPONENT_FLOOR).exp()
        return values.masked_fill(exponent <= self.EXPONENT_FLOOR, 0.0)


#: Cutoff envelopes of edge contributions (``edge_envelope``); "none" multiplies by nothing.
ENVELOPES = ("polynomial", "cosine", "none")


def cosine_cutoff(dist: Tensor, cutoff: float) -> Tensor:
    """SchNet's envelope ½(cos(πd/cutoff) + 1) for d < cutoff, else 0: distances [E] (Å) -> [E]."""
    value = 0.5 * (torch.cos(dist.clamp(max=cutoff) * (math.pi / cutoff)) + 1.0)
    return torch.where(dist < cutoff, value, torch.zeros_like(value))


def polynomial_envelope(dist: Tensor, cutoff: float, exponent: int = 5) -> Tensor:
    """DimeNet/GemNet/MACE envelope 1 − (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) − p(p+1)/2 x^(p+2),
    x = d/cutoff < 1, else 0: distances [E] (Å) -> [E]. Value, first and second derivative are 0 at
    the cutoff."""
    p = exponent
    x = (dist / cutoff).clamp(max=1.0)
    xp = x.pow(p)
    value = 1.0 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
    return torch.where(dist < cutoff, value, torch.zeros_like(value))


def edge_envelope(dist: Tensor, cutoff: float, kind: str, exponent: int = 5) -> Tensor | None:
    """The ``kind`` envelope (``ENVELOPES``) of distances [E] (Å): [E], or None for ``"none"``."""
    if kind == "none":
        return None
    if kind == "cosine":
        return cosine_cutoff(dist, cutoff)
    if kind == "polynomial":
        return polynomial_envelope(dist, cutoff, exponent)
    raise ConfigError(f"unknown envelope {kind!r}; choose one of {ENVELOPES}")


def scatter_sum(src: Tensor, index: Tensor, dim_size: int) -> Tensor:
    """Sum rows of ``src`` [E, ...] into ``dim_size`` rows by ``index`` [E]; bf16/fp16 rows (under
    autocast) are summed in float32."""
    src = full(src)
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)


@dataclass
class GraphIndex:
    """Which graph each atom belongs to, with the counts the per-graph reductions need.

    batch [N] long, num_graphs B, counts [B] (atoms per graph, float, >= 1).
    ``batch`` is None when the whole input is one graph (fast path without scatters).
    """

    batch: Tensor | None
    num_graphs: int
    counts: Tensor

    @classmethod
    def from_batch(cls, batch: Tensor | None, num_nodes: int, num_graphs: int | None = None,
                   like: Tensor | None = None) -> "GraphIndex":
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        if batch is None or num_graphs == 1:
            device = like.device if like is not None else None
            return cls(None, 1, torch.full((1,), float(num_nodes), dtype=dtype, device=device))
        if num_graphs is None:
            num_graphs = int(batch.max()) + 1 if batch.numel() else 0
        counts = torch.bincount(batch, minlength=num_graphs).to(dtype).clamp_(min=1)
        return cls(batch, num_graphs, counts)

    def sum(self, x: Tensor) -> Tensor:
        """Per-graph sum of node rows: [N, ...] -> [B, ...]."""
        if self.batch is None:
            return full(x).sum(dim=0, keepdim=True)
        return scatter_sum(x, self.batch, self.num_graphs)

    def mean(self, x: Tensor) -> Tensor:
        """Per-graph mean of node rows: [N, C] -> [B, C]."""
        if self.batch is None:
            return full(x).mean(dim=0, keepdim=True)
        return self.sum(x) / self.counts.view(-1, *([1] * (x.dim() - 1)))

    def expand(self, per_graph: Tensor) -> Tensor:
        """Broadcast per-graph rows [B, ...] back to nodes [N, ...] (or [1, ...] for one graph)."""
        if self.batch is None:
            return per_graph
        return per_graph.index_select(0, self.batch)


#: FAENet's normalisations after aggregation (``norm``): the original GraphNorm (per graph) or a
#: LayerNorm per atom (well-conditioned on crystals; docs/faenet.md).
NORMS = ("graph", "layer")


class GraphNorm(nn.Module):
    """GraphNorm (Cai et al. 2021), normalising each graph separately.

    out = weight * (x - mean_scale * mean_g(x)) / sqrt(var_g + eps) + bias, with mean and variance
    taken over the atoms of each graph g. Same parameters and result as
    ``torch_geometric.nn.norm.GraphNorm`` called *with* the batch vector.

    Ill-conditioned on crystals: their atoms are (nearly) equivalent, so var_g is ~0 and
    1/sqrt(var_g + eps) amplifies every perturbation up to 1/sqrt(eps) ≈ 300x per block.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.mean_scale = nn.Parameter(torch.ones(channels))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        nn.init.ones_(self.mean_scale)

    def forward(self, x: Tensor, graph: GraphIndex) -> Tensor:
        """x [N, C] -> [N, C]."""
        centred = x - graph.expand(graph.mean(x)) * self.mean_scale
        var = graph.mean(centred * centred)
        inv_std = torch.rsqrt(var + self.eps)
        return centred * graph.expand(inv_std * self.weight) + self.bias

    def extra_repr(self) -> str:
        return f"{self.channels}"


class AtomLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each atom, called like GraphNorm: ``forward(x [N, C], graph)``.
    Independent of the other atoms, so equivalent atoms (crystals) do not make it ill-conditioned."""

    def forward(self, x: Tensor, graph: GraphIndex | None = None) -> Tensor:
        return super().forward(x)


def build_norm(kind: str, channels: int) -> nn.Module:
    """The ``kind`` normalisation (``NORMS``) of ``channels`` features [N, C]."""
    if kind == "graph":
        return GraphNorm(channels)
    if kind == "layer":
        return AtomLayerNorm(channels)
    raise ConfigError(f"unknown norm {kind!r}; choose one of {NORMS}")
