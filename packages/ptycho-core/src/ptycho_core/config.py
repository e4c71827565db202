"""Canonical configuration dataclasses (``specs/configuration.md``, ``specs/configuration.md``).

Science configs (:class:`ModelConfig`, :class:`TrainingConfig`, :class:`InferenceConfig`) and the
runtime-only :class:`PyTorchExecutionConfig` are frozen dataclasses validated on construction.
Every invalid value raises :class:`~ptycho_core.errors.ConfigError` (a ``ValueError``) whose
message names the field, the value and what is allowed.

- Paths are stored as :class:`pathlib.Path` (or ``None``) and serialised as ``str``.
- ``devices`` given as a list is stored as a tuple (hashable) and serialised as a list.
- ``n_images`` is a deprecated alias of ``n_groups``: accepted as a constructor keyword (an
  ``InitVar``, never stored) and as a ``from_dict`` key, each with a ``DeprecationWarning``.
- ``TrainingConfig.positions_provided`` was removed (nothing read it); ``from_dict`` still
  accepts the key from old bundles and config files, with a ``DeprecationWarning``, and drops it.
- ``BACKEND_NAMES`` is :data:`ptycho_core.backends.BACKEND_NAMES` (the backend table).
- ``to_dict()`` is JSON-safe and nested (``model`` is a dict); ``from_dict()`` rejects unknown keys
  with a message listing the valid ones. ``dataclasses.replace`` re-validates.

Nothing here is process-global: configs are values passed explicitly.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
import warnings
from collections.abc import Collection, Mapping
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ptycho_core.backends import BACKEND_NAMES, DEFAULT_BACKEND
from ptycho_core.errors import ConfigError

__all__ = [
    "BACKEND_NAMES",
    "SUPPORTED_N",
    "GENERATORS",
    "MERGE_WEIGHTS",
    "INFERENCE_GROUPINGS",
    "ModelConfig",
    "TrainingConfig",
    "InferenceConfig",
    "ExecutionConfig",
    "PyTorchExecutionConfig",
    "ACCELERATORS",
    "SCHEDULERS",
    "LOGGER_BACKENDS",
    "CHECKPOINT_MODES",
    "PRECISIONS",
    "MIXED_DTYPES",
    "FP16_DEVICE_KINDS",
    "ignored_execution_fields",
    "load_config_file",
]

logger = logging.getLogger(__name__)

SUPPORTED_N: tuple[int, ...] = (32, 64, 128, 256)
MODEL_TYPES = ("pinn", "supervised")
AMP_ACTIVATIONS = ("sigmoid", "swish", "softplus", "relu")
#: ``ModelConfig.merge_weights``: the ``object_big`` merge weight (``specs/model.md``).
MERGE_WEIGHTS = ("probe", "centre")
#: The network between diffraction and object patches (``specs/model.md``): ``'fourier'`` lifts
#: the patterns to real space through a learned-phase inverse FFT, then a U-Net; ``'cnn'`` is
#: the original encoder/decoder pair (what bundles without the key were trained with).
GENERATORS = ("fourier", "cnn")
#: ``InferenceConfig.grouping``: every position seeds a group, or the fewest groups that cover
#: every position (``specs/configuration.md``).
INFERENCE_GROUPINGS = ("every", "cover")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
SCHEDULERS = ("plateau", "none", "cosine", "step")
LOGGER_BACKENDS = ("csv", "tensorboard", "mlflow", "none")
CHECKPOINT_MODES = ("min", "max")
#: ``ExecutionConfig.precision``: full float32, bfloat16 or float16 mixed precision (Lightning's
#: names; TensorFlow maps them onto Keras dtype policies, ``specs/configuration.md``).
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
#: The compute dtype of each mixed precision (variables stay float32): PyTorch's autocast dtype
#: and, as ``mixed_<dtype>``, the Keras dtype policy.
MIXED_DTYPES = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}
#: Device kinds on which ``16-mixed`` runs (float16 autocast and loss scaling need a GPU).
FP16_DEVICE_KINDS = ("gpu", "mps")


# ----------------------------------------------------------------------------- validators
def _err(owner: str, name: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{owner}.{name} = {value!r} is invalid; allowed: {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


class _Checker:
    """Validates and normalises the fields of one config instance (``object.__setattr__``)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.owner = type(obj).__name__

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self.obj, name, value)

    def fail(self, name: str, allowed: str, value: Any = dataclasses.MISSING) -> ConfigError:
        v = getattr(self.obj, name) if value is dataclasses.MISSING else value
        return _err(self.owner, name, v, allowed)

    def choice(self, name: str, allowed: tuple, *, optional: bool = False) -> None:
        v = getattr(self.obj, name)
        if v is None and optional:
            return
        if v not in allowed:
            extra = " or None" if optional else ""
            raise self.fail(name, f"one of {list(allowed)}{extra}")

    def integer(self, name: str, lo: int | None = None, *, optional: bool = False) -> None:
        v = getattr(self.obj, name)
        if v is None and optional:
            return
        rng = f"an integer >= {lo}" if lo is not None else "an integer"
        if optional:
            rng += " or None"
        if not _is_int(v) or (lo is not None and v < lo):
            raise self.fail(name, rng)
        self._set(name, int(v))

    def real(self, name: str, lo: float = 0.0, *, strict: bool, optional: bool = False) -> None:
        v = getattr(self.obj, name)
        if v is None and optional:
            return
        rng = f"a finite number {'>' if strict else '>='} {lo:g}" + (" or None" if optional else "")
        if not _is_real(v) or (v <= lo if strict else v < lo):
            raise self.fail(name, rng)
        self._set(name, float(v))

    def boolean(self, *names: str) -> None:
        for name in names:
            if not isinstance(getattr(self.obj, name), bool):
                raise self.fail(name, "True or False")

    def string(self, name: str) -> None:
        v = getattr(self.obj, name)
        if not isinstance(v, str) or not v:
            raise self.fail(name, "a non-empty string")

    def path(self, name: str, *, optional: bool = True) -> None:
        v = getattr(self.obj, name)
        if v is None and optional:
            return
        if not isinstance(v, (str, Path)) or str(v) == "":
            raise self.fail(
                name, "a file-system path (str or Path)" + (" or None" if optional else "")
            )
        self._set(name, Path(v))

    def model(self) -> None:
        v = self.obj.model
        if isinstance(v, Mapping):
            self._set("model", ModelConfig.from_dict(v))
        elif not isinstance(v, ModelConfig):
            raise self.fail("model", "a ModelConfig or a mapping of its fields")

    def n_images_alias(self, n_images: Any) -> None:
        if n_images is None:
            return
        warnings.warn(
            f"{self.owner}: 'n_images' is deprecated; use 'n_groups'",
            DeprecationWarning,
            stacklevel=4,
        )
        if self.obj.n_groups is not None and self.obj.n_groups != n_images:
            raise self.fail(
                "n_groups",
                f"the same value as the deprecated alias n_images="
                f"{n_images!r} (give only n_groups)",
            )
        self._set("n_groups", n_images)


