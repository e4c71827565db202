"""The train / reconstruct skeleton both backends run, and model bundles (``specs/training.md``).

A backend supplies a small hook object (:class:`BackendHooks`): build a model, fit it, turn its
weights into bytes and back, read its probe and intensity scale, and predict object patches for a
batch. Everything else — preparing the data, the loss specification and its ground-truth check,
the history, the bundle, the timings, the optional reconstruction of test data, the typed results
— is done here, once::

    hooks = MyHooks()
    result = engine.train(hooks, training_config, execution)       # TrainResult
    recon = engine.reconstruct(hooks, inference_config, execution)  # Reconstruction

Bundles: :func:`save_bundle` writes ``manifest.json``, ``probe.npy`` and the backend's weight
entry (``hooks.weights_entry``); :func:`load_bundle` validates the manifest's configs and
intensity scale with one rule for both backends (``specs/data-contracts.md``), rebuilds the model
and loads the weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ptycho_core import bundle as core_bundle
from ptycho_core.config import (
    ExecutionConfig,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
)
from ptycho_core.errors import BundleError, ConfigError
from ptycho_core.grouping import GroupedData
from ptycho_core.io import ScanData
from ptycho_core.training import HistoryRecorder, LossSpec
from ptycho_core.workflow import (
    PreparedTraining,
    Reconstruction,
    prepare_inference,
    prepare_training,
    run_inference,
)

__all__ = [
    "HISTORY_NAME",
    "MODEL_NAMES",
    "BackendHooks",
    "WeightHooks",
    "FitOutcome",
    "FitRequest",
    "LoadedBundle",
    "TrainResult",
    "bundle_configs",
    "bundle_intensity_scale",
    "load_bundle",
    "reconstruct",
    "save_bundle",
    "train",
]

logger = logging.getLogger(__name__)

HISTORY_NAME = "history.csv"
#: The model names every bundle records (the training and the inference model share weights).
MODEL_NAMES: tuple[str, ...] = ("autoencoder", "diffraction_to_obj")
#: Relative tolerance between the manifest's intensity scale and the one in the weights.
_SCALE_RTOL = 1e-5

Predict = Callable[[GroupedData], np.ndarray]


@dataclass(eq=False)
class FitRequest:
    """What a backend's :meth:`BackendHooks.fit` gets: the prepared data, the loss, a history
    recorder to call once per epoch (it writes ``<output_dir>/history.csv``; on non-zero DDP
    ranks the backend sets ``history.write = False``), where to put checkpoints, and a
    checkpoint to resume."""

    config: TrainingConfig
    execution: ExecutionConfig
    prepared: PreparedTraining
    loss: LossSpec
    history: HistoryRecorder
    output_dir: Path
    resume_from: Path | None = None


@dataclass(eq=False)
class FitOutcome:
    """What :meth:`BackendHooks.fit` returns.

    ``model``: the trained model (on any device; the hooks read it). ``history``: the
    per-epoch history when the recorder in the request could not hold it (``ddp_spawn``: rank 0
    ran in a child process; read back from ``history.csv``); None means "the recorder's".
    ``is_global_zero`` / ``global_rank``: only global rank 0 writes the bundle.
    ``notes``: backend facts added to :attr:`TrainResult.extra` (e.g. ignored settings).
    """

    model: Any
    fit_s: float
    history: dict[str, list[float]] | None = None
    is_global_zero: bool = True
    global_rank: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


class WeightHooks(Protocol):
    """What a backend supplies for bundles: build a model, its weights as bytes and back, its
    probe and intensity scale (``specs/training.md``)."""

    name: str
    #: The bundle entry that holds the weights (``state_dict.pt``, ``model.weights.h5``).
    weights_entry: str

    def build_model(
        self,
        model_config: ModelConfig,
        *,
        probe: np.ndarray,
        intensity_scale: float,
        probe_trainable: bool,
        intensity_scale_trainable: bool,
    ) -> Any:
        """A fresh model with the ADR-002 layers (``ptycho_core.architecture``)."""
        ...

    def weights_to_bytes(self, model: Any) -> bytes: ...

    def weights_from_bytes(self, model: Any, data: bytes, where: str) -> None:
        """Load weights strictly; any mismatch is a :class:`BundleError` naming ``where``."""
        ...

    def model_probe(self, model: Any) -> np.ndarray:
        """The probe the model applies, ``(N, N)`` complex64 (ones for supervised models)."""
        ...

    def model_intensity_scale(self, model: Any) -> float: ...


class BackendHooks(WeightHooks, Protocol):
    """The framework-specific part of a backend: :class:`WeightHooks` plus training and
    prediction (``specs/training.md``)."""

    def fit(self, request: FitRequest) -> FitOutcome:
        """Seed, build the model (:meth:`build_model`), train it; call ``request.history.record``
        at the end of every epoch."""
        ...

    def make_predict(self, model: Any, execution: ExecutionConfig) -> Predict:
        """``predict(batch) -> (B, C_out, N, N)`` complex NumPy object patches for a
        :class:`GroupedData` batch (``diffraction`` = ``s·α·X``, ``offsets``)."""
        ...


@dataclass(eq=False)
class TrainResult:
    """The outcome of :func:`train`.

    ``history``: ``epoch``, ``train_loss``, ``val_loss``, ``lr``, then ``train_<c>``/``val_<c>``
    per epoch. ``intensity_scale``: the trained ``s``; ``norm_factor`` α; ``nphotons`` (mean
    photons per pattern); ``timings`` in seconds (``patterns_per_s`` = training patterns ·
    epochs / fit time); ``config`` the training config as a dict; ``reconstruction`` of the test
    data when there were some; ``extra`` backend facts (``ignored_execution`` for TensorFlow).
    """

    backend: str
    bundle_path: Path
    history: dict[str, list[float]]
    intensity_scale: float
    norm_factor: float
    nphotons: float
    timings: dict[str, float]
    config: dict[str, Any]
    global_rank: int = 0
    reconstruction: Reconstruction | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs_trained(self) -> int:
        return len(self.history.get("train_loss", []))


@dataclass(eq=False)
class LoadedBundle:
    """A bundle read back: the rebuilt ``model`` (eval mode), the ``manifest``, its configs, the
    intensity scale ``s`` and the archive ``path``."""

    model: Any
    manifest: dict[str, Any]
    model_config: ModelConfig
    training_config: TrainingConfig | None
    intensity_scale: float
    path: Path | None = None


# ----------------------------------------------------------------------------- bundles
def _json_history(history: dict[str, list[float]]) -> dict[str, list[float | None]]:
    return {k: [v if math.isfinite(v) else None for v in vals] for k, vals in history.items()}


def save_bundle(
    hooks: WeightHooks,
    path: str | Path,
    model: Any,
    training_config: TrainingConfig,
    *,
    normalization: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a bundle at ``path`` (usually ``<output_dir>/wts.h5.zip``), atomically.

    The manifest's ``intensity_scale`` and ``probe.npy`` are the model's *current* values (the
    trained ones when trainable); the weights come from ``hooks.weights_to_bytes``.
    """
    s = float(hooks.model_intensity_scale(model))
    manifest = core_bundle.make_manifest(
        hooks.name,
        training_config.model,
        training_config,
        s,
        dict(normalization),
        list(MODEL_NAMES),
        extra=extra,
    )
    probe = np.asarray(hooks.model_probe(model), np.complex64)
    files = {
        core_bundle.PROBE_NAME: core_bundle.npy_bytes(probe),
        hooks.weights_entry: hooks.weights_to_bytes(model),
    }
    p = Path(path)
    core_bundle.write_bundle(p, manifest, files)
    logger.info("wrote bundle %s", p)
    return p


