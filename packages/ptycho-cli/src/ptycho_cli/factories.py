"""ADR-003 factories: build validated configs from data files, a config file, overrides and an
execution config, recording where every value came from (``specs/configuration.md``,
``specs/cli.md``).

Precedence, highest first::

    explicit overrides > execution config > config file > bundle (inference) > dataclass defaults

One flat key space: every field of :class:`ModelConfig`, of :class:`TrainingConfig` (training)
or :class:`InferenceConfig` (inference) and of :class:`PyTorchExecutionConfig`; keys may also be
written with a section prefix (``model.gridsize``, ``execution.learning_rate``). A config file is a
YAML or TOML mapping, flat or with the sections ``model``, ``training``, ``inference`` and
``execution`` (a training payload ignores an ``inference`` section and vice versa, so one file
can serve both).

- ``N`` comes from the data (pattern and probe size). A source that sets another ``N`` is a
  ``ValueError`` naming both values; so is a test file whose ``N`` differs from the training file.
- Training: ``backend`` not given by any source is :func:`ptycho_core.backends.default_backend`
  (the only installed backend, else ``pytorch``).
- Keys of removed fields (``positions_provided``) are dropped with a ``DeprecationWarning``.
- Inference: the bundle's model config is authoritative (the weights fix the architecture). Any
  source that sets a model field to another value — ``gridsize`` included — is a ``ValueError``
  naming both values; the data's ``N`` must equal the bundle's. ``backend`` defaults to the
  bundle's; asking for another one is caught by :func:`ptycho_cli.dispatch.reconstruct`.
- Unknown keys → ``ValueError`` listing the valid keys; missing files → ``FileNotFoundError``.
- Each applied value is logged at INFO with its source (defaults at DEBUG).
- Before any data is read, ``output_dir`` must be usable
  (:func:`ptycho_cli.outputs.check_output_dir`: not a file, writable); inference also checks the
  bundle's manifest (``model_config``, ``intensity_scale``) and where the scan's positions fall
  (:func:`check_scan_geometry`), so these errors come before any framework is imported.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_cli.outputs import check_output_dir
from ptycho_core.backends import default_backend
from ptycho_core.bundle import BUNDLE_NAME, bundle_file, read_manifest
from ptycho_core.config import (
    InferenceConfig,
    ModelConfig,
    PyTorchExecutionConfig,
    TrainingConfig,
    load_config_file,
)
from ptycho_core.errors import ConfigError, DataContractError
from ptycho_core.io import ScanData, check_enough_patterns, load_npz, load_scan
from ptycho_core.stitching import default_stitch_crop

__all__ = [
    "TrainingPayload",
    "InferencePayload",
    "create_training_payload",
    "create_inference_payload",
    "resolve_bundle_path",
    "valid_keys",
    "check_scan_geometry",
    "MAX_CANVAS_PIXELS",
]

logger = logging.getLogger(__name__)

OVERRIDE, EXECUTION, FILE, BUNDLE, DATA, DEFAULT, ARGUMENT = (
    "override",
    "execution config",
    "config file",
    "bundle",
    "data",
    "default",
    "argument",
)

_MODEL_KEYS = tuple(ModelConfig.field_names())
_EXEC_KEYS = tuple(PyTorchExecutionConfig.field_names())
#: Keys taken from the factory's own arguments (files, output folder), never from other sources.
_TRAIN_PATH_KEYS = ("train_data_file", "test_data_file", "output_dir")
_INFER_PATH_KEYS = ("model_path", "test_data_file", "output_dir")
_TRAIN_KEYS = tuple(k for k in TrainingConfig.field_names() if k != "model")
_INFER_KEYS = tuple(k for k in InferenceConfig.field_names() if k != "model")
#: Keys of removed config fields, still accepted (and dropped) from old config files.
_REMOVED_KEYS = tuple(TrainingConfig._removed)
#: The largest stitching canvas (pixels) a scan without ``objectGuess`` may ask for: 2**28 px
#: (16384², ~6 GiB of accumulators). Larger means positions in the wrong unit (``specs/cli.md``).
MAX_CANVAS_PIXELS = 2**28


@dataclass(frozen=True)
class TrainingPayload:
    """Everything a training run needs: configs, the loaded scans and where each value came from.

    ``provenance`` maps ``section.key`` (``model.N``, ``training.nepochs``,
    ``execution.learning_rate``) to the source (``override``, ``execution config``,
    ``config file <path>``, ``data <path>``, ``argument``, ``default``).
    """

    config: TrainingConfig
    execution: PyTorchExecutionConfig
    provenance: dict[str, str]
    train_data: ScanData = field(repr=False)
    test_data: ScanData | None = field(default=None, repr=False)
    config_file: Path | None = None

    @property
    def model(self) -> ModelConfig:
        return self.config.model

    @property
    def backend(self) -> str:
        return self.config.backend


@dataclass(frozen=True)
class InferencePayload:
    """Everything a reconstruction needs: configs, the bundle's manifest and the loaded scan.

    ``adapt_epochs`` > 0: adapt a copy of the model to the scan first (``specs/training.md``
    "Adaptation"); ``save_adapted``: the folder that keeps the adapted model, or None."""

    config: InferenceConfig
    execution: PyTorchExecutionConfig
    provenance: dict[str, str]
    manifest: dict[str, Any] = field(repr=False)
    bundle_path: Path = Path(BUNDLE_NAME)
    data: ScanData | None = field(default=None, repr=False)
    config_file: Path | None = None
    adapt_epochs: int = 0
    save_adapted: Path | None = None
    #: One-line messages about the scan for the user (positions outside the object,
    #: :func:`check_scan_geometry`); the CLI prints them.
    warnings: tuple[str, ...] = ()

    @property
    def model(self) -> ModelConfig:
        return self.config.model

    @property
    def bundle_backend(self) -> str:
        return str(self.manifest["backend"])


def valid_keys(kind: str = "training") -> list[str]:
    """The keys accepted in overrides and config files for a ``training``/``inference`` payload."""
    own = _TRAIN_KEYS if kind == "training" else _INFER_KEYS
    paths = _TRAIN_PATH_KEYS if kind == "training" else _INFER_PATH_KEYS
    return sorted(set(_MODEL_KEYS) | (set(own) - set(paths)) | set(_EXEC_KEYS))


# ----------------------------------------------------------------------------- key handling
class _Space:
    """The flat key space of one payload kind and the section each key belongs to."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        own = _TRAIN_KEYS if kind == "training" else _INFER_KEYS
        self.paths = _TRAIN_PATH_KEYS if kind == "training" else _INFER_PATH_KEYS
        self.section: dict[str, str] = {k: "model" for k in _MODEL_KEYS}
        self.section.update({k: kind for k in own if k not in self.paths})
        self.section.update({k: "execution" for k in _EXEC_KEYS})
        self.other = "inference" if kind == "training" else "training"

    def normalise(self, mapping: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Flatten ``section.key`` / nested sections, map ``n_images``; unknown → ValueError."""
        flat: dict[str, Any] = {}
        unknown: list[str] = []
        for raw_key, value in mapping.items():
            key = str(raw_key)
            section, _, name = key.rpartition(".")
            if (
                not section
                and key in ("model", "training", "inference", "execution")
                and isinstance(value, Mapping)
            ):
                if key == self.other:
                    logger.debug(
                        "%s: ignoring the %r section (not used for %s)", where, key, self.kind
                    )
                    continue
                for sub_key, sub_value in value.items():
                    self._put(flat, unknown, str(sub_key), sub_value, key)
                continue
            if section == self.other:
                continue
            self._put(flat, unknown, name, value, section or None)
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {sorted(unknown)}; valid keys: "
                f"{', '.join(valid_keys(self.kind))}"
            )
        return flat

    def _put(
        self, flat: dict[str, Any], unknown: list[str], name: str, value: Any, section: str | None
    ) -> None:
        if name == "n_images":
            warnings.warn(
                "'n_images' is deprecated; use 'n_groups'", DeprecationWarning, stacklevel=5
            )
            name = "n_groups"
        if name in _REMOVED_KEYS:
            warnings.warn(
                f"{name!r} was removed (it had no effect); ignoring it",
                DeprecationWarning,
                stacklevel=5,
            )
            return
        if name in self.paths:
            logger.debug("ignoring %r from a config source: it is given as an argument", name)
            return
        owner = self.section.get(name)
        if owner is None or (section is not None and section != owner):
            unknown.append(f"{section}.{name}" if section else name)
            return
        flat[name] = value


def _execution_layer(execution_config: Any) -> dict[str, Any]:
    """An execution config instance contributes the fields it sets away from the defaults (a
    default carries no choice); a mapping contributes exactly its keys."""
    if execution_config is None:
        return {}
    if isinstance(execution_config, PyTorchExecutionConfig):
        default = PyTorchExecutionConfig()
        return {
            f: getattr(execution_config, f)
            for f in _EXEC_KEYS
            if getattr(execution_config, f) != getattr(default, f)
        }
    if isinstance(execution_config, Mapping):
        unknown = sorted(set(map(str, execution_config)) - set(_EXEC_KEYS))
        if unknown:
            raise ValueError(
                f"execution config: unknown key(s) {unknown}; valid keys: "
                f"{', '.join(sorted(_EXEC_KEYS))}"
            )
        return dict(execution_config)
    raise TypeError(
        "execution_config must be a PyTorchExecutionConfig, a mapping or None, got "
        f"{type(execution_config).__name__}"
    )


def _require_file(path: Any, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: {what} not found")
    return p


def resolve_bundle_path(model_path: Any) -> Path:
    """A bundle file, or a folder holding ``wts.h5.zip`` (a training output folder)."""
    return _require_file(bundle_file(model_path), "model bundle")


class _Resolver:
    """Picks each key's value from the highest-precedence layer and records its source."""

    def __init__(self, layers: list[tuple[str, dict[str, Any]]], space: _Space) -> None:
        self.layers = layers
        self.space = space
        self.values: dict[str, Any] = {}
        self.provenance: dict[str, str] = {}

    def lookup(self, key: str) -> tuple[Any, str] | None:
        for source, values in self.layers:
            if key in values:
                return values[key], source
        return None

    def set(self, key: str, value: Any, source: str) -> None:
        self.values[key] = value
        self.provenance[f"{self.space.section.get(key, self.space.kind)}.{key}"] = source

    def resolve_all(self) -> None:
        for key in self.space.section:
            if key in self.values:
                continue
            found = self.lookup(key)
            if found is not None:
                self.set(key, *found)

    def split(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        model = {k: v for k, v in self.values.items() if self.space.section.get(k) == "model"}
        own = {k: v for k, v in self.values.items() if self.space.section.get(k) == self.space.kind}
        exe = {k: v for k, v in self.values.items() if self.space.section.get(k) == "execution"}
        return model, own, exe


def _layers(
    space: _Space, overrides: Mapping[str, Any] | None, execution_config: Any, config_file: Any
) -> tuple[list[tuple[str, dict[str, Any]]], Path | None]:
    layers = [(OVERRIDE, space.normalise(overrides or {}, "overrides"))]
    exe = _execution_layer(execution_config)
    layers.append((EXECUTION, exe))
    cfg_path = None
    if config_file is not None:
        cfg_path = _require_file(config_file, "config file")
        layers.append(
            (f"{FILE} {cfg_path}", space.normalise(load_config_file(cfg_path), str(cfg_path)))
        )
    return layers, cfg_path


def _finish(cls: type, resolver: _Resolver, paths: dict[str, Any]) -> tuple:
    model_vals, own_vals, exe_vals = resolver.split()
    model = ModelConfig(**model_vals)
    config = cls(model=model, **own_vals, **paths)
    execution = PyTorchExecutionConfig(**exe_vals)
    provenance = dict(resolver.provenance)
    for section, obj in (("model", model), (resolver.space.kind, config), ("execution", execution)):
        for f in dataclasses.fields(obj):
            if f.name == "model":
                continue
            provenance.setdefault(f"{section}.{f.name}", DEFAULT)
    for key in sorted(provenance):
        section, _, name = key.partition(".")
        obj = {"model": model, "execution": execution}.get(section, config)
        value = getattr(obj, name, None)
        level = logging.DEBUG if provenance[key] == DEFAULT else logging.INFO
        logger.log(level, "%s = %r (from %s)", key, value, provenance[key])
    return config, execution, provenance


def _check_n(resolver: _Resolver, n_data: int, where: str, what: str) -> None:
    found = resolver.lookup("N")
    if found is not None and found[0] != n_data:
        raise ValueError(
            f"N = {found[0]!r} (from {found[1]}) conflicts with N = {n_data} of "
            f"{what} {where} (pattern and probe size)"
        )
    resolver.set("N", n_data, f"{DATA} {where}")


# ----------------------------------------------------------------------------- factories
def create_training_payload(
    train_data_file: str | Path,
    output_dir: str | Path,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    execution_config: PyTorchExecutionConfig | Mapping[str, Any] | None = None,
    test_data_file: str | Path | None = None,
) -> TrainingPayload:
    """Build a :class:`TrainingPayload` (see the module docstring for the rules).

    Raises ``FileNotFoundError`` for a missing data or config file, ``ValueError`` for unknown
    keys, conflicting ``N`` and invalid values (:class:`~ptycho_core.errors.ConfigError`,
    :class:`~ptycho_core.errors.DataContractError`).
    """
    space = _Space("training")
    check_output_dir(output_dir)
    train_path = _require_file(train_data_file, "training data file")
    test_path = None if test_data_file is None else _require_file(test_data_file, "test data file")
    layers, cfg_path = _layers(space, overrides, execution_config, config_file)
    resolver = _Resolver(layers, space)

    train = load_npz(train_path)
    _check_n(resolver, train.N, str(train_path), "the training data")
    test = None
    if test_path is not None:
        test = load_npz(test_path)
        if test.N != train.N:
            raise ValueError(
                f"{test_path}: pattern size N = {test.N} differs from N = {train.N} "
                f"of the training data {train_path}"
            )
    resolver.resolve_all()
    if "backend" not in resolver.values:
        resolver.set("backend", default_backend(), "installed backends")
    paths = {
        "train_data_file": train_path,
        "test_data_file": test_path,
        "output_dir": Path(output_dir),
    }
    for key, _value in paths.items():
        resolver.provenance[f"training.{key}"] = ARGUMENT
    config, execution, provenance = _finish(TrainingConfig, resolver, paths)
    check_enough_patterns(train, config.model.C, f"gridsize {config.model.gridsize}")
    return TrainingPayload(
        config=config,
        execution=execution,
        provenance=provenance,
        train_data=train,
        test_data=test,
        config_file=cfg_path,
    )


def check_scan_geometry(scan: ScanData, crop: int, where: object) -> list[str]:
    """Where the scan's patches land on the stitching canvas (``specs/cli.md``).

    With ``objectGuess`` ``(H, W)`` the canvas is the object frame: a position whose central
    ``crop``×``crop`` square misses ``[0, W) × [0, H)`` contributes nothing. None on it →
    :class:`~ptycho_core.errors.DataContractError` (nothing would be reconstructed); some off
    it → the returned warning. Without ``objectGuess`` the canvas is the positions' bounding box
    plus ``crop``; more than :data:`MAX_CANVAS_PIXELS` → ``DataContractError`` (positions in
    the wrong unit). ``where`` names the scan file in messages.
    """
    pos = scan.positions
    x, y = pos[:, 0], pos[:, 1]
    span = f"x in [{x.min():.6g}, {x.max():.6g}], y in [{y.min():.6g}, {y.max():.6g}]"
    if scan.object is not None:
        h, w = (int(v) for v in scan.object.shape[-2:])
        lo_x, lo_y = np.floor(x - crop / 2), np.floor(y - crop / 2)
        on = (lo_x + crop >= 0) & (lo_x <= w - 1) & (lo_y + crop >= 0) & (lo_y <= h - 1)
        off = int((~on).sum())
        if off == len(pos):
            raise DataContractError(
                f"{where}: keys 'xcoords'/'ycoords': none of the {len(pos)} positions lies on the "
                f"{w}×{h} object of key 'objectGuess' ({span} object pixels); nothing would be "
                "reconstructed"
            )
        if off:
            return [
                f"{where}: {off} of {len(pos)} positions lie outside the {w}×{h} object "
                f"('objectGuess'); their patterns are not reconstructed"
            ]
        return []
    width = math.floor(x.max() - x.min()) + crop + 1
    height = math.floor(y.max() - y.min()) + crop + 1
    if width * height > MAX_CANVAS_PIXELS:
        raise DataContractError(
            f"{where}: keys 'xcoords'/'ycoords': the positions span {span} object pixels, a "
            f"{width}×{height} canvas (more than {MAX_CANVAS_PIXELS} pixels); are they in "
            "object pixels?"
        )
    return []


def _check_bundle_manifest(manifest: dict[str, Any], bundle_path: Path) -> None:
    """The manifest's ``model_config``, ``training_config`` and ``intensity_scale`` as
    :func:`ptycho_core.engine.load_bundle` checks them — here, before a framework is imported."""
    from ptycho_core.engine import bundle_configs, bundle_intensity_scale

    bundle_configs(manifest, bundle_path)
    bundle_intensity_scale(manifest, bundle_path)


def _bundle_layer(manifest: dict[str, Any], space: _Space) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model fields, inference fields) the bundle contributes."""
    model = dict(manifest.get("model_config") or {})
    model = {k: v for k, v in model.items() if k in _MODEL_KEYS}
    training = manifest.get("training_config") or {}
    own: dict[str, Any] = {"backend": manifest["backend"]}
    if "neighbor_count" in training:
        own["neighbor_count"] = training["neighbor_count"]
    return model, own


def _check_adaptation(
    adapt_epochs: Any, save_adapted: str | Path | None, manifest: dict[str, Any], bundle: Path
) -> Path | None:
    """The ``save_adapted`` folder (or None) after checking the adaptation request."""
    if isinstance(adapt_epochs, bool) or not isinstance(adapt_epochs, int) or adapt_epochs < 0:
        raise ConfigError(f"adapt_epochs = {adapt_epochs!r} is invalid; allowed: an integer >= 0")
    if save_adapted is not None and adapt_epochs == 0:
        raise ConfigError(
            f"save_adapted = {str(save_adapted)!r} is invalid without adaptation; allowed: "
            "adapt_epochs >= 1 (--adapt-epochs K)"
        )
    model_type = (manifest.get("model_config") or {}).get("model_type", "pinn")
    if adapt_epochs and model_type != "pinn":
        raise ConfigError(
            f"{bundle}: manifest key 'model_config': model_type = {model_type!r} cannot be "
            "adapted; allowed: 'pinn' (adaptation fits the physics loss)"
        )
    return None if save_adapted is None else Path(save_adapted)


def create_inference_payload(
    model_path: str | Path,
    test_data_file: str | Path,
    output_dir: str | Path,
    *,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    execution_config: PyTorchExecutionConfig | Mapping[str, Any] | None = None,
    adapt_epochs: int = 0,
    save_adapted: str | Path | None = None,
) -> InferencePayload:
    """Build an :class:`InferencePayload` from a bundle (file, or folder holding ``wts.h5.zip``).

    The manifest is read with :func:`ptycho_core.bundle.read_manifest` (no framework). Raises
    ``FileNotFoundError``, :class:`~ptycho_core.errors.BundleError` for a damaged bundle and
    ``ValueError`` for unknown keys or values that conflict with the bundle or the data.
    ``adapt_epochs``/``save_adapted``: see :class:`InferencePayload`; a negative count,
    ``save_adapted`` without adaptation, or adapting a supervised model is a
    :class:`~ptycho_core.errors.ConfigError` (checked here, before any framework is imported).
    """
    space = _Space("inference")
    check_output_dir(output_dir)
    bundle_path = resolve_bundle_path(model_path)
    data_path = _require_file(test_data_file, "data file")
    layers, cfg_path = _layers(space, overrides, execution_config, config_file)
    manifest = read_manifest(bundle_path)
    _check_bundle_manifest(manifest, bundle_path)
    adapted_dir = _check_adaptation(adapt_epochs, save_adapted, manifest, bundle_path)
    bundle_model, bundle_own = _bundle_layer(manifest, space)
    source = f"{BUNDLE} {bundle_path}"

    resolver = _Resolver(layers + [(source, bundle_own)], space)
    for key, value in bundle_model.items():
        found = resolver.lookup(key)
        if found is not None and found[0] != value:
            raise ValueError(
                f"{key} = {found[0]!r} (from {found[1]}) conflicts with {key} = "
                f"{value!r} of the model bundle {bundle_path}"
            )
        resolver.set(key, value, source)

    # inference never uses Y; an .h5 scan is streamed, never held whole (specs/data-contracts.md)
    data = load_scan(data_path, skip=("Y",))
    n_bundle = bundle_model.get("N")
    if n_bundle is not None and n_bundle != data.N:
        raise ValueError(
            f"{data_path}: pattern size N = {data.N} conflicts with N = {n_bundle} "
            f"of the model bundle {bundle_path}"
        )
    if n_bundle is None:
        _check_n(resolver, data.N, str(data_path), "the data")
    resolver.resolve_all()
    paths = {"model_path": bundle_path, "test_data_file": data_path, "output_dir": Path(output_dir)}
    for key in paths:
        resolver.provenance[f"inference.{key}"] = ARGUMENT
    config, execution, provenance = _finish(InferenceConfig, resolver, paths)
    check_enough_patterns(data, config.model.C, f"gridsize {config.model.gridsize}")
    crop = config.stitch_crop or default_stitch_crop(config.model.N)
    notes = check_scan_geometry(data, int(crop), data_path)
    return InferencePayload(
        config=config,
        execution=execution,
        provenance=provenance,
        manifest=manifest,
        bundle_path=bundle_path,
        data=data,
        config_file=cfg_path,
        adapt_epochs=int(adapt_epochs),
        save_adapted=adapted_dir,
        warnings=tuple(notes),
    )