# ----------------------------------------------------------------------------- base
class _ConfigBase:
    """``to_dict`` / ``from_dict`` shared by the config dataclasses."""

    _aliases: ClassVar[tuple[str, ...]] = ()
    #: Keys of removed fields that old bundles and config files still carry: accepted by
    #: ``from_dict`` with a DeprecationWarning and dropped.
    _removed: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: paths → str, tuples → lists, ``model`` → nested dict."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, _ConfigBase):
                v = v.to_dict()
            elif isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        """The names accepted by the constructor and ``from_dict`` (aliases excluded)."""
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Build from a mapping; unknown keys → ConfigError listing valid keys.

        ``n_images`` (where the class has ``n_groups``) is accepted with a DeprecationWarning.
        Keys of removed fields (``_removed``, e.g. ``positions_provided`` of old bundles) are
        dropped with a DeprecationWarning. A nested ``model`` mapping becomes a
        :class:`ModelConfig`.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{cls.__name__}.from_dict expects a mapping, got {type(d).__name__}")
        valid = cls.field_names()
        kwargs = dict(d)
        for key in cls._removed:
            if key in kwargs:
                message = f"{cls.__name__}: {key!r} was removed (it had no effect); ignoring it"
                warnings.warn(message, DeprecationWarning, stacklevel=2)
                logger.info("%s (value %r)", message, kwargs.pop(key))
        unknown = sorted(k for k in kwargs if k not in valid and k not in cls._aliases)
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(valid)}"
            )
        if "n_images" in kwargs:
            warnings.warn(
                f"{cls.__name__}: 'n_images' is deprecated; use 'n_groups'",
                DeprecationWarning,
                stacklevel=2,
            )
            alias = kwargs.pop("n_images")
            if kwargs.get("n_groups") is not None and kwargs["n_groups"] != alias:
                raise _err(
                    cls.__name__,
                    "n_groups",
                    kwargs["n_groups"],
                    f"the same value as the deprecated alias n_images={alias!r}",
                )
            kwargs["n_groups"] = alias
        if isinstance(kwargs.get("model"), Mapping):
            kwargs["model"] = ModelConfig.from_dict(kwargs["model"])
        return cls(**kwargs)