def bundle_configs(
    manifest: dict[str, Any], where: object
) -> tuple[ModelConfig, TrainingConfig | None]:
    """The model config (key ``model_config``, required) and training config (key
    ``training_config``, optional) of a manifest; anything unusable is a :class:`BundleError`
    naming ``where`` and the key."""
    mc = manifest.get("model_config")
    if not isinstance(mc, dict):
        raise BundleError(
            f"{where}: manifest key 'model_config': expected a JSON object, got {type(mc).__name__}"
        )
    try:
        model = ModelConfig.from_dict(mc)
    except (ConfigError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: manifest key 'model_config': {exc}") from exc
    tc = manifest.get("training_config")
    if tc is None:
        return model, None
    if not isinstance(tc, dict):
        raise BundleError(
            f"{where}: manifest key 'training_config': expected a JSON object or null, got "
            f"{type(tc).__name__}"
        )
    try:
        training = TrainingConfig.from_dict(tc)
    except (ConfigError, TypeError, ValueError) as exc:
        raise BundleError(f"{where}: manifest key 'training_config': {exc}") from exc
    return model, training


def bundle_intensity_scale(manifest: dict[str, Any], where: object) -> float:
    """The manifest's ``intensity_scale`` ``s``: a finite real > 0, else :class:`BundleError`."""
    s = manifest.get("intensity_scale")
    if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s) or s <= 0:
        raise BundleError(
            f"{where}: manifest key 'intensity_scale': expected a finite number > 0, got {s!r}"
        )
    return float(s)


