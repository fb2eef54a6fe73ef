"""Typed training configuration: one frozen dataclass per section, the one place that defines
every key's default, type, range, unit and meaning.

A config has two forms. The *document* is a nested mapping: what a YAML file and ``a.b=value``
overrides give (``training.config.load_config``) and what a checkpoint saves. ``RunConfig`` is the
typed, validated form the code reads (``RunConfig.from_dict(document)``; ``to_dict()`` gives the
document back). Every key of a section is a dataclass field whose metadata holds its rule, unit
and one-line description; an unknown key is a ``ConfigError`` with a did-you-mean hint.

Checks across sections: ``RunConfig.check`` (no model imports: warm-up spellings, precision vs.
device) when the config is read, and ``RunConfig.check_model`` (imports the model registry: the
model's arguments, its cutoff vs. the neighbour list's, its invariances vs. the frames, its
denoising head) before a run builds anything.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

from frameavg.data.neighbors import MAX_EDGES_PER_ATOM, NeighborSettings
from frameavg.errors import ConfigError, did_you_mean
from frameavg.frames.methods import FRAME_DIMS as _FA_DIMS, METHODS as _FA_METHODS, PERIODIC_FRAMES
from frameavg.frames.methods import SAMPLED as _FA_SAMPLED
from frameavg.precision import ACCEPTED as PRECISION_NAMES

NO_FRAMES = "none"
FRAME_DIMS = (*_FA_DIMS, NO_FRAMES)
FRAME_METHODS = (*_FA_METHODS, *_FA_SAMPLED)  # frameavg.frames.methods: the one list of frame methods


# ---- rules: the type and range of one key ---------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """What one key accepts: ``kind`` (int, float, choice, bool, str, map, str_list,
    bool_or_path), an inclusive range (``low`` exclusive with ``open_low``), ``options`` of a
    choice, and whether None is allowed."""

    kind: str
    low: float | None = None
    high: float | None = None
    none: bool = False
    open_low: bool = False
    options: tuple = ()

    def check(self, value, name: str):
        """``value`` in its canonical form (``10.0`` -> 10 for ints, ``"1e-3"`` -> 0.001 for
        floats); ``ConfigError`` naming ``name`` when it does not fit."""
        if value is None and (self.none or self.kind in ("map", "str_list")):
            return {} if self.kind == "map" else [] if self.kind == "str_list" else None
        return getattr(self, f"_check_{self.kind}")(value, name)

    def _check_bool(self, value, name):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value

    def _check_bool_or_path(self, value, name):
        if not (isinstance(value, bool) or (isinstance(value, str) and value)):
            raise ConfigError(f"{name} must be true, false or a file of isolated-atom energies, got {value!r}")
        return value

    def _check_str(self, value, name):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
        return value

    def _check_map(self, value, name):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        return dict(value)

    def _check_str_list(self, value, name):
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                not all(isinstance(item, str) and item.strip() for item in value):
            hint = f"; write [{value}]" if isinstance(value, str) and value.strip() else ""
            raise ConfigError(f"{name} must be a list of module names (non-empty strings), got {value!r}{hint}")
        return [item.strip() for item in value]

    def _check_choice(self, value, name):
        if isinstance(value, int) and not isinstance(value, bool) and str(value) in self.options:
            return str(value)  # frames.train: 2 (k random frames) written as a number
        if value not in self.options:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, self.options))}, got {value!r}"
                              f"{did_you_mean(value, self.options)}")
        return value

    def _check_int(self, value, name):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer{self._range()}, got {value!r}")
        return self._in_range(value, name)

    def _check_float(self, value, name):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise ConfigError(f"{name} must be a number{self._range()}, got {value!r}")
        return self._in_range(float(value), name)

    def _check_devices(self, value, name):
        if isinstance(value, (str, list)) or (isinstance(value, int) and not isinstance(value, bool) and value != 0):
            return value
        raise ConfigError(f"{name} must be a positive integer, -1, 'auto' or a list, got {value!r}")

    def _in_range(self, value, name):
        if self.open_low and self.low is not None and value <= self.low:
            raise ConfigError(f"{name} must be > {self.low:g}, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(f"{name} must be{self._range()}, got {value!r}")
        return value

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f" in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f" {'>' if self.open_low else '>='} {self.low:g}"
        return ""


def integer(low=None, high=None, *, none=False) -> Rule:
    return Rule("int", low, high, none)


def number(low=None, high=None, *, none=False, open_low=False) -> Rule:
    return Rule("float", low, high, none, open_low)


def choice(*options, none=False) -> Rule:
    return Rule("choice", none=none, options=tuple(options))


BOOL, TEXT, TEXT_OR_NONE, MAPPING = Rule("bool"), Rule("str"), Rule("str", none=True), Rule("map")
BOOL_OR_PATH, TEXT_LIST = Rule("bool_or_path"), Rule("str_list")


def setting(default, rule: Rule, doc: str, unit: str | None = None, written_as: str | None = None):
    """A section field: its default, ``Rule``, one-line meaning and unit (Å, eV, ...);
    ``written_as``: how a document writes the field's keys when not under its own name (the
    model's arguments sit beside ``model.name``)."""
    metadata = {"rule": rule, "doc": doc, "unit": unit, "written_as": written_as}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# ---- sections -------------------------------------------------------------------------------