# ----------------------------------------------------------------------------- legacy manifests
#: The ``object_big`` merge weight of bundles written before ``ModelConfig.merge_weights``.
LEGACY_MERGE_WEIGHTS = "centre"
#: The generator of bundles written before ``ModelConfig.generator``.
LEGACY_GENERATOR = "cnn"
#: The physics stages of bundles written before ``ModelConfig.physics_stages``: none.
LEGACY_PHYSICS_STAGES = 0
#: The inference projections per stage of bundles written before
#: ``ModelConfig.inference_projection_steps``: the three they trained with.
LEGACY_INFERENCE_PROJECTION_STEPS = 3
#: The gridsize a manifest without the key means: 1, ``ModelConfig``'s default until it became 2
#: (this project's writers always record it; hand-written manifests may not).
LEGACY_GRIDSIZE = 1


def legacy_model_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """``model_config`` with the keys that older bundles lack set to what those bundles were
    trained with: ``merge_weights`` :data:`LEGACY_MERGE_WEIGHTS`, ``generator``
    :data:`LEGACY_GENERATOR`, ``physics_stages`` :data:`LEGACY_PHYSICS_STAGES`,
    ``inference_projection_steps`` :data:`LEGACY_INFERENCE_PROJECTION_STEPS`, ``gridsize``
    :data:`LEGACY_GRIDSIZE` (a copy; the manifest is not modified)."""
    legacy = {
        "gridsize": LEGACY_GRIDSIZE,
        "merge_weights": LEGACY_MERGE_WEIGHTS,
        "generator": LEGACY_GENERATOR,
        "physics_stages": LEGACY_PHYSICS_STAGES,
        "inference_projection_steps": LEGACY_INFERENCE_PROJECTION_STEPS,
    }
    missing = {k: v for k, v in legacy.items() if k not in model_config}
    return dict(model_config, **missing) if missing else model_config