def load_bundle(hooks: WeightHooks, path: str | Path) -> LoadedBundle:
    """Read a bundle written by :func:`save_bundle` for ``hooks.name`` (or the folder holding it).

    One rule for both backends: ``model_config`` is required, ``training_config`` optional;
    ``intensity_scale`` must be a finite number > 0 and agree with the scale held in the weights
    (relative ``1e-5``). Raises ``BundleBackendMismatchError`` for another backend's bundle and
    :class:`BundleError` for anything damaged or inconsistent.
    """
    p = core_bundle.bundle_file(path)
    b = core_bundle.read_bundle(p, expected_backend=hooks.name)
    model_config, training_config = bundle_configs(b.manifest, p)
    s = bundle_intensity_scale(b.manifest, p)
    probe = b.load_npy(core_bundle.PROBE_NAME)
    n = model_config.N
    if probe.shape != (n, n) or probe.dtype.kind not in "fc":
        raise BundleError(
            f"{p}: {core_bundle.PROBE_NAME}: expected a ({n}, {n}) complex array, got "
            f"{probe.dtype} {probe.shape}"
        )
    if not np.isfinite(probe).all():
        raise BundleError(f"{p}: {core_bundle.PROBE_NAME}: holds non-finite values")
    tc = training_config
    model = hooks.build_model(
        model_config,
        probe=probe.astype(np.complex64),
        intensity_scale=s,
        probe_trainable=bool(tc.probe_trainable) if tc else False,
        intensity_scale_trainable=bool(tc.intensity_scale_trainable) if tc else False,
    )
    hooks.weights_from_bytes(model, b.require(hooks.weights_entry), f"{p}:{hooks.weights_entry}")
    held = float(hooks.model_intensity_scale(model))
    if not (math.isfinite(held) and abs(held - s) <= _SCALE_RTOL * s):
        raise BundleError(
            f"{p}: manifest key 'intensity_scale' = {s!r} disagrees with the scale in "
            f"{hooks.weights_entry} ({held!r})"
        )
    return LoadedBundle(model, b.manifest, model_config, training_config, s, p)


# ----------------------------------------------------------------------------- skeleton
def train(
    hooks: BackendHooks,
    config: TrainingConfig,
    execution: ExecutionConfig | None = None,
    *,
    train_data: ScanData | None = None,
    test_data: ScanData | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train with ``hooks`` and write ``<output_dir>/wts.h5.zip`` and ``history.csv``.

    ``resume_from``: a checkpoint of this backend to continue from. With test data
    (``test_data`` or ``config.test_data_file``) the trained model also reconstructs it
    (:attr:`TrainResult.reconstruction`).
    """
    execution = execution or ExecutionConfig()
    t0 = time.perf_counter()
    # prepare_training reports missing ground truth (LossSpec.check_ground_truth), before fit.
    prepared = prepare_training(config, train_data)
    loss = LossSpec.from_training_config(config)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    recorder = HistoryRecorder(out / HISTORY_NAME)
    request = FitRequest(
        config=config,
        execution=execution,
        prepared=prepared,
        loss=loss,
        history=recorder,
        output_dir=out,
        resume_from=Path(resume_from) if resume_from is not None else None,
    )
    outcome = hooks.fit(request)
    history = outcome.history if outcome.history is not None else recorder.history()
    bundle_path = out / core_bundle.BUNDLE_NAME
    epochs = len(history.get("train_loss", []))
    if outcome.is_global_zero:
        save_bundle(
            hooks,
            bundle_path,
            outcome.model,
            config,
            normalization=prepared.normalization(),
            extra={"epochs_trained": epochs, "history": _json_history(history)},
        )
    fit_s = outcome.fit_s
    n_patterns = len(prepared.train) * config.model.C * max(1, epochs)
    timings = dict(
        prepared.timings,
        fit_s=fit_s,
        train_s=time.perf_counter() - t0,
        patterns_per_s=n_patterns / fit_s if fit_s > 0 else math.nan,
    )
    result = TrainResult(
        backend=hooks.name,
        bundle_path=bundle_path,
        history=history,
        intensity_scale=float(hooks.model_intensity_scale(outcome.model)),
        norm_factor=prepared.norm_factor,
        nphotons=prepared.nphotons,
        timings=timings,
        config=config.to_dict(),
        global_rank=outcome.global_rank,
        extra=dict(outcome.notes),
    )
    if outcome.is_global_zero and (test_data is not None or config.test_data_file is not None):
        inf_cfg = InferenceConfig(
            model=config.model,
            model_path=bundle_path,
            test_data_file=config.test_data_file,
            neighbor_count=config.neighbor_count,
            output_dir=config.output_dir,
            backend=hooks.name,
        )
        result.reconstruction = reconstruct(hooks, inf_cfg, execution, data=test_data)
    return result


def reconstruct(
    hooks: BackendHooks,
    config: InferenceConfig,
    execution: ExecutionConfig | None = None,
    *,
    data: ScanData | None = None,
    bundle: LoadedBundle | None = None,
) -> Reconstruction:
    """Reconstruct a scan with a trained bundle (``config.model_path``: archive or folder).

    Groups every position, predicts in chunks of ``execution.inference_batch_size`` and
    stitches each chunk as it arrives (bounded memory). N and gridsize come from the bundle.
    """
    execution = execution or ExecutionConfig()
    t0 = time.perf_counter()
    if bundle is None:
        if config.model_path is None:
            raise ConfigError(
                "InferenceConfig.model_path = None is invalid; allowed: a wts.h5.zip bundle "
                "(or the folder holding one)"
            )
        bundle = load_bundle(hooks, config.model_path)
    load_s = time.perf_counter() - t0
    prepared = prepare_inference(config, bundle.manifest, data)
    predict = hooks.make_predict(bundle.model, execution)
    result = run_inference(prepared, predict, execution.inference_batch_size, hooks.name)
    result.timings["load_bundle_s"] = load_s
    result.timings["total_s"] = time.perf_counter() - t0
    return result