class Section:
    """Base of the typed sections: ``from_dict`` (validated), ``to_dict`` and ``describe``."""

    section: ClassVar[str]

    @classmethod
    def from_dict(cls, mapping: Mapping | None, where: str = "config"):
        """The section of a document's mapping; missing keys take their defaults."""
        mapping = cls._mapping(mapping, where)
        known = {item.name: item for item in fields(cls)}
        values = {}
        for key, value in mapping.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown config key '{cls.section}.{key}'"
                                  f"{did_you_mean(key, known, cls.section + '.')}")
            values[key] = known[key].metadata["rule"].check(value, f"{where}: '{cls.section}.{key}'")
        section = cls(**values)
        section.check(where)
        return section

    @classmethod
    def _mapping(cls, mapping, where) -> dict:
        if mapping is None:
            return {}
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"{where}: '{cls.section}' must be a mapping, got {mapping!r}")
        return dict(mapping)

    def check(self, where: str) -> None:
        """Checks across the keys of this section (``ConfigError``)."""

    def to_dict(self) -> dict:
        """The section as a document mapping (a deep copy)."""
        return {item.name: copy.deepcopy(getattr(self, item.name)) for item in fields(self)}

    @classmethod
    def describe(cls) -> list[dict]:
        """Every key: ``{"key", "default", "unit", "doc"}`` (for docs and ``--help``)."""
        return [{"key": item.metadata["written_as"] or f"{cls.section}.{item.name}", "default": getattr(cls(), item.name),
                 "unit": item.metadata["unit"], "doc": item.metadata["doc"]} for item in fields(cls)]


@dataclass(frozen=True)
class FramesConfig(Section):
    """``frames``: how the model is frame-averaged."""

    section: ClassVar[str] = "frames"
    dims: str = setting("3D", choice(*FRAME_DIMS), "3D | 2D (PCA in x,y: slabs) | none (no frame averaging)")
    train: str = setting("stochastic", choice(*FRAME_METHODS), "frame method in training")
    eval: str = setting("all", choice(*FRAME_METHODS), "frame method in validation, test and predict")
    periodic: str = setting("lattice", choice(*PERIODIC_FRAMES),
                            "frames of periodic graphs: lattice | lattice-symmetric | cloud (docs/frames.md)")
    continuous: bool = setting(True, BOOL, "weighted frames whose average is continuous in the positions")
    canonicalizer: dict = setting({}, MAPPING, "options of the learned canonicaliser (frames.learned)")
    cloud_cutoff: float | None = setting(None, number(0.0, none=True, open_low=True),
                                         "radius of the periodic frame cloud (None: data.cutoff)", "Å")

    @property
    def enabled(self) -> bool:
        """Whether the model is frame-averaged (``dims`` is not ``none``)."""
        return self.dims != NO_FRAMES


