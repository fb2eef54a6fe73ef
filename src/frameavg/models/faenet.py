"""FAENet (Duval et al., 2023): the architecture of the original ``faenet`` package, computed with
less work, with per-graph GraphNorm, optional tags and elements up to Z = 100.

The model reads coordinates as given; rotation symmetry comes from wrapping it in frame averaging.
Constructor arguments and defaults are those of ``faenet.FAENet`` 0.1.3, and a model built with the
same arguments has the same parameters (names, shapes and count) as the original, so original
weights load through ``frameavg.models.faenet_checkpoint.load_original_state_dict``. See
``docs/faenet.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn import Embedding, Linear

from frameavg.data.neighbors import edge_vectors
from frameavg.errors import ConfigError
from frameavg.models.base import EnergyModel, GraphInputs
from frameavg.models.blocks import (
    ENVELOPES,
    Activation,
    GaussianSmearing,
    GraphIndex,
    NORMS,
    build_norm,
    edge_envelope,
    get_activation,
    inplace_activation,
    scatter_sum,
)
from frameavg.models.edge_filter import EdgePass, EdgeWorkspace, edge_pairs, filtered_message_sum
from frameavg.models.ewald import INV_SQRT_3, KSpace, build_ewald, ewald_kspace
from frameavg.models.elements import MAX_ATOMIC_NUMBER, NORMALISATION_MAX_Z, element_table
from frameavg.outputs import DENOISING, DIRECT_MODES
from frameavg.precision import full

MP_TYPES = ("simple", "updownscale", "updownscale_base", "base", "updown_local_env")
SKIP_CO = (False, "add", "concat", "concat_atom")
ENERGY_HEADS = (None, "weighted-av-initial-embeds", "weighted-av-final-embeds")

#: The paper's configurations (docs/faenet.md) as ``FAENet(**config)`` arguments (the original's names, so
#: the original package takes them too), with the cutoff (Å)
#: and neighbour cap of their data: QM9, OC20 IS2RE and S2EF.
PAPER_CONFIGS: dict[str, dict] = {
    "qm9": dict(hidden_channels=400, num_filters=480, num_interactions=5, num_gaussians=100, cutoff=6.0,
                max_num_neighbors=30, mp_type="updownscale_base", tag_hidden_channels=0, pg_hidden_channels=32,
                phys_embeds=False, energy_head=None, skip_co=False, second_layer_MLP=True, complex_mp=True),
    "is2re": dict(hidden_channels=384, num_filters=480, num_interactions=5, num_gaussians=104, cutoff=6.0,
                  max_num_neighbors=40, mp_type="base", tag_hidden_channels=64, pg_hidden_channels=64,
                  phys_embeds=True, energy_head="weighted-av-final-embeds", skip_co="concat",
                  second_layer_MLP=False, complex_mp=True),
    "s2ef": dict(hidden_channels=256, num_filters=480, num_interactions=7, num_gaussians=136, cutoff=6.0,
                 max_num_neighbors=30, mp_type="updownscale_base", tag_hidden_channels=32, pg_hidden_channels=64,
                 phys_embeds=False, energy_head="weighted-av-final-embeds", skip_co=False,
                 second_layer_MLP=False, complex_mp=True, regress_forces="direct_with_gradient_target",
                 force_decoder_type="mlp",
                 force_decoder_model_config={"mlp": {"hidden_channels": 256, "norm": "batch1d"}}),
}
FORCE_DECODERS = ("simple", "mlp", "res", "res_updown")
FORCE_DECODER_NORMS = ("batch1d", "layer", None)
#: Rows of the original period / group embeddings (periods 1..6 and groups 1..18 use their own
#: index; period 7 and the f-block "group 19" use row 0, which the original never reads).
PERIOD_ROWS = 7
GROUP_ROWS = 19
#: The original's atom embedding has rows for Z = 0..84.
ORIGINAL_MAX_ATOMIC_NUMBER = 84
NUM_TAGS = 3


def _xavier(linear: Linear) -> None:
    nn.init.xavier_uniform_(linear.weight)
    linear.bias.data.fill_(0)


def _enveloped(weight: Tensor, envelope: Tensor | None) -> Tensor:
    """Per-edge rows [E, C] times the envelope [E] (a new tensor), or ``weight`` itself for None."""
    return weight if envelope is None else weight * envelope.unsqueeze(1)


def _no_grad_path(*tensors: Tensor) -> bool:
    """True when no autograd graph is being recorded for these tensors (in-place ops are safe)."""
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


class EmbeddingBlock(nn.Module):
    """Initial atom states h [N, H] and edge states e [E, F].

    Atoms: act(Linear(concat[Z embedding, tag embedding, physical properties (fixed, or learned
    through ``phys_lin``), period embedding, group embedding])), optionally a second Linear + act.
    Edges: act(concat[Linear(rel_pos 3 -> F/2), Linear(RBF(d) -> F - F/2)]), optionally a second
    Linear + act.
    """

    def __init__(
        self,
        num_gaussians: int,
        num_filters: int,
        hidden_channels: int,
        tag_hidden_channels: int,
        pg_hidden_channels: int,
        phys_hidden_channels: int,
        phys_embeds: bool,
        act: Callable[[Tensor], Tensor],
        second_layer_MLP: bool,
        max_atomic_number: int,
    ):
        super().__init__()
        self.act = act
        self.use_tag = tag_hidden_channels > 0
        self.tag_hidden_channels = tag_hidden_channels
        self.use_pg = pg_hidden_channels > 0
        self.use_phys = bool(phys_embeds)
        self.use_mlp_phys = phys_hidden_channels > 0 and self.use_phys
        self.second_layer_MLP = second_layer_MLP
        self.max_atomic_number = max_atomic_number

        table = element_table()
        num_properties = len(table.property_names) if self.use_phys else 0
        if self.use_phys:
            properties = table.properties.to(torch.get_default_dtype())
            original_rows = properties[: NORMALISATION_MAX_Z + 1].clone()
            # As in the original, the properties are learned when phys_hidden_channels > 0. Only the
            # original's rows (Z <= 85) are parameters; Z = 86..100 keep their fixed values.
            if phys_hidden_channels > 0:
                self.phys_properties = nn.Parameter(original_rows)
            else:
                self.register_buffer("phys_properties", original_rows)
            self.register_buffer(
                "phys_properties_heavy", properties[NORMALISATION_MAX_Z + 1 :].clone(), persistent=False
            )
        if self.use_mlp_phys:
            self.phys_lin = Linear(num_properties, phys_hidden_channels)
            phys_width = phys_hidden_channels
        else:
            phys_width = num_properties

        if self.use_pg:
            self.period_embedding = Embedding(PERIOD_ROWS, pg_hidden_channels)
            self.group_embedding = Embedding(GROUP_ROWS, pg_hidden_channels)
            self.register_buffer("period_index", table.period % PERIOD_ROWS, persistent=False)
            self.register_buffer("group_index", table.group % GROUP_ROWS, persistent=False)
        if self.use_tag:
            self.tag_embedding = Embedding(NUM_TAGS, tag_hidden_channels)

        z_width = hidden_channels - tag_hidden_channels - phys_width - 2 * pg_hidden_channels
        if z_width < 0:
            raise ConfigError(
                f"hidden_channels={hidden_channels} is smaller than the tag ({tag_hidden_channels}), "
                f"physical ({phys_width}) and 2 x period/group ({pg_hidden_channels}) widths it contains"
            )
        self.emb = Embedding(max_atomic_number + 1, z_width)

        self.lin = Linear(hidden_channels, hidden_channels)
        if second_layer_MLP:
            self.lin_2 = Linear(hidden_channels, hidden_channels)

        self.lin_e1 = Linear(3, num_filters // 2)
        self.lin_e12 = Linear(num_gaussians, num_filters - num_filters // 2)
        if second_layer_MLP:
            self.lin_e2 = Linear(num_filters, num_filters)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original's initialisation (Xavier-uniform weights, zero biases where it does so)."""
        self.emb.reset_parameters()
        if self.use_mlp_phys:
            nn.init.xavier_uniform_(self.phys_lin.weight)
        if self.use_tag:
            self.tag_embedding.reset_parameters()
        if self.use_pg:
            self.period_embedding.reset_parameters()
            self.group_embedding.reset_parameters()
        _xavier(self.lin)
        _xavier(self.lin_e1)
        if self.second_layer_MLP:
            _xavier(self.lin_2)
            _xavier(self.lin_e2)

    def node_states(self, z: Tensor, tags: Tensor | None) -> Tensor:
        """h [N, H] from atomic numbers z [N] (1..100) and tags [N] (0..2, or None)."""
        # Elements beyond the learned table share row 0 (unused: there is no element 0).
        z_row = z if self.max_atomic_number >= MAX_ATOMIC_NUMBER else torch.where(
            z > self.max_atomic_number, torch.zeros_like(z), z
        )
        parts = [self.emb(z_row)]
        if self.use_tag:
            if tags is None:
                parts.append(parts[0].new_zeros(z.shape[0], self.tag_hidden_channels))
            else:
                parts.append(self.tag_embedding(tags))
        if self.use_phys:
            table = torch.cat([self.phys_properties, self.phys_properties_heavy], dim=0)
            phys = table.index_select(0, z)
            parts.append(self.phys_lin(phys) if self.use_mlp_phys else phys)
        if self.use_pg:
            parts.append(self.period_embedding(self.period_index.index_select(0, z)))
            parts.append(self.group_embedding(self.group_index.index_select(0, z)))
        h = self.act(self.lin(torch.cat(parts, dim=1)))
        if self.second_layer_MLP:
            h = self.act(self.lin_2(h))
        return h

    def edge_states(self, rel_pos: Tensor, rbf: Tensor) -> Tensor:
        """e [E, F] from edge vectors rel_pos [E, 3] (Å) and radial basis rbf [E, G]."""
        if torch.is_grad_enabled() and (rel_pos.requires_grad or self.lin_e1.weight.requires_grad):
            e = self.act(torch.cat([self.lin_e1(rel_pos), self.lin_e12(rbf)], dim=1))
            if self.second_layer_MLP:
                e = self.act(self.lin_e2(e))
            return e
        # Without autograd: both halves written into one buffer, activations in place.
        act = inplace_activation(self.act)
        half = self.lin_e1.out_features
        e = rel_pos.new_empty(rel_pos.shape[0], half + self.lin_e12.out_features)
        torch.addmm(self.lin_e1.bias, rel_pos, self.lin_e1.weight.t(), out=e[:, :half])
        torch.addmm(self.lin_e12.bias, rbf, self.lin_e12.weight.t(), out=e[:, half:])
        e = act(e)
        if self.second_layer_MLP:
            e = act(self.lin_e2(e))
        return e

    def split_edge_states(self, rel_pos: Tensor, pair_rbf: Tensor, pair_index: Tensor) -> "EdgeStates":
        """Edge states without ``second_layer_MLP``, whose distance half [P, F - F/2] is computed
        once per pair of opposite edges (rbf [P, G]) and the direction half [E, F/2] per edge."""
        direction = self.lin_e1(rel_pos)
        if torch.is_grad_enabled() and direction.requires_grad:
            direction = self.act(direction)
        else:
            direction = inplace_activation(self.act)(direction)
        return EdgeStates(direction=direction, distance=self.act(self.lin_e12(pair_rbf)), pair_index=pair_index)


