"""Ewald message passing (Kosmala et al., 2023): a long-range atom update computed in reciprocal
space, attached to FAENet, SchNet or PaiNN by their ``ewald`` argument (``model.ewald`` in configs).

For atom states h [N, H], each graph b has a set K_b of wave vectors k (Å⁻¹, half space: k and −k
contribute the same, so only one of each pair is kept). An Ewald block computes

    g = pre_residual(h)                                              [N, H]
    S_b(k) = Σ_{j ∈ b} d_j g_j exp(i k·x_j)                          [B, K, H] structure factor
    u_i = 0.01 Σ_k φ(k) ∘ Re[d_i exp(−i k·x_i) S_b(k)]
        = 0.01 Σ_{j ∈ b} g_j d_i d_j Σ_k φ(k) cos(k·(x_j − x_i))    [N, H]
    out = MLP(u)                                                     [N, H] (Linear + act, residual layers)

with the learned filter φ(k) = up(down(RBF(|k| / k_max))) · taper(|k| / k_max) [K, H]. The
down-projection is shared by all blocks of a model, the up-projection is per block, and the taper
½(cos(π|k|/k_max) + 1) takes the filter to zero at the edge of the k-set. The model's update with an
Ewald block is (h + interaction + ewald) / √3, as in the reference.

Two variants (``variant``; ``auto`` picks per graph: periodic for graphs whose cell has a volume,
aperiodic for molecules):

* **periodic**: K_b is every reciprocal-lattice vector k = n · 2π cell⁻ᵀ with |k| ≤ k_max and
  d = 1. The reference uses the integer box |n_a| ≤ ``k_box`` of the cell as given, which changes
  with the cell basis; here k_max is the radius of the sphere holding, on average, as many lattice
  vectors as that box: k_max = (3 M V* / 4π)^⅓ with M = Π_a (2 n_a + 1) and V* = (2π)³/V the
  reciprocal cell volume. The set and the filter (a function of |k|) then depend on the lattice
  only, so u is exactly unchanged by a change of cell basis, by moving atoms by lattice vectors
  (k·a = 2πn) and by translations (only x_j − x_i enters); rotating positions and cell together
  rotates k with them. The reference's filter is a free weight per box index instead.
* **aperiodic**: a fixed cubic grid of spacing ``delta_k`` cut at |k| ≤ ``k_cutoff`` (k_max =
  k_cutoff + delta_k/2, so the outermost grid points keep a non-zero weight), on positions centred
  on the centroid, with the reference's damping d_i = Π_a sinc(Δk x_ia / 2), sinc(t) =
  sin(πt)/(πt). The grid has axes, so the block is translation invariant but sees orientations: rotation
  invariance comes from frame averaging (FAENet), which hands the model canonical coordinates where
  the reference used an SVD frame.

Tensors are laid out per graph ([B, n_max, ·] with padding) so that the structure factor and its
way back are two batched matrix products per block; the k-set, cos/sin(k·x) and the filter basis
are computed once per forward (:meth:`EwaldStack.kspace`) and shared by all blocks. Memory is
estimated before any of this is allocated, and a k-set that would not fit ``max_memory_gb`` is a
``ConfigError`` naming the sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from frameavg.errors import ConfigError, DataError, did_you_mean
from frameavg.models.blocks import GaussianSmearing
from frameavg.precision import full_precision

VARIANTS = ("auto", "periodic", "aperiodic")
#: Scale of the reciprocal-space sum, as in the reference (keeps the update small at initialisation).
EWALD_SCALE = 0.01
#: (h + interaction + ewald) / √3: the reference's update with an Ewald block.
INV_SQRT_3 = 1.0 / math.sqrt(3.0)
#: A cell is periodic for the Ewald block when |det(cell)| exceeds this (Å³); molecules have zeros.
MIN_CELL_VOLUME = 1e-6


@dataclass(frozen=True)
class EwaldSettings:
    """The ``ewald`` section of a model.

    Attributes:
        variant: ``auto`` (periodic for graphs with a cell, aperiodic otherwise), ``periodic`` (a
            graph without a cell is a ``DataError``) or ``aperiodic``.
        k_box: periodic: index box (n_x, n_y, n_z) of the reference, which sets k_max (module
            docstring); (1, 1, 3) is the reference's OC20 SchNet/PaiNN choice (31 vectors).
        k_cutoff: aperiodic: radius of the k-set, Å⁻¹ (reference 0.4-1.0).
        delta_k: aperiodic: grid spacing, Å⁻¹ (reference 0.2).
        num_k_rbf: Gaussians of |k| / k_max feeding the filter.
        downprojection: width of the shared down-projection (reference 8-16).
        num_hidden: residual layers after the first Linear of the update MLP (reference 0-3).
        max_memory_gb: largest estimated size of the k-space tensors of one forward pass.
    """

    variant: str = "auto"
    k_box: tuple[int, int, int] = (1, 1, 3)
    k_cutoff: float = 0.4
    delta_k: float = 0.2
    num_k_rbf: int = 16
    downprojection: int = 8
    num_hidden: int = 3
    max_memory_gb: float = 4.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ConfigError(f"ewald.variant must be one of {VARIANTS}, got {self.variant!r}")
        box = tuple(self.k_box)
        if len(box) != 3 or any(int(n) != n or n < 0 for n in box) or not any(box):
            raise ConfigError(f"ewald.k_box must be three non-negative integers, not all 0, got {list(box)}")
        object.__setattr__(self, "k_box", tuple(int(n) for n in box))
        if not (self.k_cutoff > 0 and self.delta_k > 0):
            raise ConfigError(f"ewald.k_cutoff and ewald.delta_k must be positive, got {self.k_cutoff}, {self.delta_k}")
        if self.delta_k > self.k_cutoff:
            raise ConfigError(f"ewald.delta_k ({self.delta_k}) is larger than ewald.k_cutoff ({self.k_cutoff}): "
                              "the aperiodic grid would hold no k-vector")
        if self.num_k_rbf < 2 or self.downprojection < 1 or self.num_hidden < 0:
            raise ConfigError(f"ewald needs num_k_rbf >= 2, downprojection >= 1 and num_hidden >= 0, got "
                              f"{self.num_k_rbf}, {self.downprojection}, {self.num_hidden}")
        if not self.max_memory_gb > 0:
            raise ConfigError(f"ewald.max_memory_gb must be positive, got {self.max_memory_gb}")
        grid_points = (2 * int(self.k_cutoff / self.delta_k) + 1) ** 3
        if grid_points * 3 * 8 > self.max_memory_gb * 2**30:
            raise ConfigError(f"ewald: the aperiodic grid (k_cutoff {self.k_cutoff} / delta_k {self.delta_k}) would "
                              f"enumerate {grid_points:.3g} points, more than ewald.max_memory_gb = "
                              f"{self.max_memory_gb:g} holds; raise delta_k or lower k_cutoff")

    @classmethod
    def from_config(cls, config: "Mapping | EwaldSettings | None") -> "EwaldSettings | None":
        """Settings of a model's ``ewald`` argument: None/False (no Ewald), True or {} (defaults)
        or a mapping of the attributes above (an unknown key gets a "did you mean" error)."""
        if config is None or config is False:
            return None
        if isinstance(config, EwaldSettings):
            return config
        if config is True:
            return cls()
        if not isinstance(config, Mapping):
            raise ConfigError(f"ewald must be a mapping of settings (or true), got {config!r}")
        names = [f.name for f in fields(cls)]
        for key in config:
            if key not in names:
                raise ConfigError(f"unknown setting 'ewald.{key}'{did_you_mean(key, names, 'ewald.')} "
                                  f"(settings: {', '.join(names)})")
        return cls(**config)


def periodic_k_max(cell: Tensor, k_box: tuple[int, int, int]) -> Tensor:
    """k_max [B] Å⁻¹ of cells [B, 3, 3] (rows a_i, Å): the sphere holding on average as many
    reciprocal-lattice vectors as the index box ±k_box."""
    box_points = math.prod(2 * n + 1 for n in k_box)
    reciprocal_volume = (2 * math.pi) ** 3 / torch.linalg.det(cell).abs()
    return (3 * box_points * reciprocal_volume / (4 * math.pi)) ** (1.0 / 3.0)


def aperiodic_grid(k_cutoff: float, delta_k: float) -> Tensor:
    """[K, 3] Å⁻¹: the cubic grid of spacing ``delta_k`` with 0 < |k| ≤ ``k_cutoff``, half space
    (one of each ±k pair), in float64."""
    steps = int(math.floor(k_cutoff / delta_k + 1e-9))
    axis = torch.arange(-steps, steps + 1, dtype=torch.float64)
    index = torch.cartesian_prod(axis, axis, axis)
    k = index * delta_k
    keep = half_space(index) & ((k * k).sum(-1) <= k_cutoff**2 * (1 + 1e-12))
    return k[keep]


def half_space(index: Tensor) -> Tensor:
    """[..., 3] integer vectors n -> [...] bool: n is lexicographically positive (one of ±n, never 0)."""
    first, second, third = index.unbind(-1)
    return (first > 0) | ((first == 0) & (second > 0)) | ((first == 0) & (second == 0) & (third > 0))


def cosine_taper(x: Tensor) -> Tensor:
    """½(cos(πx) + 1) for x in [0, 1], 0 beyond."""
    return torch.where(x < 1, 0.5 * (torch.cos(math.pi * x.clamp(max=1)) + 1), torch.zeros_like(x))


@dataclass
class KSpace:
    """The k-space quantities of one forward pass, shared by every Ewald block.

    Attributes:
        cos, sin: [B, n_max, K] d_i cos(k·x_i), d_i sin(k·x_i) per graph (padded atoms and k: 0).
        basis: [B, K, R] RBF(|k|/k_max) of each k.
        taper: [B, K, 1] cosine taper of each k (0 for padding).
        slot: [N] position of each atom in its graph's padded rows.
        batch: [N] graph of each atom.
    """

    cos: Tensor
    sin: Tensor
    basis: Tensor
    taper: Tensor
    slot: Tensor
    batch: Tensor


class ResidualLayer(nn.Module):
    """(x + act(W2 act(W1 x))) / √2, the reference's two-layer residual layer: [N, H] -> [N, H]."""

    def __init__(self, width: int, act: Callable[[Tensor], Tensor]):
        super().__init__()
        self.act = act
        self.lin1 = nn.Linear(width, width, bias=False)
        self.lin2 = nn.Linear(width, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.act(self.lin2(self.act(self.lin1(x))))) * (1 / math.sqrt(2))