# ----------------------------------------------------------------------------- science configs
@dataclass(frozen=True)
class ModelConfig(_ConfigBase):
    """Architecture and physics options (``specs/model.md``, ADR-002).

    ``N`` in pixels, ``C = gridsize²``. ``merge_weights``: the per-pixel weight of the
    ``object_big`` merge, ``'probe'`` (the illumination intensity normalised to peak 1) or
    ``'centre'`` (the centre ``N/2`` square; what bundles without the key were trained with).
    ``generator``: one of :data:`GENERATORS`; ``pad_object`` and ``probe_big`` shape the
    ``'cnn'`` generator only (``'fourier'`` predicts the whole ``N × N`` patch).
    ``physics_stages``: the physics stages after the merge of an overlap-constrained model
    (``gridsize > 1``, ``object_big``, ``'pinn'``) — each three data projections of the group
    followed by a learned correction; other models have none, whatever the value
    (:func:`ptycho_core.architecture.physics_stages`). ``inference_projection_steps``: the
    data projections per stage when the model reconstructs (training runs three; more at
    inference is better at no training cost, ``specs/model.md``).
    """

    N: int = 64
    gridsize: int = 2
    n_filters_scale: int = 2
    model_type: str = "pinn"
    amp_activation: str = "sigmoid"
    object_big: bool = True
    probe_big: bool = True
    probe_mask: bool = False
    pad_object: bool = True
    probe_scale: float = 4.0
    gaussian_smoothing_sigma: float = 0.0
    merge_weights: str = "probe"
    generator: str = "fourier"
    physics_stages: int = 3
    inference_projection_steps: int = 20

    def __post_init__(self) -> None:
        c = _Checker(self)
        if not _is_int(self.N) or self.N not in SUPPORTED_N:
            raise c.fail("N", f"one of {list(SUPPORTED_N)}")
        c.integer("N")
        c.integer("gridsize", 1)
        c.integer("n_filters_scale", 1)
        c.choice("model_type", MODEL_TYPES)
        c.choice("amp_activation", AMP_ACTIVATIONS)
        c.boolean("object_big", "probe_big", "probe_mask", "pad_object")
        c.real("probe_scale", 0.0, strict=True)
        c.real("gaussian_smoothing_sigma", 0.0, strict=False)
        c.choice("merge_weights", MERGE_WEIGHTS)
        c.choice("generator", GENERATORS)
        c.integer("physics_stages", 0)
        c.integer("inference_projection_steps", 1)

    @property
    def C(self) -> int:
        """Channels per group, ``gridsize ** 2``."""
        return self.gridsize * self.gridsize


def _check_neighbors(c: _Checker, model: ModelConfig) -> None:
    c.integer("neighbor_count", 1)
    if model.gridsize > 1 and c.obj.neighbor_count < model.C - 1:
        raise c.fail(
            "neighbor_count",
            f"an integer >= C - 1 = {model.C - 1} "
            f"(gridsize={model.gridsize} needs {model.C - 1} neighbours per group)",
        )


@dataclass(frozen=True)
class TrainingConfig(_ConfigBase):
    """What to train and on which data (``specs/training.md``, ``specs/configuration.md``).

    ``nphotons``: mean photons per pattern. The default loss (amplitude MAE, batch size 4) is
    the best measured on the realistic scene (``specs/training.md``, "Training recipe").
    """

    _aliases: ClassVar[tuple[str, ...]] = ("n_images",)
    _removed: ClassVar[tuple[str, ...]] = ("positions_provided",)

    model: ModelConfig = field(default_factory=ModelConfig)
    train_data_file: Path | None = None
    test_data_file: Path | None = None
    batch_size: int = 4
    nepochs: int = 50
    nll_weight: float = 0.0
    mae_weight: float = 1.0
    realspace_weight: float = 0.0
    nphotons: float | None = None
    n_groups: int | None = None
    n_subsample: int | None = None
    subsample_seed: int | None = None
    neighbor_count: int = 6
    sequential_sampling: bool = False
    probe_trainable: bool = False
    intensity_scale_trainable: bool = False
    output_dir: Path = Path("outputs")
    backend: str = DEFAULT_BACKEND
    seed: int = 42
    validation_fraction: float = 0.05
    n_images: InitVar[int | None] = None

    def __post_init__(self, n_images: int | None) -> None:
        c = _Checker(self)
        c.model()
        c.n_images_alias(n_images)
        c.path("train_data_file")
        c.path("test_data_file")
        c.path("output_dir", optional=False)
        c.integer("batch_size", 1)
        c.integer("nepochs", 1)
        for w in ("nll_weight", "mae_weight", "realspace_weight"):
            c.real(w, 0.0, strict=False)
        if (
            self.nll_weight + self.mae_weight + self.realspace_weight <= 0
            and self.model.model_type == "pinn"
        ):
            raise c.fail(
                "nll_weight",
                "at least one of nll_weight, mae_weight, realspace_weight "
                "> 0 for model_type='pinn'",
            )
        c.real("nphotons", 0.0, strict=True, optional=True)
        c.integer("n_groups", 1, optional=True)
        c.integer("n_subsample", 1, optional=True)
        c.integer("subsample_seed", 0, optional=True)
        _check_neighbors(c, self.model)
        c.boolean(
            "sequential_sampling",
            "probe_trainable",
            "intensity_scale_trainable",
        )
        c.choice("backend", BACKEND_NAMES)
        c.integer("seed", 0)
        v = self.validation_fraction
        if not _is_real(v) or not 0.0 <= v < 1.0:
            raise c.fail("validation_fraction", "a number in [0, 1)")
        object.__setattr__(self, "validation_fraction", float(v))