@dataclass(frozen=True)
class DataConfig(Section):
    """``data``: where the structures are and how batches and neighbour lists are built."""

    section: ClassVar[str] = "data"
    train: str | None = setting(None, TEXT_OR_NONE, "path (or shipped:NAME) of the training structures")
    val: str | None = setting(None, TEXT_OR_NONE, "path, or None to split val_fraction off the training set")
    test: str | None = setting(None, TEXT_OR_NONE, "path, or None (see test_fraction)")
    val_fraction: float = setting(0.1, number(0.0, 1.0), "fraction of the training file held out for validation")
    test_fraction: float = setting(0.0, number(0.0, 1.0), "fraction split off for testing when test is None")
    split_seed: int = setting(0, integer(), "seed of the random split")
    max_train: int | None = setting(None, integer(1, none=True), "keep the first N training structures (shuffled)")
    format: str | None = setting(None, TEXT_OR_NONE, "reader name (None: from the file)")
    keys: dict = setting({}, MAPPING, "{our_field: key_in_file}, e.g. {energy: U0}")
    options: dict = setting({}, MAPPING, "reader-specific options, e.g. {targets: [U0]} for QM9")
    trusted: bool = setting(False, BOOL, "allow pickled legacy OC20 LMDBs")
    cutoff: float = setting(6.0, number(0.0, open_low=True), "neighbour-list radius", "Å")
    max_neighbors: int | None = setting(None, integer(1, none=True), "nearest neighbours kept per atom (None: all)")
    batch_size: int = setting(32, integer(1), "training structures per batch")
    eval_batch_size: int = setting(64, integer(1), "upper bound of evaluation batches (cut to the memory budget)")
    num_workers: int = setting(0, integer(0), "data-loader worker processes")
    max_edges_per_atom: float | None = setting(MAX_EDGES_PER_ATOM, number(0.0, none=True, open_low=True),
                                               "memory guard of the neighbour lists (data.neighbors)")
    memory_fraction: float = setting(0.5, number(0.0, 1.0, open_low=True),
                                     "fraction of the available memory one batch may use (data.budget)")

    @property
    def neighbors(self) -> NeighborSettings:
        """The neighbour-list settings every graph of this run is built with (ties kept)."""
        return NeighborSettings(self.cutoff, self.max_neighbors, strict=False,
                                max_edges_per_atom=self.max_edges_per_atom)


@dataclass(frozen=True)
class TargetsConfig(Section):
    """``targets``: what the model is trained to predict."""

    section: ClassVar[str] = "targets"
    energy: bool = setting(True, BOOL, "total energy (eV)")
    forces: bool = setting(False, BOOL, "forces (eV/Å)")
    stress: bool = setting(False, BOOL, "stress (eV/Å³)")

    @property
    def enabled(self) -> tuple[str, ...]:
        """The names of the targets that are on (the labels training needs)."""
        return tuple(item.name for item in fields(self) if getattr(self, item.name))


@dataclass(frozen=True)
class DenoiseConfig(Section):
    """``denoise``: auxiliary denoising (Noisy Nodes, Godwin et al. 2022), training batches only;
    see docs/denoising.md."""

    section: ClassVar[str] = "denoise"
    mode: str = setting("none", choice("none", "noisy_nodes"), "none | noisy_nodes")
    sigma: float = setting(0.1, number(0.0, open_low=True), "std of the Gaussian noise on the positions", "Å")
    prob: float = setting(1.0, number(0.0, 1.0, open_low=True), "fraction of training batches that are noised")
    corrupt_ratio: float = setting(1.0, number(0.0, 1.0, open_low=True),
                                   "fraction of the free atoms of a noised batch that move")
    weight: float = setting(0.1, number(0.0), "loss weight at the start")
    weight_final: float | None = setting(None, number(0.0, none=True),
                                         "weight at the end of the schedule, linear (None: constant)")
    target: str = setting("noise", choice("noise", "relaxed"),
                          "noise: predict eps/sigma | relaxed: predict pos_relaxed - noised pos (Å)")
    energy_on_noised: str = setting("original", choice("original", "skip"),
                                    "original: energy loss against the clean label | skip")
    seed: int | None = setting(None, integer(none=True), "seed of the noise generator (None: the run's seed)")

    @classmethod
    def from_config(cls, config) -> "DenoiseConfig":
        """The run's denoising settings, the seed resolved (None: the run's ``seed``)."""
        run = RunConfig.of(config)
        return run.denoise if run.denoise.seed is not None else dataclasses.replace(run.denoise, seed=run.seed)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def weight_at(self, progress: float) -> float:
        """Loss weight after ``progress`` (0..1) of the schedule: linear from ``weight`` to
        ``weight_final`` (constant when that is None)."""
        final = self.weight if self.weight_final is None else self.weight_final
        return self.weight + (final - self.weight) * min(max(progress, 0.0), 1.0)


