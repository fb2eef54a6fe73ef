"""The deployable pieces of a training config, without Lightning: the network, its neighbour-list
transform, and ``TrainedModel`` (network + energy normaliser: predictions in eV, eV/Å, eV/Å³).

``AtomisticTask`` (the LightningModule that trains) predicts through the same ``PhysicalOutputs``,
so a checkpoint loaded for inference (``frameavg.training.checkpoint_io``) gives its numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from frameavg.data.neighbors import RadiusGraph
from frameavg.derivatives import differentiable_inputs
from frameavg.outputs import DIRECT, DIRECT_WITH_GRADIENT_TARGET, ENERGY, FORCES, FROM_ENERGY, GRADIENT_FORCES, STRESS
from frameavg.training.config_sections import DataConfig, RunConfig
from frameavg.training.normalization import EnergyNormalizer


def build_network(config: RunConfig | dict) -> nn.Module:
    """The model of ``config.model``, wrapped in frame averaging per ``config.frames``."""
    from frameavg.models import build_model

    config = RunConfig.of(config)
    arguments = dict(config.model.arguments)  # init_from: applied by training.run.init_weights
    if config.denoise.enabled:
        arguments["denoising_head"] = True
    rng = torch.random.get_rng_state()
    model = build_model(config.model.name, **arguments)
    frames = config.frames
    if not frames.enabled:
        return model
    from frameavg.frames.averaging import FrameAveraging

    if getattr(model, "regress_forces", None) in (FROM_ENERGY, DIRECT_WITH_GRADIENT_TARGET):
        # −∂E/∂x must run through the frames: from_energy models return energies only, and the
        # gradient target of direct_with_gradient_target comes from the averaged energy (the
        # caller, ``PhysicalOutputs`` or ``Potential``, differentiates it); the direct head stays.
        # The same weights, initialised from the same random state.
        torch.random.set_rng_state(rng)
        forces = None if model.regress_forces == FROM_ENERGY else DIRECT
        model = build_model(config.model.name, **{**arguments, "regress_forces": forces})

    return FrameAveraging(model, dims=frames.dims, method=frames.train, eval_method=frames.eval,
                          seed=config.seed, canonicalizer=frames.canonicalizer, periodic=frames.periodic,
                          continuous=frames.continuous, cutoff=frames.cloud_cutoff or config.data.cutoff)


def graph_transform(data: DataConfig | dict) -> RadiusGraph:
    """The neighbour-list transform of a config's ``data`` section (training, test, predict and
    simulations all build their graphs with it). Ties at ``max_neighbors`` are kept."""
    data = data if isinstance(data, DataConfig) else DataConfig.from_dict(data, "data")
    return data.neighbors.transform()


class PhysicalOutputs:
    """Predictions of ``self.net`` (normalised units) in physical units through ``self.normalizer``.

    A mixin for ``nn.Module`` subclasses with ``net``, ``normalizer``, ``predict_forces``,
    ``predict_stress`` and ``loss_cfg`` (the config's ``loss`` section: which derivatives training
    needs), set by ``build_outputs``."""

    def build_outputs(self, config: RunConfig) -> None:
        """The network, an unfitted normaliser and the prediction settings of ``config``; the
        training records (elements, precision) start unknown."""
        self.config = config
        self.net = build_network(config)
        self.normalizer = EnergyNormalizer()
        self.predict_forces = config.targets.forces
        self.predict_stress = config.targets.stress
        self.loss_cfg = config.loss
        #: atomic numbers of the training set (saved in checkpoints; None when unknown)
        self.training_elements: list[int] | None = None
        #: {"requested", "used", "fallback"} precision of the training run (saved in checkpoints)
        self.precision_record: dict | None = None

    def normalized_outputs(self, batch, *, forces: bool | None = None, stress: bool | None = None) -> dict:
        """Network outputs in normalised units (the batch is never modified).

        ``forces``/``stress`` (default: whether they are training targets): ``gradient_forces`` =
        −∂E/∂x of the (frame-averaged) energy with respect to the original positions is computed
        when the network predicts no ``forces``, for the conservation loss, or for the gradient
        loss when the network does not supply its own (detached) ``gradient_forces``, as FAENet's
        ``direct_with_gradient_target`` does; with ``stress``, also ``virial`` and ``stress`` from
        the strain derivative.
        """
        forces = self.predict_forces if forces is None else forces
        stress = self.predict_stress if stress is None else stress
        if not (forces or stress):
            return dict(self.net(batch))
        with torch.enable_grad():
            inputs = differentiable_inputs(batch, stress=stress)
            out = dict(self.net(inputs.batch))
            loss = self.loss_cfg
            needs_own = loss.conservation_weight > 0 or (loss.gradient_weight > 0 and GRADIENT_FORCES not in out)
            if FORCES not in out or (self.training and needs_own) or stress:
                derived = inputs.derivatives(out[ENERGY], create_graph=self.training)
                out[GRADIENT_FORCES] = derived.pop(FORCES)
                out.setdefault(FORCES, out[GRADIENT_FORCES])
                out.update(derived)
        return out

    def forward(self, batch, *, forces: bool | None = None, stress: bool | None = None) -> dict:
        """Predictions in physical units: ``energy`` [B] eV (float64), ``forces`` [N,3] eV/Å,
        ``stress`` [B,3,3] eV/Å³ (``forces``/``stress`` default to the training targets)."""
        forces = self.predict_forces if forces is None else forces
        stress = self.predict_stress if stress is None else stress
        out = self.normalized_outputs(batch, forces=forces, stress=stress)
        pred = {ENERGY: self.normalizer.denormalize_energy(out[ENERGY], batch.atomic_numbers, batch.batch)}
        if forces:
            pred[FORCES] = self.normalizer.denormalize_forces(out[FORCES])
            if GRADIENT_FORCES in out and out[GRADIENT_FORCES] is not out[FORCES]:
                pred[GRADIENT_FORCES] = self.normalizer.denormalize_forces(out[GRADIENT_FORCES])
        if stress:
            pred[STRESS] = self.normalizer.denormalize_forces(out[STRESS])
        return pred


class TrainedModel(PhysicalOutputs, nn.Module):
    """A trained network and its normaliser (the inference half of ``AtomisticTask``); its
    ``state_dict`` keys (``net.*``, ``normalizer.*``) are those of a training checkpoint."""

    def __init__(self, config: RunConfig | dict):
        super().__init__()
        self.build_outputs(RunConfig.of(config))

    @property
    def device(self) -> torch.device:
        """Where the model is (the normaliser's buffers follow ``.to``)."""
        return self.normalizer.mean.device