class EwaldBlock(nn.Module):
    """One Ewald update [N, H] -> [N, H] (module docstring); ``down`` is the model's shared
    down-projection (num_k_rbf -> downprojection, no bias)."""

    def __init__(self, hidden_channels: int, settings: EwaldSettings, down: nn.Linear,
                 act: Callable[[Tensor], Tensor]):
        super().__init__()
        self.down = down
        self.up = nn.Linear(settings.downprojection, hidden_channels, bias=False)
        self.pre_residual = ResidualLayer(hidden_channels, act)
        self.first = nn.Linear(hidden_channels, hidden_channels, bias=False)
        self.act = act
        self.residuals = nn.ModuleList(ResidualLayer(hidden_channels, act) for _ in range(settings.num_hidden))

    def forward(self, h: Tensor, kspace: KSpace) -> Tensor:
        g = self.pre_residual(h)
        dense = g.new_zeros(kspace.cos.shape[0], kspace.cos.shape[1], g.shape[1])
        dense = dense.index_put((kspace.batch, kspace.slot), g)  # [B, n_max, H]
        cos, sin = kspace.cos.to(g.dtype), kspace.sin.to(g.dtype)
        real = torch.bmm(cos.transpose(1, 2), dense)  # [B, K, H]
        imag = torch.bmm(sin.transpose(1, 2), dense)
        kfilter = self.up(self.down(kspace.basis.to(g.dtype))) * kspace.taper.to(g.dtype)  # [B, K, H]
        back = torch.bmm(cos, real * kfilter) + torch.bmm(sin, imag * kfilter)  # [B, n_max, H]
        u = EWALD_SCALE * back[kspace.batch, kspace.slot]
        u = self.act(self.first(u))
        for layer in self.residuals:
            u = layer(u)
        return u