@dataclass(frozen=True)
class LossConfig(Section):
    """``loss``: the training loss, a weighted sum of per-target terms."""

    section: ClassVar[str] = "loss"
    energy: str = setting("mae", choice("mae", "mse"), "energy loss")
    forces: str = setting("l2mae", choice("l2mae", "mae", "mse"), "force loss")
    energy_weight: float = setting(1.0, number(0.0), "weight of the energy loss")
    forces_weight: float = setting(100.0, number(0.0), "weight of the force loss")
    gradient_weight: float = setting(0.0, number(0.0),
                                     "direct forces vs -dE/dx of the model (direct_with_gradient_target)")
    conservation_weight: float = setting(0.0, number(0.0), "-dE/dx of the model vs the reference forces")
    stress: str = setting("mae", choice("mae", "mse"), "stress loss over the 9 components")
    stress_weight: float = setting(1.0, number(0.0), "weight of the stress loss")
    train_on_free_atoms: bool = setting(True, BOOL, "force losses and metrics over free (not fixed) atoms")


@dataclass(frozen=True)
class NormalizeConfig(Section):
    """``normalize``: the energy normaliser fitted on the training set."""

    section: ClassVar[str] = "normalize"
    energy: bool = setting(True, BOOL, "normalise energies")
    element_references: bool | str = setting(True, BOOL_OR_PATH,
                                             "fit per-element references, or a file of isolated-atom energies")
    mean: float | None = setting(None, number(none=True), "energy mean (None: fitted)", "eV/atom")
    std: float | None = setting(None, number(0.0, none=True, open_low=True),
                                "scale (None: the training force RMS with forces, else the energy residual std)",
                                "eV")


@dataclass(frozen=True)
class OptimConfig(Section):
    """``optim``: optimiser, schedule, and when training stops."""

    section: ClassVar[str] = "optim"
    SCHEDULERS: ClassVar[tuple] = ("cosine", "plateau", "constant")
    lr: float = setting(1e-3, number(0.0, open_low=True), "peak learning rate (AdamW)")
    weight_decay: float = setting(0.0, number(0.0), "AdamW weight decay")
    scheduler: str = setting("cosine", choice(*SCHEDULERS), "cosine | plateau | constant")
    warmup_steps: int = setting(0, integer(0), "linear warm-up, optimiser steps")
    warmup_fraction: float = setting(0.0, number(0.0, 1.0),
                                     "or the warm-up as a fraction of the schedule (of the time budget if any)")
    min_lr_ratio: float = setting(0.01, number(0.0, 1.0), "final learning rate / peak (cosine)")
    plateau_patience: int = setting(5, integer(0), "epochs without improvement before a plateau step")
    plateau_factor: float = setting(0.5, number(0.0, 1.0, open_low=True), "learning-rate factor of a plateau step")
    clip_grad: float | None = setting(10.0, number(0.0, none=True), "gradient-norm clip (None: off)")
    ema_decay: float | None = setting(None, number(0.0, 1.0, none=True, open_low=True),
                                      "exponential moving average of the weights (None: off)")
    max_epochs: int = setting(10, integer(1), "epochs")
    max_time_minutes: float | None = setting(None, number(0.0, none=True, open_low=True),
                                             "time budget of the run (None: none)", "min")
    budget_clock: str = setting("wall", choice("wall", "cpu"),
                                "clock of the budget: wall, or this process's CPU time (runs sharing cores)")
    max_val_time_fraction: float = setting(0.1, number(0.0, 1.0, open_low=True),
                                           "with a time budget: validation takes at most this fraction")
    early_stopping_patience: int | None = setting(None, integer(1, none=True), "validations without improvement")
    monitor: str = setting("val/loss", TEXT, "metric of early stopping, plateau and the best checkpoint")

    def check(self, where: str) -> None:
        if self.warmup_steps and self.warmup_fraction:
            raise ConfigError(f"{where}: set one of 'optim.warmup_steps' and 'optim.warmup_fraction', not both")