@dataclass
class EdgeStates:
    """Edge states of one forward pass: either ``dense`` e [E, F], or (without a second edge
    layer) the ``direction`` half [E, F/2] per edge and the ``distance`` half [P, F - F/2] per
    pair of opposite edges, with ``pair_index`` [E]. e = concat[direction, distance[pair_index]]."""

    dense: Tensor | None = None
    direction: Tensor | None = None
    distance: Tensor | None = None
    pair_index: Tensor | None = None

    def full(self) -> Tensor:
        if self.dense is not None:
            return self.dense
        return torch.cat([self.direction, self.distance.index_select(0, self.pair_index)], dim=1)


class InteractionBlock(nn.Module):
    """One message-passing update; the model adds its output to h (residual).

    ``updownscale_base`` (and ``base``) compute the edge filter act(W [e_ij, h_j, h_i] + b) as
    act(W_e e_ij + (W_j h)[j] + (W_i h + b)[i]): the node products are computed once per atom and
    gathered per edge, so the per-edge product shrinks from (F + 2H) x C to F x C (edge_filter.py).
    """

    def __init__(
        self,
        hidden_channels: int,
        num_filters: int,
        act: Callable[[Tensor], Tensor],
        mp_type: str,
        complex_mp: bool,
        graph_norm: bool,
        norm: str = "graph",
    ):
        super().__init__()
        self.act = act
        self.mp_type = mp_type
        self.hidden_channels = hidden_channels
        self.num_filters = num_filters
        self.complex_mp = complex_mp
        self.graph_norm = (
            build_norm(norm, hidden_channels if "updown" not in mp_type else num_filters) if graph_norm else None
        )
        if mp_type == "simple":
            self.lin_h = Linear(hidden_channels, hidden_channels)
        elif mp_type == "updownscale":
            self.lin_geom = Linear(num_filters, num_filters)
            self.lin_down = Linear(hidden_channels, num_filters)
            self.lin_up = Linear(num_filters, hidden_channels)
        elif mp_type == "updownscale_base":
            self.lin_geom = Linear(num_filters + 2 * hidden_channels, num_filters)
            self.lin_down = Linear(hidden_channels, num_filters)
            self.lin_up = Linear(num_filters, hidden_channels)
        elif mp_type == "updown_local_env":
            self.lin_down = Linear(hidden_channels, num_filters)
            self.lin_geom = Linear(num_filters, num_filters)
            self.lin_up = Linear(2 * num_filters, hidden_channels)
        elif mp_type == "base":
            self.lin_geom = Linear(num_filters + 2 * hidden_channels, hidden_channels)
            self.lin_h = Linear(hidden_channels, hidden_channels)
        else:
            raise ConfigError(f"unknown mp_type {mp_type!r}; choose one of {MP_TYPES}")
        if complex_mp:
            self.other_mlp = Linear(hidden_channels, hidden_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.mp_type != "simple":
            _xavier(self.lin_geom)
        if self.complex_mp:
            _xavier(self.other_mlp)
        if "updown" in self.mp_type:
            _xavier(self.lin_up)
            _xavier(self.lin_down)
        else:
            _xavier(self.lin_h)
        if self.graph_norm is not None:
            self.graph_norm.reset_parameters()

    def forward(
        self,
        h: Tensor,
        e: "Tensor | EdgeStates",
        source: Tensor,
        target: Tensor,
        graph: GraphIndex,
        local_env: Tensor | None = None,
        edge_pass: EdgePass | None = None,
        envelope: Tensor | None = None,
    ) -> Tensor:
        """Update of h [N, H] from edge states e ([E, F] or EdgeStates); source/target [E] (j, i);
        returns [N, H].

        ``local_env`` [N, F] is the sum of e over each atom's incoming edges (updown_local_env);
        ``edge_pass``: per-forward settings (double backward, scratch buffers); ``envelope`` [E]
        (or None): the cutoff envelope, multiplying every edge's message.
        """
        act, mp_type = self.act, self.mp_type
        edges = e if isinstance(e, EdgeStates) else EdgeStates(dense=e)
        if mp_type not in ("base", "updownscale_base"):
            e = edges.full()
        if mp_type in ("base", "updownscale_base"):
            agg = self._filtered_sum(h, edges, source, target, edge_pass or EdgePass(), envelope)
        elif mp_type == "simple":
            agg = self._message_sum(h, _enveloped(e, envelope), source, target)
        elif mp_type == "updownscale":
            agg = self._message_sum(act(self.lin_down(h)), _enveloped(act(self.lin_geom(e)), envelope), source, target)
        else:  # updown_local_env
            agg = self._message_sum(act(self.lin_down(h)), _enveloped(self.lin_geom(e), envelope), source, target)
        if self.graph_norm is not None:
            agg = act(self.graph_norm(agg, graph))
        if mp_type == "updown_local_env":
            out = self.lin_up(torch.cat([agg, local_env], dim=1))
        elif "updown" in mp_type:
            out = act(self.lin_up(agg))
        else:
            out = act(self.lin_h(agg))
        if self.complex_mp:
            out = act(self.other_mlp(out))
        return out

    def _message_sum(self, x: Tensor, weight: Tensor, source: Tensor, target: Tensor) -> Tensor:
        """sum over edges j->i of x[j] * weight[e]: [N, C]."""
        message = x.index_select(0, source)
        if _no_grad_path(x, weight):
            message.mul_(weight)
        else:
            message = message * weight
        return scatter_sum(message, target, x.shape[0])

    def _filtered_sum(self, h: Tensor, edges: EdgeStates, source: Tensor, target: Tensor,
                      edge_pass: EdgePass, envelope: Tensor | None = None) -> Tensor:
        """sum_j x[j] * act(W [e_ij, h_j, h_i] + b), x = act(lin_down(h)) or h (base): [N, C]."""
        hidden, edge_width = self.hidden_channels, self.num_filters
        weight = self.lin_geom.weight  # [C, F + 2H], input order [e, h_j, h_i]
        width = weight.shape[0]
        w_source = weight[:, edge_width : edge_width + hidden]
        w_target = weight[:, edge_width + hidden :]
        zeros = self.lin_geom.bias.new_zeros(width)
        if self.mp_type == "updownscale_base":
            # One product per atom for the source term, the target term and the downscaling.
            node_weight = torch.cat([w_source, w_target, self.lin_down.weight], dim=0)
            node_bias = torch.cat([zeros, self.lin_geom.bias, self.lin_down.bias])
            p_source, p_target, down = nn.functional.linear(h, node_weight, node_bias).split(width, dim=1)
            value = self.act(down)
        else:  # base: messages carry h itself
            node_weight = torch.cat([w_source, w_target], dim=0)
            node_bias = torch.cat([zeros, self.lin_geom.bias])
            p_source, p_target = nn.functional.linear(h, node_weight, node_bias).split(width, dim=1)
            value = h
        if edges.dense is not None:
            e, w_edge, pair_term = edges.dense, weight[:, :edge_width], None
        else:  # the distance half of W_e e, once per pair of opposite edges
            half = edges.direction.shape[1]
            e, w_edge = edges.direction, weight[:, :half]
            w_pair = weight[:, half:edge_width]
            if edge_pass.workspace is not None and not (torch.is_grad_enabled() and weight.requires_grad):
                shape = (edges.distance.shape[0], width)
                pair_term = torch.mm(edges.distance, w_pair.t(), out=edge_pass.workspace.buffer("pair", shape, h))
            else:
                pair_term = nn.functional.linear(edges.distance, w_pair)
        return filtered_message_sum(
            p_source, p_target, value, e, w_edge, source, target, self.act,
            edge_pass.double_backward, edge_pass.workspace, pair_term, edges.pair_index, envelope,
        )


class OutputBlock(nn.Module):
    """Energy contribution per graph: sum over atoms of Linear(act(Linear(h))) [* alpha]."""

    def __init__(self, energy_head: str | None, hidden_channels: int, act: Callable[[Tensor], Tensor]):
        super().__init__()
        self.energy_head = energy_head
        self.act = act
        self.lin1 = Linear(hidden_channels, hidden_channels // 2)
        self.lin2 = Linear(hidden_channels // 2, 1)
        if energy_head == "weighted-av-final-embeds":
            self.w_lin = Linear(hidden_channels, 1)

    def forward(self, h: Tensor, graph: GraphIndex, alpha: Tensor | None) -> Tensor:
        """h [N, H], alpha [N, 1] or None -> [B, 1]."""
        if self.energy_head == "weighted-av-final-embeds":
            alpha = self.w_lin(h)
        out = self.lin2(self.act(self.lin1(h)))
        if alpha is not None:
            out = out * alpha
        return graph.sum(out)


class ForceDecoder(nn.Module):
    """Direct force head [N, H] -> [N, 3] (``simple``, ``mlp``, ``res``, ``res_updown``).

    Module names match the original's so its weights load unchanged. Normalisation: ``batch1d``
    (BatchNorm1d: batch statistics in training, running statistics at inference, so predictions
    do not depend on the batch in eval mode), ``layer`` (LayerNorm, per atom) or None.
    """

    def __init__(self, decoder_type: str, input_channels: int, hidden_channels: int, norm: str | None,
                 act: Callable[[Tensor], Tensor]):
        super().__init__()
        if decoder_type not in FORCE_DECODERS:
            raise ConfigError(f"unknown force_decoder_type {decoder_type!r}; choose one of {FORCE_DECODERS}")
        if norm not in FORCE_DECODER_NORMS:
            raise ConfigError(f"unknown force decoder norm {norm!r}; choose one of {FORCE_DECODER_NORMS}")
        self.type = decoder_type

        def normalisation(n: int) -> nn.Module:
            if norm == "batch1d":
                return nn.BatchNorm1d(n)
            return nn.LayerNorm(n) if norm == "layer" else nn.Identity()

        def block(n_in: int, n_out: int) -> list[nn.Module]:
            return [Linear(n_in, n_out), normalisation(n_out), Activation(act)]

        h, c = input_channels, hidden_channels
        if decoder_type == "simple":
            self.model = nn.Sequential(Linear(h, c), Activation(act), Linear(c, 3))
        elif decoder_type == "mlp":
            self.model = nn.Sequential(*block(h, c), Linear(c, 3))
        elif decoder_type == "res":
            self.mlp_1 = nn.Sequential(*block(h, h))
            self.mlp_2 = nn.Sequential(*block(h, h))
            self.mlp_3 = nn.Sequential(*block(h, c), Linear(c, 3))
        else:
            self.mlp_1 = nn.Sequential(*block(h, c))
            self.mlp_2 = nn.Sequential(*block(c, c))
            self.mlp_3 = nn.Sequential(*block(c, h))
            self.mlp_4 = nn.Sequential(*block(h, c), Linear(c, 3))

    def forward(self, h: Tensor) -> Tensor:
        if self.type == "res":
            return self.mlp_3(self.mlp_2(self.mlp_1(h)) + h)
        if self.type == "res_updown":
            return self.mlp_4(self.mlp_3(self.mlp_2(self.mlp_1(h))) + h)
        return self.model(h)


def resolve_force_decoder_config(decoder_type: str, config: Mapping | None) -> tuple[int, str | None]:
    """(hidden_channels, norm) from a flat ``{"hidden_channels", "norm"}`` dict or the original's
    nested ``{decoder_type: {...}, ...}`` form. Missing: 128 hidden channels, ``batch1d``."""
    config = dict(config or {})
    section = config.get(decoder_type)
    if isinstance(section, Mapping):
        config = dict(section)
    unknown = set(config) - {"hidden_channels", "norm"} - set(FORCE_DECODERS)
    if unknown:
        raise ConfigError(f"force_decoder_model_config: unknown key(s) {sorted(unknown)}")
    norm = config.get("norm", "batch1d")
    norm = None if norm in ("", None, "none") else norm
    hidden = int(config.get("hidden_channels", 128))
    if hidden < 1:
        raise ConfigError(f"force decoder hidden_channels must be >= 1, got {hidden}")
    return hidden, norm


def _neighbor_cap(max_neighbors: int | None, max_num_neighbors: int | None) -> int | None:
    """The neighbour cap from ``max_neighbors`` or the original's name ``max_num_neighbors``."""
    if max_num_neighbors is None:
        return max_neighbors
    if max_neighbors not in (40, max_num_neighbors):
        raise ConfigError(f"max_neighbors={max_neighbors} and max_num_neighbors={max_num_neighbors} "
                          "disagree; give one (max_num_neighbors is the original's name)")
    return max_num_neighbors


def _check_options(*, preprocess, mp_type, skip_co, energy_head, envelope, norm, num_interactions,
                   envelope_exponent, max_atomic_number) -> None:
    """``ConfigError`` for an option of ``FAENet`` outside its choices or range."""
    if preprocess not in (None, "", "pbc_preprocess", "base_preprocess"):
        raise ConfigError(
            f"preprocess={preprocess!r} is not supported: give the batch edge_index and cell_offsets "
            "(or neither, and the model builds the radius graph)"
        )
    for name, value, allowed in (
        ("mp_type", mp_type, MP_TYPES),
        ("skip_co", skip_co, SKIP_CO),
        ("energy_head", energy_head, ENERGY_HEADS),
        ("envelope", envelope, ENVELOPES),
        ("norm", norm, NORMS),
    ):
        if value not in allowed:
            raise ConfigError(f"unknown {name} {value!r}; choose one of {allowed}")
    if num_interactions < 1:
        raise ConfigError(f"num_interactions must be >= 1, got {num_interactions}")
    if isinstance(envelope_exponent, bool) or not isinstance(envelope_exponent, int) or envelope_exponent < 1:
        raise ConfigError(f"envelope_exponent must be an integer >= 1, got {envelope_exponent!r}")
    if not ORIGINAL_MAX_ATOMIC_NUMBER <= max_atomic_number <= MAX_ATOMIC_NUMBER:
        raise ConfigError(
            f"max_atomic_number must be in {ORIGINAL_MAX_ATOMIC_NUMBER}..{MAX_ATOMIC_NUMBER}, got {max_atomic_number}"
        )


class FAENet(EnergyModel):
    r"""FAENet: Frame Averaging Equivariant GNN (Duval et al., ICML 2023).

    Args (names and defaults of the original ``faenet.FAENet``):
        cutoff: neighbour cutoff, Å (used when the batch has no ``edge_index``; also the RBF range).
        act: activation, ``"swish"`` or a ``torch.nn.functional`` name, or a callable.
        preprocess: accepted for compatibility (``"pbc_preprocess"``/``"base_preprocess"``); the
            model uses the batch's ``edge_index``/``cell_offsets`` when present and otherwise builds
            the radius graph itself.
        complex_mp: extra Linear + act at the end of each interaction block.
        max_neighbors: neighbours kept per atom when the model builds the graph (the original's
            ``max_num_neighbors``, still accepted under that name).
        num_gaussians: Gaussians of the distance basis on [0, cutoff].
        num_filters: edge width F.
        hidden_channels: atom width H (total width of the atom embedding).
        tag_hidden_channels: tag embedding width (0: none). Batches without ``tags`` give zeros.
        pg_hidden_channels: period and group embedding widths (0: none).
        phys_hidden_channels: > 0 learns the physical properties and maps them through a Linear.
        phys_embeds: include the 14 physical properties of each element.
        num_interactions: interaction blocks.
        mp_type: ``simple``, ``updownscale``, ``updownscale_base``, ``base``, ``updown_local_env``.
        graph_norm: normalise after aggregation (the kind: ``norm``).
        second_layer_MLP: second Linear + act in the atom and edge embeddings.
        skip_co: ``False``, ``"add"``, ``"concat"`` or ``"concat_atom"``.
        energy_head: None, ``"weighted-av-initial-embeds"`` or ``"weighted-av-final-embeds"``.
        regress_forces: None/``""``, ``"direct"``, ``"direct_with_gradient_target"``, ``"from_energy"``
            (``frameavg.outputs.FORCE_MODES``).
        force_decoder_type: ``simple``, ``mlp``, ``res`` or ``res_updown``.
        force_decoder_model_config: ``{"hidden_channels": int, "norm": "batch1d"|"layer"|None}``,
            flat or nested under the decoder type as in the original.
        max_atomic_number: rows of the learned Z embedding (84 as the original; up to 100). Heavier
            elements share one learned row and differ by period, group and physical properties.
        denoising_head: add a denoising head (not in the original): an MLP of the final atom
            states to [N, 3] in the input coordinates; under frame averaging it is rotated back
            like forces, so its prediction is equivariant through the frames (Noisy Nodes).
        envelope: cutoff envelope (not in the original): ``"none"`` (the original), ``"polynomial"``
            (DimeNet/MACE, exponent ``envelope_exponent``: value, slope and curvature 0 at the cutoff)
            or ``"cosine"`` (SchNet). It multiplies every edge's message in every interaction block
            (and the local-environment sum of ``updown_local_env``), so an edge entering or leaving
            the cutoff changes nothing and the energy is smooth in the positions.
        envelope_exponent: p of the polynomial envelope.
        norm: the normalisation of ``graph_norm`` (``blocks.NORMS``; not in the original): ``"graph"``
            (the original's GraphNorm, per graph: ill-conditioned on crystals, whose equivalent atoms
            have ~0 feature spread) or ``"layer"`` (LayerNorm per atom, well-conditioned).
        ewald: Ewald message passing (not in the original; ``frameavg.models.ewald``): None, or the
            settings of ``EwaldSettings`` (``{}``: defaults). One Ewald block per interaction, with
            a shared down-projection; the update becomes (h + interaction + ewald) / √3.

    ``forward(batch, compute_gradient_forces=None)`` (``EnergyModel.forward``) returns
    ``{"energy": [B], "forces": [N, 3] (when forces are regressed), "gradient_forces": [N, 3]}``;
    ``gradient_forces`` (= -dE/dpos, detached) comes with ``direct_with_gradient_target`` in
    training mode, or when asked with ``compute_gradient_forces=True``.
    """

    has_direct_forces = True
    denoising_kind = "vector"
    #: Edge vectors in the input coordinates: rotations and reflections come from frame averaging.
    invariances = ("translation",)


    def __init__(
        self,
        cutoff: float = 6.0,
        act: str | Callable[[Tensor], Tensor] = "swish",
        preprocess: str | None = "pbc_preprocess",
        complex_mp: bool = False,
        max_neighbors: int | None = 40,
        num_gaussians: int = 50,
        num_filters: int = 128,
        hidden_channels: int = 128,
        tag_hidden_channels: int = 32,
        pg_hidden_channels: int = 32,
        phys_hidden_channels: int = 0,
        phys_embeds: bool = True,
        num_interactions: int = 4,
        mp_type: str = "updownscale_base",
        graph_norm: bool = True,
        second_layer_MLP: bool = True,
        skip_co: str | bool = "concat",
        energy_head: str | None = None,
        regress_forces: str | None = None,
        force_decoder_type: str | None = "mlp",
        force_decoder_model_config: Mapping | None = None,
        max_atomic_number: int = ORIGINAL_MAX_ATOMIC_NUMBER,
        *,
        max_num_neighbors: int | None = None,
        denoising_head: bool = False,
        ewald: Mapping | None = None,
        envelope: str = "none",
        envelope_exponent: int = 5,
        norm: str = "graph",
    ):
        max_neighbors = _neighbor_cap(max_neighbors, max_num_neighbors)
        regress_forces = None if regress_forces in ("", False) else regress_forces
        super().__init__(cutoff, max_neighbors, regress_forces, max_z=MAX_ATOMIC_NUMBER)
        skip_co = False if skip_co in (None, "", False) else skip_co
        energy_head = None if energy_head in ("", False) else energy_head
        _check_options(preprocess=preprocess, mp_type=mp_type, skip_co=skip_co, energy_head=energy_head,
                       envelope=envelope, norm=norm, num_interactions=num_interactions,
                       envelope_exponent=envelope_exponent, max_atomic_number=max_atomic_number)
        if mp_type == "simple":
            num_filters = hidden_channels  # the filter multiplies h directly

        self.hidden_channels = hidden_channels
        self.num_filters = num_filters
        self.num_interactions = num_interactions
        self.mp_type = mp_type
        self.skip_co = skip_co
        self.energy_head = energy_head
        self.envelope = envelope
        self.envelope_exponent = envelope_exponent
        self.norm_kind = norm if graph_norm else None
        self.uses_tags = tag_hidden_channels > 0
        self.force_decoder_type = force_decoder_type
        self.max_atomic_number = max_atomic_number
        self.act = get_activation(act)
        # Without a second edge layer, the distance half of the edge state is shared by the two
        # directions of an edge; the filter blocks then compute its product once per pair.
        self.pair_edge_states = not second_layer_MLP and mp_type in ("base", "updownscale_base")

        self.distance_expansion = GaussianSmearing(0.0, self.cutoff, num_gaussians)
        self.embed_block = EmbeddingBlock(
            num_gaussians, num_filters, hidden_channels, tag_hidden_channels, pg_hidden_channels,
            phys_hidden_channels, phys_embeds, self.act, second_layer_MLP, max_atomic_number,
        )
        self.interaction_blocks = nn.ModuleList(
            InteractionBlock(hidden_channels, num_filters, self.act, mp_type, complex_mp, graph_norm, norm)
            for _ in range(num_interactions)
        )
        self.ewald = build_ewald(ewald, hidden_channels, num_interactions, self.act)
        self.output_block = OutputBlock(energy_head, hidden_channels, self.act)
        if energy_head == "weighted-av-initial-embeds":
            self.w_lin = Linear(hidden_channels, 1)
        self._build_heads(force_decoder_model_config, denoising_head)

    def _build_heads(self, force_decoder_model_config: Mapping | None, denoising_head: bool) -> None:
        """The direct force decoder, the denoising head and the skip-connection mixer (as options ask)."""
        hidden, interactions = self.hidden_channels, self.num_interactions
        self.decoder = None
        if self.regress_forces in DIRECT_MODES:
            decoder_hidden, decoder_norm = resolve_force_decoder_config(
                self.force_decoder_type, force_decoder_model_config
            )
            self.decoder = ForceDecoder(self.force_decoder_type, hidden, decoder_hidden, decoder_norm, self.act)
        self.denoising_head = ForceDecoder("mlp", hidden, hidden, None, self.act) if denoising_head else None
        if self.skip_co == "concat":
            self.mlp_skip_co = Linear(interactions + 1, 1)
        elif self.skip_co == "concat_atom":
            self.mlp_skip_co = Linear((interactions + 1) * hidden, hidden)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ forward
    def energy(self, inputs: GraphInputs, direct_forces: bool) -> tuple[Tensor, Tensor | None]:
        """Energy [B] and, when ``direct_forces``, the force decoder's forces [N, 3]."""
        graph = GraphIndex.from_batch(inputs.batch, inputs.atomic_numbers.shape[0], inputs.num_graphs,
                                      like=inputs.pos)
        edge_pass = EdgePass(double_backward=inputs.create_graph,
                             workspace=None if torch.is_grad_enabled() else EdgeWorkspace())
        kspace = ewald_kspace(self.ewald, inputs)
        energy, h = self.energy_and_states(inputs.atomic_numbers, inputs.tags, inputs.pos, inputs.edge_index,
                                           inputs.cell_offsets, inputs.cell, graph, edge_pass, kspace)
        forces = self.decoder(h) if direct_forces else None
        if inputs.denoising and self.denoising_head is not None:
            return energy, forces, {DENOISING: self.denoising_head(h)}
        return energy, forces

    def energy_and_states(
        self,
        z: Tensor,
        tags: Tensor | None,
        pos: Tensor,
        edge_index: Tensor,
        cell_offsets: Tensor | None,
        cell: Tensor | None,
        graph: GraphIndex,
        edge_pass: EdgePass | None = None,
        kspace: KSpace | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Energy [B] and final atom states [N, H] (the input of the force decoder); ``kspace``:
        the Ewald blocks' k-space quantities (``self.ewald.kspace``) when the model has them."""
        rel_pos = edge_vectors(pos, edge_index, cell_offsets, cell, graph.batch)
        embed = self.embed_block
        h = embed.node_states(z, tags)
        if self.pair_edge_states:
            pair_index, representative = edge_pairs(edge_index, cell_offsets, h.shape[0])
            pair_rbf = self.distance_expansion(rel_pos.index_select(0, representative).norm(dim=-1))
            e = embed.split_edge_states(rel_pos, pair_rbf, pair_index)
        else:
            e = embed.edge_states(rel_pos, self.distance_expansion(rel_pos.norm(dim=-1)))
        source, target = edge_index[0], edge_index[1]
        envelope = edge_envelope(rel_pos.norm(dim=-1), self.cutoff, self.envelope, self.envelope_exponent)
        local_env = None  # updown_local_env has dense edge states e [E, F]
        if self.mp_type == "updown_local_env":
            local_env = scatter_sum(_enveloped(e, envelope), target, h.shape[0])
        alpha = self.w_lin(h) if self.energy_head == "weighted-av-initial-embeds" else None

        skip = []
        for index, block in enumerate(self.interaction_blocks):
            if self.skip_co == "concat_atom":
                skip.append(h)
            elif self.skip_co:
                skip.append(self.output_block(h, graph, alpha))
            if kspace is None:
                h = h + block(h, e, source, target, graph, local_env, edge_pass, envelope)
            else:
                h = (h + block(h, e, source, target, graph, local_env, edge_pass, envelope)
                     + self.ewald[index](h, kspace)) * INV_SQRT_3
        if self.skip_co == "concat_atom":
            skip.append(h)
            h = self.act(self.mlp_skip_co(torch.cat(skip, dim=1)))
        energy = self.output_block(h, graph, alpha)
        if self.skip_co == "concat":
            skip.append(energy)
            energy = self.mlp_skip_co(torch.cat(skip, dim=1))
        elif self.skip_co == "add":
            skip.append(energy)
            energy = torch.stack(skip, dim=0).sum(dim=0)
        return full(energy).view(-1), h  # float32 also under autocast (mlp_skip_co is a product)