@dataclass(frozen=True)
class InferenceConfig(_ConfigBase):
    """What to reconstruct with which bundle (``specs/training.md``, ``specs/configuration.md``).

    ``stitch_crop`` in pixels (even). ``grouping`` (one of :data:`INFERENCE_GROUPINGS`):
    ``"every"`` makes every position the seed of one group; ``"cover"`` makes the fewest
    groups that contain every position (:func:`ptycho_core.grouping.cover_indices`), about
    ``C`` times fewer network evaluations at gridsize > 1. ``projection_steps``: data
    projections per physics stage for this reconstruction (None: the bundle's
    ``ModelConfig.inference_projection_steps``; ``specs/model.md``).
    """

    _aliases: ClassVar[tuple[str, ...]] = ("n_images",)

    model: ModelConfig = field(default_factory=ModelConfig)
    model_path: Path | None = None
    test_data_file: Path | None = None
    n_groups: int | None = None
    neighbor_count: int = 6
    output_dir: Path = Path("outputs")
    backend: str | None = None
    stitch_crop: int | None = None
    grouping: str = "every"
    projection_steps: int | None = None
    n_images: InitVar[int | None] = None

    def __post_init__(self, n_images: int | None) -> None:
        c = _Checker(self)
        c.model()
        c.n_images_alias(n_images)
        c.path("model_path")
        c.path("test_data_file")
        c.path("output_dir", optional=False)
        c.integer("n_groups", 1, optional=True)
        _check_neighbors(c, self.model)
        c.choice("backend", BACKEND_NAMES, optional=True)
        c.choice("grouping", INFERENCE_GROUPINGS)
        c.integer("projection_steps", 1, optional=True)
        if self.stitch_crop is not None:
            n = self.model.N
            sc = self.stitch_crop
            if not _is_int(sc) or sc % 2 or not 0 < sc <= n:
                raise c.fail("stitch_crop", f"None or an even integer with 0 < crop <= N = {n}")
            c.integer("stitch_crop")