@dataclass(frozen=True)
class TrainerConfig(Section):
    """``trainer``: the Lightning trainer. Keys beyond these go to ``lightning.Trainer`` as given
    (``lightning``)."""

    section: ClassVar[str] = "trainer"
    accelerator: str = setting("cpu", TEXT, "cpu | gpu | cuda | auto (Lightning)")
    devices: Any = setting(1, Rule("devices"), "devices per node: a positive integer, -1, 'auto' or a list")
    strategy: str = setting("auto", TEXT, "Lightning strategy (auto, ddp, ...)")
    num_nodes: int = setting(1, integer(1), "nodes")
    precision: str = setting("32-true", choice(*PRECISION_NAMES), "64-true | 32-true | bf16-mixed | 16-mixed")
    log_every_n_steps: int = setting(10, integer(1), "logging interval, steps")
    enable_progress_bar: bool = setting(True, BOOL, "progress bar on a terminal")
    checkpoint_every_n_steps: int | None = setting(None, integer(1, none=True), "also save mid-epoch (resume)")
    threads: int | None = setting(None, integer(1, none=True), "torch threads per process (None: the free cores)")
    lightning: dict = setting({}, MAPPING, "other lightning.Trainer arguments, written beside the keys above",
                              written_as="trainer.<lightning.Trainer argument>")

    @classmethod
    def from_dict(cls, mapping: Mapping | None, where: str = "config") -> "TrainerConfig":
        mapping = cls._mapping(mapping, where)
        known = {item.name for item in fields(cls)}
        extra = {key: mapping.pop(key) for key in list(mapping) if key not in known}
        section = super().from_dict(mapping, where)
        return dataclasses.replace(section, lightning={**section.lightning, **extra}) if extra else section

    def to_dict(self) -> dict:
        out = super().to_dict()
        extra = out.pop("lightning")
        return {**out, **extra}


@dataclass(frozen=True)
class ModelConfig(Section):
    """``model``: the registered model ``name`` and its constructor ``arguments`` (written beside
    ``name`` in the document), checked against the constructor by ``RunConfig.check_model``."""

    section: ClassVar[str] = "model"
    name: str = setting("faenet", TEXT, "registered model (frameavg.models.MODELS)")
    init_from: str | None = setting(None, TEXT_OR_NONE, "checkpoint whose matching weights start the run")
    arguments: dict = setting({}, MAPPING, "the model constructor's arguments, written beside model.name",
                              written_as="model.<constructor argument>")

    @classmethod
    def from_dict(cls, mapping: Mapping | None, where: str = "config") -> "ModelConfig":
        mapping = cls._mapping(mapping, where)
        name = TEXT.check(mapping.pop("name", "faenet"), f"{where}: 'model.name'")
        init_from = TEXT_OR_NONE.check(mapping.pop("init_from", None), f"{where}: 'model.init_from'")
        return cls(name=name.lower(), init_from=init_from, arguments=mapping)

    def to_dict(self) -> dict:
        out = {"name": self.name, **copy.deepcopy(self.arguments)}
        if self.init_from is not None:
            out["init_from"] = self.init_from
        return out

    def with_defaults(self, defaults: Mapping[str, Mapping[str, Any]]) -> "ModelConfig":
        """This section with ``defaults[name]`` added where an argument is missing."""
        missing = {k: v for k, v in defaults.get(self.name, {}).items() if k not in self.arguments}
        return dataclasses.replace(self, arguments={**self.arguments, **missing}) if missing else self