class EwaldStack(nn.Module):
    """The Ewald blocks of one model (one per interaction) with their shared down-projection.

    ``kspace(pos, batch, num_graphs, cell)`` once per forward, then ``blocks[t](h, kspace)``.
    """

    def __init__(self, settings: EwaldSettings, hidden_channels: int, num_blocks: int,
                 act: Callable[[Tensor], Tensor]):
        super().__init__()
        self.settings = settings
        self.hidden_channels = hidden_channels
        self.down = nn.Linear(settings.num_k_rbf, settings.downprojection, bias=False)
        self.blocks = nn.ModuleList(EwaldBlock(hidden_channels, settings, self.down, act)
                                    for _ in range(num_blocks))
        self.rbf = GaussianSmearing(0.0, 1.0, settings.num_k_rbf)
        self.aperiodic_k_max = settings.k_cutoff + settings.delta_k / 2
        grid = aperiodic_grid(settings.k_cutoff, settings.delta_k)
        self.register_buffer("grid", grid.to(torch.get_default_dtype()), persistent=False)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def sees_orientation(self) -> bool:
        """Whether molecules may get the aperiodic variant, whose grid has axes (the model is then
        rotation invariant only through frame averaging)."""
        return self.settings.variant != "periodic"

    def __getitem__(self, index: int) -> EwaldBlock:
        return self.blocks[index]

    def kspace(self, pos: Tensor, batch: Tensor, num_graphs: int, cell: Tensor | None) -> KSpace:
        """K-space quantities of a batch: positions [N, 3] Å, graph index [N], cells [B, 3, 3] Å
        (or None: molecules). Differentiable in ``pos`` and ``cell`` (forces, stress). Computed
        without autocast: phases k·x of tens of radians need more than bf16's 8 bits."""
        with full_precision():
            return self._kspace(pos, batch, num_graphs, cell)

    def _kspace(self, pos: Tensor, batch: Tensor, num_graphs: int, cell: Tensor | None) -> KSpace:
        settings = self.settings
        if bool((batch[1:] < batch[:-1]).any()):
            raise DataError("Ewald blocks need the atoms of each graph to be contiguous (as in PyG batches)")
        counts = torch.bincount(batch, minlength=num_graphs)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(batch.shape[0], device=batch.device) - starts[batch]
        n_max = int(counts.max())
        periodic = self._periodic_graphs(cell, num_graphs, pos)
        if settings.variant == "periodic" and not bool(periodic.all()):
            graph = int(torch.nonzero(~periodic)[0])
            raise DataError(f"structure {graph} of the batch has no cell with a volume: ewald.variant 'periodic' "
                            "needs periodic structures; use variant 'auto' (aperiodic for molecules) or 'aperiodic'")
        if settings.variant == "aperiodic":
            periodic = torch.zeros_like(periodic)
        k, k_max, valid = self._k_vectors(pos, cell, periodic, num_graphs)  # [B, K, 3], [B], [B, K]
        self._check_memory(k.shape[1], num_graphs, n_max, self.hidden_channels, "the k-space tensors",
                           itemsize=pos.element_size())
        # aperiodic graphs: centred positions and the sinc damping; periodic: raw positions
        centroid = torch.zeros(num_graphs, 3, dtype=pos.dtype, device=pos.device).index_add_(0, batch, pos)
        centroid = centroid / counts.clamp(min=1).unsqueeze(-1).to(pos.dtype)
        aperiodic_atom = ~periodic[batch]
        x = torch.where(aperiodic_atom.unsqueeze(-1), pos - centroid[batch], pos)
        damping = torch.sinc(x * (settings.delta_k / 2)).prod(dim=-1)
        damping = torch.where(aperiodic_atom, damping, torch.ones_like(damping))
        phase = torch.einsum("nd,nkd->nk", x, k.index_select(0, batch))  # [N, K]
        cos = torch.cos(phase) * damping.unsqueeze(-1)
        sin = torch.sin(phase) * damping.unsqueeze(-1)
        dense_cos = cos.new_zeros(num_graphs, n_max, k.shape[1]).index_put((batch, slot), cos)
        dense_sin = sin.new_zeros(num_graphs, n_max, k.shape[1]).index_put((batch, slot), sin)
        ratio = k.norm(dim=-1) / k_max.unsqueeze(-1)  # [B, K]
        basis = self.rbf(ratio.reshape(-1)).reshape(*ratio.shape, -1)
        taper = (cosine_taper(ratio) * valid).unsqueeze(-1)
        return KSpace(cos=dense_cos, sin=dense_sin, basis=basis, taper=taper, slot=slot, batch=batch)

    @staticmethod
    def _periodic_graphs(cell: Tensor | None, num_graphs: int, like: Tensor) -> Tensor:
        if cell is None:
            return torch.zeros(num_graphs, dtype=torch.bool, device=like.device)
        volume = torch.linalg.det(cell.detach().reshape(num_graphs, 3, 3).to(torch.float64)).abs()
        return volume > MIN_CELL_VOLUME

    def _k_vectors(self, pos: Tensor, cell: Tensor | None, periodic: Tensor,
                   num_graphs: int) -> tuple[Tensor, Tensor, Tensor]:
        """Padded k-vectors [B, K, 3] Å⁻¹, k_max [B] and the mask of real ones [B, K]."""
        grid = self.grid.to(device=pos.device, dtype=pos.dtype)
        k_max = torch.full((num_graphs,), self.aperiodic_k_max, dtype=pos.dtype, device=pos.device)
        if not bool(periodic.any()):
            valid = torch.ones(num_graphs, grid.shape[0], dtype=torch.bool, device=pos.device)
            return grid.unsqueeze(0).expand(num_graphs, -1, -1), k_max, valid
        cells = cell.reshape(num_graphs, 3, 3).to(pos.dtype)
        eye = torch.eye(3, dtype=pos.dtype, device=pos.device)
        safe_cells = torch.where(periodic.view(-1, 1, 1), cells, eye)
        reciprocal = 2 * math.pi * torch.linalg.inv(safe_cells).transpose(1, 2)  # rows b_i, differentiable
        lattice_k_max = periodic_k_max(safe_cells, self.settings.k_box)
        with torch.no_grad():
            # |n_i| = |k · a_i| / 2π ≤ k_max |a_i| / 2π
            bound = torch.floor(lattice_k_max.unsqueeze(-1) * safe_cells.norm(dim=-1) / (2 * math.pi) + 1e-9)
            bound = torch.where(periodic.unsqueeze(-1), bound, torch.zeros_like(bound)).amax(dim=0).long()
            box = math.prod(2 * int(b) + 1 for b in bound)
            self._check_memory(box, num_graphs, 1, 3, "the reciprocal-lattice enumeration",
                               itemsize=pos.element_size())
            axes = [torch.arange(-int(b), int(b) + 1, device=pos.device, dtype=pos.dtype) for b in bound]
            index = torch.cartesian_prod(*axes)
            index = index[half_space(index)]  # [M, 3]
            length = torch.einsum("md,bdc->bmc", index, reciprocal.detach()).norm(dim=-1)  # [B, M]
            inside = (length <= lattice_k_max.unsqueeze(-1)) & periodic.unsqueeze(-1)
            any_aperiodic = not bool(periodic.all())
            width = max(int(inside.sum(dim=1).max()), grid.shape[0] if any_aperiodic else 1)
            # each graph's lattice vectors inside its sphere first (in a fixed order), then padding
            order = torch.sort((~inside).to(torch.int8), dim=1, stable=True).indices[:, :width]
            valid = torch.gather(inside, 1, order)
        k = torch.einsum("bmd,bdc->bmc", index[order], reciprocal)  # [B, width, 3]
        if any_aperiodic:
            pad = width - grid.shape[0]
            grid_k = nn.functional.pad(grid, (0, 0, 0, pad)).unsqueeze(0)
            grid_valid = nn.functional.pad(torch.ones(grid.shape[0], dtype=torch.bool, device=pos.device), (0, pad))
            k = torch.where(periodic.view(-1, 1, 1), k, grid_k)
            valid = torch.where(periodic.unsqueeze(-1), valid, grid_valid.unsqueeze(0))
        k = torch.where(valid.unsqueeze(-1), k, torch.zeros_like(k))
        return k, torch.where(periodic, lattice_k_max, k_max), valid

    def _check_memory(self, num_k: int, num_graphs: int, n_max: int, width: int, what: str,
                      itemsize: int = 8) -> None:
        """ConfigError before allocating when ~B·K·(n_max + width) values exceed ``max_memory_gb``."""
        # cos and sin [B, n_max, K], and per block the structure factor, filter and products [B, K, H]
        needed = num_graphs * num_k * (2 * n_max + 4 * width) * itemsize
        limit = self.settings.max_memory_gb * 2**30
        if needed > limit:
            raise ConfigError(
                f"Ewald k-space too large: {what} would need ~{needed / 2**30:.1f} GiB ({num_graphs} graphs x "
                f"{num_k} k-vectors, {n_max} atoms, width {width}) > ewald.max_memory_gb = "
                f"{self.settings.max_memory_gb:g}; lower ewald.k_box / ewald.k_cutoff or raise max_memory_gb"
            )


def ewald_kspace(stack: EwaldStack | None, inputs) -> KSpace | None:
    """The k-space of a model's ``GraphInputs`` for its Ewald blocks (None: the model has none)."""
    return None if stack is None else stack.kspace(inputs.pos, inputs.batch, inputs.num_graphs, inputs.cell)


def build_ewald(config, hidden_channels: int, num_blocks: int, act: Callable[[Tensor], Tensor]) -> EwaldStack | None:
    """The Ewald blocks of a model from its ``ewald`` argument (None: no Ewald)."""
    settings = EwaldSettings.from_config(config)
    if settings is None:
        return None
    return EwaldStack(settings, hidden_channels, num_blocks, act)


__all__ = ["EwaldBlock", "EwaldSettings", "EwaldStack", "INV_SQRT_3", "KSpace", "build_ewald", "ewald_kspace"]