# ----------------------------------------------------------------------------- execution
@dataclass(frozen=True)
class ExecutionConfig(_ConfigBase):
    """Runtime knobs (never science), taken by both backends; each honours the fields listed in
    ``specs/configuration.md`` (TensorFlow: ``ptycho_tf.HONOURED_EXECUTION_FIELDS``).

    ``devices``: int >= 1, -1 (all), "auto" or a list of device indices (per node).
    ``precision``: one of :data:`PRECISIONS` (``16-mixed`` is refused on the CPU here, and on any
    other device without float16 by :func:`ptycho_core.runtime.check_execution`); ``compile``:
    ``torch.compile`` (PyTorch) or XLA ``jit_compile`` (TensorFlow) for training and inference;
    ``num_nodes``: machines a training run spans (Lightning's ``num_nodes``).
    """

    accelerator: str = "auto"
    strategy: str = "auto"
    devices: Any = 1
    deterministic: bool = True
    gradient_clip_val: float | None = None
    accum_steps: int = 1
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    prefetch_factor: int | None = None
    learning_rate: float = 1e-3
    scheduler: str = "cosine"
    enable_progress_bar: bool = True
    enable_checkpointing: bool = True
    checkpoint_save_top_k: int = 1
    checkpoint_monitor_metric: str = "val_loss"
    checkpoint_mode: str = "min"
    early_stop_patience: int = 5
    logger_backend: str = "csv"
    inference_batch_size: int = 64
    precision: str = "32-true"
    compile: bool = False
    num_nodes: int = 1

    def __post_init__(self) -> None:
        c = _Checker(self)
        c.choice("accelerator", ACCELERATORS)
        c.string("strategy")
        d = self.devices
        if isinstance(d, (list, tuple)):
            if not d or not all(_is_int(i) and i >= 0 for i in d):
                raise c.fail("devices", "a non-empty list of device indices >= 0")
            object.__setattr__(self, "devices", tuple(int(i) for i in d))
        elif d != "auto" and not (_is_int(d) and (d >= 1 or d == -1)):
            raise c.fail("devices", "an integer >= 1, -1 (all), 'auto' or a list of indices")
        c.boolean(
            "deterministic",
            "pin_memory",
            "persistent_workers",
            "enable_progress_bar",
            "enable_checkpointing",
        )
        c.real("gradient_clip_val", 0.0, strict=True, optional=True)
        c.integer("accum_steps", 1)
        c.integer("num_workers", 0)
        if self.persistent_workers and self.num_workers == 0:
            raise c.fail(
                "persistent_workers",
                "False when num_workers == 0 (persistent workers need num_workers > 0)",
            )
        c.integer("prefetch_factor", 1, optional=True)
        if self.prefetch_factor is not None and self.num_workers == 0:
            raise c.fail(
                "prefetch_factor", "None when num_workers == 0 (prefetching needs num_workers > 0)"
            )
        c.real("learning_rate", 0.0, strict=True)
        c.choice("scheduler", SCHEDULERS)
        c.integer("checkpoint_save_top_k", -1)
        c.string("checkpoint_monitor_metric")
        c.choice("checkpoint_mode", CHECKPOINT_MODES)
        c.integer("early_stop_patience", 1)
        c.choice("logger_backend", LOGGER_BACKENDS)
        c.integer("inference_batch_size", 1)
        c.choice("precision", PRECISIONS)
        if self.accelerator == "cpu" and self.precision == "16-mixed":
            raise c.fail(
                "precision",
                "'32-true' or 'bf16-mixed' with accelerator='cpu' (float16 mixed precision "
                "needs a GPU)",
            )
        c.boolean("compile")
        c.integer("num_nodes", 1)


#: The ADR-003 name of :class:`ExecutionConfig` (the PyTorch backend honours every field).
PyTorchExecutionConfig = ExecutionConfig


def ignored_execution_fields(
    execution: ExecutionConfig | None,
    honoured: Collection[str],
    *,
    honoured_values: Mapping[str, tuple[Any, ...]] | None = None,
) -> dict[str, Any]:
    """Fields of ``execution`` set away from their default that a backend honouring only
    ``honoured`` ignores, plus honoured fields whose value is outside ``honoured_values[name]``
    (e.g. a logger the backend cannot run). For logging one line per run."""
    if execution is None:
        return {}
    default = ExecutionConfig()
    out = {
        f.name: getattr(execution, f.name)
        for f in dataclasses.fields(execution)
        if f.name not in honoured and getattr(execution, f.name) != getattr(default, f.name)
    }
    for name, values in (honoured_values or {}).items():
        if getattr(execution, name) not in values:
            out[name] = getattr(execution, name)
    return out


# ----------------------------------------------------------------------------- files
def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file into a dict.

    Missing file → FileNotFoundError; unknown suffix, bad syntax or a non-mapping top level →
    ConfigError naming the file. PyYAML is imported only for YAML files.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    suffix = p.suffix.lower()
    text = p.read_text(encoding="utf-8")
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError(
                f"{p}: reading YAML config files needs PyYAML: pip install 'ptycho-core[yaml]'"
            ) from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
        data = {} if data is None else data
    elif suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
    else:
        raise ConfigError(
            f"{p}: unsupported config file type {suffix!r}; allowed: .yaml, .yml, .toml"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    logger.debug("read config file %s: keys %s", p, sorted(data))
    return data
