"""The Lightning module: any model (optionally frame-averaged), losses, normalisation, metrics.

The network predicts normalised energies (and forces in the same units per Å); the module maps
them to eV / eV/Å with its ``EnergyNormalizer``, which is saved in the checkpoint together with the
config, so a checkpoint alone rebuilds the model and predicts. Forces and stress that are not a
model head come from ``frameavg.derivatives`` (through the frames when frame-averaged).
"""

from __future__ import annotations

import math

import lightning as L
import torch

from frameavg.derivatives import voigt_to_matrix
from frameavg.errors import TrainingError
from frameavg.metrics import oc20_metrics
from frameavg.outputs import DENOISING, ENERGY, FORCES, GRADIENT_FORCES, STRESS
from frameavg.training.denoising import DenoiseSettings, denoising_loss, new_generator, noised_batch
from frameavg.training.config_sections import RunConfig
from frameavg.training.losses import energy_loss, forces_loss
from frameavg.training.network import PhysicalOutputs, build_network  # build_network: also its old place


class AtomisticTask(PhysicalOutputs, L.LightningModule):
    """Trains ``build_network(config)`` on energies and/or forces (predicts through
    ``PhysicalOutputs``, as the Lightning-free ``TrainedModel`` of a checkpoint does)."""

    def __init__(self, config: RunConfig | dict):
        super().__init__()
        config = RunConfig.of(config)
        self.save_hyperparameters({"config": config.to_dict()})  # the document: plain data in checkpoints
        self.build_outputs(config)
        #: torch threads of the training run (saved in checkpoints)
        self.threads: int | None = None
        #: weights the run started from (training.run.init_weights: path, loaded/skipped/new names)
        self.init_record: dict | None = None
        #: Noisy Nodes settings and the noise's own seeded stream (saved in checkpoints)
        self.denoise = DenoiseSettings.from_config(config)
        self.noise_generator = new_generator(self.denoise)
        #: optimiser steps of the whole schedule without a time budget (set by configure_optimizers)
        self.schedule_steps: int | None = None

    # ---- losses ------------------------------------------------------------------------------
    def compute_loss(self, batch, out: dict, *, energy: bool = True, forces: bool = True) -> dict:
        """Weighted losses of the targets (``energy``/``forces`` False: leave those out) and their
        sum ``loss``."""
        cfg = self.loss_cfg
        losses = {}
        if self.config.targets.energy and energy:
            target = self.normalizer.normalize_energy(batch.energy, batch.atomic_numbers, batch.batch)
            losses["energy"] = cfg.energy_weight * energy_loss(cfg.energy, out[ENERGY], target.to(out[ENERGY].dtype))
        if self.predict_forces and forces:
            mask = ~batch.fixed if cfg.train_on_free_atoms and "fixed" in batch else None
            target = self.normalizer.normalize_forces(batch.forces).to(out[FORCES].dtype)
            losses["forces"] = cfg.forces_weight * forces_loss(cfg.forces, out[FORCES], target, mask)
            if GRADIENT_FORCES in out and out[GRADIENT_FORCES] is not out[FORCES]:
                if cfg.gradient_weight > 0:  # direct forces follow the conservative ones
                    losses["gradient"] = cfg.gradient_weight * forces_loss(
                        cfg.forces, out[FORCES], out[GRADIENT_FORCES].detach(), mask)
                if cfg.conservation_weight > 0:  # the energy's gradient follows the reference forces
                    losses["conservation"] = cfg.conservation_weight * forces_loss(
                        cfg.forces, out[GRADIENT_FORCES], target, mask)
        if self.predict_stress:
            target = self.normalizer.normalize_forces(voigt_to_matrix(batch.stress)).to(out[STRESS].dtype)
            losses["stress"] = cfg.stress_weight * energy_loss(cfg.stress, out[STRESS], target)
        losses["loss"] = sum(losses.values()) if losses else out[ENERGY].sum() * 0.0
        return losses

    def training_step(self, batch, batch_idx):
        noised = None
        if self.denoise.enabled:
            noised = noised_batch(batch, self.denoise, self.noise_generator, self.config.data.neighbors)
        if noised is None:
            losses = self.compute_loss(batch, self.normalized_outputs(batch))
        else:
            # forces at displaced positions are unknown: a noised batch trains the energy (against
            # the clean label, or not at all) and the denoising head
            out = self.normalized_outputs(noised.batch, forces=False)
            losses = self.compute_loss(noised.batch, out, energy=self.denoise.energy_on_noised == "original",
                                       forces=False)
            if DENOISING not in out:
                raise TrainingError("denoise.mode is set but the network returned no denoising prediction")
            weight = self.denoise.weight_at(self.schedule_progress(self.global_step))
            losses["denoising"] = weight * denoising_loss(out[DENOISING], noised)
            losses["loss"] = losses["loss"] + losses["denoising"]
        if not torch.isfinite(losses["loss"]):
            raise TrainingError(
                f"non-finite training loss at step {self.global_step} ({ {k: v.item() for k, v in losses.items()} }); "
                "the last good checkpoint is kept — lower optim.lr or check the data"
            )
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=batch.num_graphs,
                      prog_bar=True, on_step=True, on_epoch=True, sync_dist=True)
        return losses["loss"]

    def validation_step(self, batch, batch_idx):
        out = self.normalized_outputs(batch)
        losses = self.compute_loss(batch, {k: v.detach() for k, v in out.items()})
        pred, target = {}, {}
        if self.config.targets.energy:  # pre-training has no labels to measure
            pred[ENERGY] = self.normalizer.denormalize_energy(out[ENERGY].detach(), batch.atomic_numbers, batch.batch)
            target[ENERGY] = batch.energy
        if self.predict_forces:
            pred[FORCES] = self.normalizer.denormalize_forces(out[FORCES].detach())
            target[FORCES] = batch.forces
        if self.predict_stress:
            pred[STRESS] = self.normalizer.denormalize_forces(out[STRESS].detach())
            target[STRESS] = voigt_to_matrix(batch.stress)
        free = ~batch.fixed if "fixed" in batch and self.config.loss.train_on_free_atoms else None
        metrics = oc20_metrics(pred, target, batch.natoms, free)
        shown = ("energy_mae_meV", "forces_mae_meV_per_A")  # on the progress bar, in meV and meV/Å
        logged = {f"val/{k}": v for k, v in losses.items()} | {f"val/{k}": v for k, v in metrics.items() if k not in shown}
        self.log_dict(logged, batch_size=batch.num_graphs, prog_bar=False, on_epoch=True, sync_dist=True)
        self.log_dict({f"val/{k}": metrics[k] for k in shown if k in metrics}, batch_size=batch.num_graphs,
                      prog_bar=True, on_epoch=True, sync_dist=True)

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self):
        cfg = self.config.optim
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        kind = cfg.scheduler  # one of OptimConfig.SCHEDULERS (checked when the config was read)
        if kind == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "monitor": cfg.monitor, "interval": "epoch"}}
        warmup, floor, warmup_fraction = cfg.warmup_steps, cfg.min_lr_ratio, cfg.warmup_fraction
        self.schedule_steps = max(1, int(self.trainer.estimated_stepping_batches))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = self.schedule_progress(step)
            if progress < warmup_fraction:  # linear from 0, over this fraction of the budget (or steps)
                return progress / warmup_fraction
            if kind == "constant":
                return 1.0
            # the cosine over what the fraction warm-up leaves: 1 where it ends, the floor at the end
            progress = (progress - warmup_fraction) / (1.0 - warmup_fraction) if warmup_fraction < 1 else 1.0
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def schedule_progress(self, step: int) -> float:
        """Fraction (0..1) of the schedule done after ``step`` optimiser steps: of the steps of
        ``max_epochs`` after the warm-up, or of the time budget (the clock that stops the run, kept
        across resumes) when there is one and it is further along: the run stops at whichever limit
        it reaches first, and ends at its final learning rate either way. The learning rate and the
        denoising weight follow it."""
        cfg = self.config.optim
        warmup = cfg.warmup_steps
        total = self.schedule_steps or max(1, int(self.trainer.estimated_stepping_batches))
        steps_done = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
        if cfg.max_time_minutes:
            return max(steps_done, min(1.0, self.training_seconds() / (60.0 * cfg.max_time_minutes)))
        return steps_done

    def training_seconds(self) -> float:
        """Seconds of training so far, on the clock of Lightning's ``Timer`` (``optim.max_time_minutes``:
        the clock that stops the run; it includes validation and resumes from checkpoints)."""
        from lightning.pytorch.callbacks import Timer

        timer = next((cb for cb in self.trainer.callbacks if isinstance(cb, Timer)), None)
        return 0.0 if timer is None else float(timer.time_elapsed("train") or 0.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        import frameavg

        checkpoint["frameavg"] = {"version": frameavg.__version__, "torch": "%s" % torch.__version__,  # plain str: TorchVersion is not weights_only-safe
                                  "training_elements": self.training_elements, "precision": self.precision_record,
                                  "threads": self.threads, "init_from": self.init_record}
        if self.denoise.enabled:  # the noise stream, so that a resumed run draws the same noise
            checkpoint["noise_generator_state"] = self.noise_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.training_elements = (checkpoint.get("frameavg") or {}).get("training_elements")
        # a resumed run keeps the record of its own (possibly different) precision
        self.precision_record = self.precision_record or (checkpoint.get("frameavg") or {}).get("precision")
        # checkpoints of earlier releases kept the frame generator's stream beside the weights;
        # it is now the extra state of the FrameAveraging module (net._extra_state)
        if "noise_generator_state" in checkpoint:
            self.noise_generator.set_state(checkpoint["noise_generator_state"])
        legacy_stream = checkpoint.pop("frame_generator_state", None)
        weights = checkpoint.get("state_dict")
        if legacy_stream is not None and weights is not None:
            weights.setdefault("net._extra_state", {"generator_state": legacy_stream})