#: Model arguments whose default for new runs is not the constructor's (which reproduces the
#: original package): FAENet with a smooth cutoff envelope and a per-atom LayerNorm (docs/faenet.md).
NEW_RUN_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"faenet": {"envelope": "polynomial", "norm": "layer"}}
#: What a checkpoint's saved config without these keys was trained with.
SAVED_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"faenet": {"envelope": "none", "norm": "graph"}}
#: Keys a checkpoint's saved config may lack, with the value it was trained with (not today's
#: default): frames of earlier releases were PCA frames of the cloud, plain frame sets, and a
#: 6 Å cloud whatever the data cutoff.
SAVED_DEFAULTS: dict[str, Any] = {"frames.periodic": "cloud", "frames.continuous": False,
                                  "frames.cloud_cutoff": 6.0}


@dataclass(frozen=True)
class RunConfig:
    """A training run's whole configuration, typed and validated (see the module docstring)."""

    name: str = setting("run", TEXT, "run name: the run goes to run_dir/name")
    seed: int = setting(0, integer(), "seed of the weights, the frames and the batches")
    run_dir: str = setting("runs", TEXT, "folder of the runs")
    plugins: list = setting([], TEXT_LIST, "modules imported first (they register models and readers)")
    model: ModelConfig = field(default_factory=ModelConfig)
    frames: FramesConfig = field(default_factory=FramesConfig)
    data: DataConfig = field(default_factory=DataConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    #: {name: section class} of the fields that are sections (set below, from the fields)
    SECTIONS: ClassVar[dict[str, type]]

    @classmethod
    def from_dict(cls, document: Mapping, where: str = "config") -> "RunConfig":
        """The typed config of a document (missing keys: defaults; ``ConfigError`` otherwise)."""
        if not isinstance(document, Mapping):
            raise ConfigError(f"{where}: a config must be a mapping, got {type(document).__name__}")
        scalars = {item.name: item for item in fields(cls) if item.name not in cls.SECTIONS}
        values = {}
        for key, value in document.items():
            if key in cls.SECTIONS:
                values[key] = cls.SECTIONS[key].from_dict(value, where)
            elif key in scalars:
                values[key] = scalars[key].metadata["rule"].check(value, f"{where}: '{key}'")
            else:
                raise ConfigError(f"{where}: unknown config key '{key}'"
                                  f"{did_you_mean(key, [*scalars, *cls.SECTIONS])}")
        config = cls(**values)
        config.check(where)
        return config

    @classmethod
    def of(cls, config: "RunConfig | Mapping", where: str = "config") -> "RunConfig":
        """``config`` itself, or the typed form of a document."""
        return config if isinstance(config, RunConfig) else cls.from_dict(config, where)

    def to_dict(self) -> dict:
        """The document (what YAML files and checkpoints hold)."""
        out = {}
        for item in fields(self):
            value = getattr(self, item.name)
            out[item.name] = value.to_dict() if isinstance(value, Section) else copy.deepcopy(value)
        return out

    def replace(self, **sections) -> "RunConfig":
        """A copy with sections or scalars replaced (``config.replace(data=...)``)."""
        return dataclasses.replace(self, **sections)

    def check(self, where: str = "config") -> None:
        """Checks across sections that need no model: precision vs. device."""
        accelerator = str(self.trainer.accelerator).lower()
        if self.trainer.precision in ("16-mixed", "16") and accelerator == "cpu":
            raise ConfigError(f"{where}: trainer.precision 16-mixed (float16) needs a CUDA device but "
                              "trainer.accelerator is cpu; use bf16-mixed or 32-true")

    def check_model(self, where: str = "config") -> None:
        """Imports the ``plugins`` and the model registry; checks the model's name and arguments,
        its cutoff against ``data.cutoff``, its invariances against ``frames`` and its denoising
        head against ``denoise`` (``ConfigError``; a ``UserWarning`` where a run works but wastes)."""
        from frameavg.plugins import import_plugins

        import_plugins(self.plugins, where=where)
        model_class = _model_class(self.model, where)
        _check_arguments(self.model, model_class, where)
        if self.model.init_from is not None and not Path(str(self.model.init_from)).is_file():
            raise ConfigError(f"{where}: model.init_from: checkpoint not found: {self.model.init_from}")
        if self.denoise.enabled and getattr(model_class, "denoising_kind", None) is None:
            from frameavg.models import MODELS

            supported = sorted(key for key, cls in MODELS.items() if getattr(cls, "denoising_kind", None))
            raise ConfigError(f"{where}: denoise.mode: model '{self.model.name}' has no denoising head "
                              f"(models with one: {', '.join(supported)})")
        _check_cutoffs(self, model_class, where)
        _check_invariances(self, model_class, where)


RunConfig.SECTIONS = {item.name: item.default_factory for item in fields(RunConfig)
                      if isinstance(item.default_factory, type) and issubclass(item.default_factory, Section)}


def _model_class(model: ModelConfig, where: str):
    from frameavg.models import MODELS

    if model.name not in MODELS:
        raise ConfigError(f"{where}: unknown model '{model.name}'{did_you_mean(model.name, MODELS)} "
                          f"(available: {', '.join(sorted(MODELS))})")
    return MODELS[model.name]


def _constructor_parameters(model_class) -> dict | None:
    """The constructor's parameters (None when it takes ``**kwargs``: anything goes)."""
    import inspect

    parameters = inspect.signature(model_class.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return {name: p for name, p in parameters.items() if name != "self"}


def _check_arguments(model: ModelConfig, model_class, where: str) -> None:
    """Every argument is a constructor parameter; the fixed-value ones are valid."""
    accepted = _constructor_parameters(model_class)
    if accepted is not None:
        for key in model.arguments:
            if key not in accepted:
                raise ConfigError(f"{where}: model '{model.name}' has no argument '{key}'"
                                  f"{did_you_mean(key, accepted, 'model.')}")
    for key, rule in _model_rules().get(model.name, {}).items():
        if key in model.arguments:
            model.arguments[key] = rule.check(model.arguments[key], f"{where}: 'model.{key}'")


def _model_rules() -> dict[str, dict[str, Rule]]:
    """Rules of the model arguments with fixed values (imports torch)."""
    from frameavg.models.blocks import ENVELOPES, NORMS

    return {"faenet": {"envelope": choice(*ENVELOPES), "envelope_exponent": integer(1), "norm": choice(*NORMS)}}


def model_cutoff(model: ModelConfig, model_class) -> float | None:
    """The model's cutoff (Å): its ``cutoff`` argument, else the constructor's default (None:
    the model has none)."""
    if "cutoff" in model.arguments:
        return float(model.arguments["cutoff"])
    parameter = (_constructor_parameters(model_class) or {}).get("cutoff")
    default = getattr(parameter, "default", None)
    return float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else None


def _check_cutoffs(config: RunConfig, model_class, where: str) -> None:
    """A model whose cutoff exceeds the neighbour list's would never see the pairs in between
    (``ConfigError``); a longer neighbour list than the model's cutoff costs memory (warning)."""
    cutoff = model_cutoff(config.model, model_class)
    if cutoff is None or abs(cutoff - config.data.cutoff) < 1e-9:
        return
    if cutoff > config.data.cutoff:
        raise ConfigError(f"{where}: model.cutoff {cutoff:g} Å exceeds data.cutoff {config.data.cutoff:g} Å: the "
                          f"neighbour list would leave out pairs the model reads; set data.cutoff: {cutoff:g}")
    warnings.warn(f"{where}: data.cutoff {config.data.cutoff:g} Å is longer than model.cutoff {cutoff:g} Å: "
                  "the extra edges cost memory and time", UserWarning, stacklevel=3)


def _check_invariances(config: RunConfig, model_class, where: str) -> None:
    """A model that is not rotation-invariant by construction needs frames to be (warning: an
    ablation may want it)."""
    invariances = getattr(model_class, "invariances", ())
    if not config.frames.enabled and "rotation" not in invariances:
        warnings.warn(f"{where}: model '{config.model.name}' is not rotation-invariant by construction "
                      f"({', '.join(invariances) or 'no invariance'}) and frames.dims is none: its predictions "
                      "depend on the orientation of the input", UserWarning, stacklevel=3)
