"""The train / reconstruct skeleton both backends run, and model bundles (``specs/training.md``).

A backend supplies a small hook object (:class:`BackendHooks`): build a model, fit it, turn its
weights into bytes and back, read its probe and intensity scale, and predict object patches for a
batch. Everything else — preparing the data, the loss specification and its ground-truth check,
the history, the bundle, the timings, the optional reconstruction of test data, the typed results
— is done here, once::

    hooks = MyHooks()
    result = engine.train(hooks, training_config, execution)       # TrainResult
    recon = engine.reconstruct(hooks, inference_config, execution)  # Reconstruction
    adapted = engine.adapt(hooks, bundle, scan, epochs=5)            # AdaptResult

:func:`adapt` fine-tunes a copy of a trained model on a new scan with the physics loss (the fit
starts from ``FitRequest.initial_weights``); ``reconstruct(..., adapt_epochs=K)`` does it first.

Bundles: :func:`save_bundle` writes ``manifest.json``, ``probe.npy`` and the backend's weight
entry (``hooks.weights_entry``); :func:`load_bundle` validates the manifest's configs and
intensity scale with one rule for both backends (``specs/data-contracts.md``), rebuilds the model
and loads the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ptycho_core import bundle as core_bundle
from ptycho_core.architecture import inference_projection_steps, physics_stages
from ptycho_core.config import (
    ExecutionConfig,
    InferenceConfig,
    ModelConfig,
    TrainingConfig,
    legacy_model_config,
)
from ptycho_core.errors import BundleError, ConfigError
from ptycho_core.grouping import GroupedData
from ptycho_core.io import ScanData, load_npz
from ptycho_core.training import HistoryRecorder, LossSpec
from ptycho_core.workflow import (
    InferenceShard,
    PreparedTraining,
    Reconstruction,
    prepare_inference,
    prepare_training,
    read_history_csv,
    run_inference,
)

__all__ = [
    "ADAPT_LEARNING_RATE",
    "AdaptResult",
    "HISTORY_NAME",
    "MODEL_NAMES",
    "BackendHooks",
    "WeightHooks",
    "FitOutcome",
    "build_initial_model",
    "check_inference_devices",
    "FitRequest",
    "LoadedBundle",
    "TrainResult",
    "adapt",
    "adaptation_config",
    "bundle_configs",
    "bundle_intensity_scale",
    "load_bundle",
    "reconstruct",
    "requested_devices",
    "save_bundle",
    "fit_history",
    "h5_state_mismatch",
    "state_mismatch",
    "train",
    "weights_mismatch_error",
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
    checkpoint to resume, or ``initial_weights`` to start from."""

    config: TrainingConfig
    execution: ExecutionConfig
    prepared: PreparedTraining
    loss: LossSpec
    history: HistoryRecorder
    output_dir: Path
    resume_from: Path | None = None
    #: Weight bytes (``weights_to_bytes``) to load right after the model is built: the fit then
    #: continues from them (adaptation, ``specs/training.md``); None trains from scratch.
    initial_weights: bytes | None = None


@dataclass(eq=False)
class FitOutcome:
    """What :meth:`BackendHooks.fit` returns.

    ``model``: the trained model (on any device; the hooks read it). ``history``: the
    per-epoch history when the recorder in the request could not hold it; None means "the
    recorder's", or its ``history.csv`` when it holds no rows (:func:`fit_history`).
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
def state_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    """How the arrays ``found`` differ from the model's ``expected`` (name → anything with a
    ``shape``; names and shapes compared), or "" when they fit: counts plus the first example of
    each kind. For :meth:`WeightHooks.weights_from_bytes` messages."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shapes = [
        k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(
            f"{len(shapes)} tensor(s) of another shape, e.g. {k}: {list(found[k].shape)} in the "
            f"weights, {list(expected[k].shape)} in the model"
        )
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected, e.g. {extra[0]}")
    return "; ".join(parts)


def h5_state_mismatch(expected: bytes, found: bytes, where: object) -> str:
    """:func:`state_mismatch` between two HDF5 weight files (bytes; every dataset by its path,
    e.g. Keras ``.weights.h5``); an unreadable ``found`` is a :class:`BundleError` naming
    ``where``."""
    import io

    import h5py

    def datasets(fh: Any) -> dict[str, Any]:
        names: list[str] = []
        fh.visit(names.append)
        return {n: fh[n] for n in names if isinstance(fh[n], h5py.Dataset)}

    try:
        with h5py.File(io.BytesIO(found), "r") as got, h5py.File(io.BytesIO(expected), "r") as want:
            return state_mismatch(datasets(want), datasets(got))
    except OSError as exc:
        raise BundleError(f"{where}: not a readable HDF5 file ({exc})") from exc


def weights_mismatch_error(where: object, reason: str | BaseException) -> BundleError:
    """The :class:`BundleError` for weights that do not fit the model built from the manifest,
    naming ``where``. ``reason``: a :func:`state_mismatch` text (as is), or the framework's
    exception, put on one line and cut at 160 characters (Keras and torch list every layer)."""
    detail = " ".join(str(reason).split())
    if isinstance(reason, BaseException) and len(detail) > 160:
        detail = detail[:160] + " …"
    return BundleError(
        f"{where}: weights do not match the architecture of the manifest's model_config ({detail})"
    )


def _json_history(history: dict[str, list[float]]) -> dict[str, list[float | None]]:
    return {k: [v if math.isfinite(v) else None for v in vals] for k, vals in history.items()}


def _manifest(
    hooks: WeightHooks,
    model: Any,
    training_config: TrainingConfig,
    normalization: dict[str, Any],
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest :func:`save_bundle` writes for ``model`` (its current intensity scale)."""
    return core_bundle.make_manifest(
        hooks.name,
        training_config.model,
        training_config,
        float(hooks.model_intensity_scale(model)),
        dict(normalization),
        list(MODEL_NAMES),
        extra=extra,
    )


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
    manifest = _manifest(hooks, model, training_config, normalization, extra)
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
    naming ``where`` and the key.

    Legacy rule (``specs/model.md``): a model config without ``merge_weights`` was trained with
    the centre-square merge, one without ``generator`` with the CNN generator and one without
    ``physics_stages`` with none, so they read as ``merge_weights='centre'``,
    ``generator='cnn'`` and ``physics_stages=0`` (in the training config's nested
    ``model`` too) and the bundle reconstructs exactly as before."""
    mc = manifest.get("model_config")
    if not isinstance(mc, dict):
        raise BundleError(
            f"{where}: manifest key 'model_config': expected a JSON object, got {type(mc).__name__}"
        )
    mc = legacy_model_config(mc)
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
    if isinstance(tc.get("model"), dict):
        tc = dict(tc, model=legacy_model_config(tc["model"]))
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
def fit_history(
    outcome: FitOutcome, recorder: HistoryRecorder, output_dir: Path
) -> dict[str, list[float]]:
    """The history of a fit: ``outcome.history``, else the recorder's, else — when the recorder
    holds no rows (``ddp_spawn``: rank 0 ran in a child process) — the ``history.csv`` that
    rank 0 wrote in ``output_dir``."""
    if outcome.history is not None:
        return outcome.history
    if not recorder.rows and (Path(output_dir) / HISTORY_NAME).exists():
        return read_history_csv(Path(output_dir) / HISTORY_NAME)
    return recorder.history()


def build_initial_model(hooks: WeightHooks, request: FitRequest) -> Any:
    """``hooks.build_model`` for ``request``: the config's architecture and trainability, the
    prepared (normalised) probe and intensity scale ``s``. A backend's :meth:`BackendHooks.fit`
    calls it right after seeding. A model with ``load_weight_arrays`` (both backends) then gets
    the framework-neutral initial weights of :func:`ptycho_core.seeding.initial_weights`
    (``config.seed``), so both backends start from the same network (``specs/training.md``)."""
    from ptycho_core.seeding import initial_weights

    config, prepared = request.config, request.prepared
    model = hooks.build_model(
        config.model,
        probe=prepared.probe,
        intensity_scale=prepared.intensity_scale,
        probe_trainable=config.probe_trainable,
        intensity_scale_trainable=config.intensity_scale_trainable,
    )
    load = getattr(model, "load_weight_arrays", None)
    if load is not None:
        init = initial_weights(
            config.model,
            config.seed,
            probe=prepared.probe,
            intensity_scale=prepared.intensity_scale,
        )
        load(init, "initial weights")
    return model


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
    recorder = HistoryRecorder(out / HISTORY_NAME, total_epochs=config.nepochs)
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
    history = fit_history(outcome, recorder, out)
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
        # rank 0 alone reconstructs the test data: never a multi-process inference here
        result.reconstruction = reconstruct(
            hooks, inf_cfg, execution, data=test_data, distributed=False
        )
    return result


def with_projection_steps(
    hooks: BackendHooks, bundle: LoadedBundle, steps: int | None
) -> LoadedBundle:
    """``bundle`` with an inference model that runs ``steps`` data projections per physics stage
    (``ModelConfig.inference_projection_steps``, ``specs/model.md``): the model is rebuilt with
    that count and the same weights, ``bundle`` itself is not modified. The bundle as it is when
    ``steps`` is None, equals its own count, or the model has no stages."""
    mc = bundle.model_config
    if steps is None or not physics_stages(mc) or steps == inference_projection_steps(mc):
        return bundle
    mc = dataclasses.replace(mc, inference_projection_steps=int(steps))
    tc = bundle.training_config
    model = hooks.build_model(
        mc,
        probe=hooks.model_probe(bundle.model),
        intensity_scale=bundle.intensity_scale,
        probe_trainable=bool(tc.probe_trainable) if tc else False,
        intensity_scale_trainable=bool(tc.intensity_scale_trainable) if tc else False,
    )
    where = f"{bundle.path or 'bundle'} (rebuilt for projection_steps = {steps})"
    hooks.weights_from_bytes(model, hooks.weights_to_bytes(bundle.model), where)
    return dataclasses.replace(bundle, model=model, model_config=mc)


def reconstruct(
    hooks: BackendHooks,
    config: InferenceConfig,
    execution: ExecutionConfig | None = None,
    *,
    data: ScanData | None = None,
    bundle: LoadedBundle | None = None,
    adapt_epochs: int = 0,
    save_adapted: str | Path | None = None,
    distributed: bool = True,
) -> Reconstruction:
    """Reconstruct a scan with a trained bundle (``config.model_path``: archive or folder).

    Multi-device (``specs/training.md``): when ``execution`` asks for more than one device
    (:func:`requested_devices`) and ``distributed`` is True, a backend with an
    ``inference_shard(execution)`` hook splits the batches across processes and sums the
    canvases; a backend without one raises :class:`ConfigError`.

    Groups every position, predicts in chunks of ``execution.inference_batch_size`` and
    stitches each chunk as it arrives (bounded memory). N and gridsize come from the bundle.

    ``config.projection_steps`` (when set) reconstructs with that many data projections per
    physics stage (:func:`with_projection_steps`). ``adapt_epochs`` > 0 first fine-tunes a copy
    of the model on this scan (:func:`adapt`; the bundle is not modified) and reconstructs with
    the adapted copy; ``save_adapted`` (a folder, only with ``adapt_epochs`` > 0) keeps it as
    ``wts.h5.zip`` + ``history.csv``. Timings then include ``adapt_s``. ``adapt_epochs = 0`` is
    exactly the plain reconstruction.
    """
    execution = execution or ExecutionConfig()
    epochs = _check_epochs(adapt_epochs, "adapt_epochs", minimum=0)
    if save_adapted is not None and epochs == 0:
        raise ConfigError(
            f"save_adapted = {str(save_adapted)!r} is invalid with adapt_epochs = 0; allowed: "
            "None, or adapt_epochs >= 1 (there is no adapted model to save)"
        )
    if distributed:
        check_inference_devices(hooks, execution)
    t0 = time.perf_counter()
    if bundle is None:
        if config.model_path is None:
            raise ConfigError(
                "InferenceConfig.model_path = None is invalid; allowed: a wts.h5.zip bundle "
                "(or the folder holding one)"
            )
        bundle = load_bundle(hooks, config.model_path)
    load_s = time.perf_counter() - t0
    adapt_s = None
    if epochs:
        if data is None:
            if config.test_data_file is None:
                raise ConfigError(
                    "InferenceConfig.test_data_file = None is invalid; allowed: a path to an NPZ "
                    "scan when no data are passed in"
                )
            data = load_npz(config.test_data_file)
        adapted = adapt(
            hooks, bundle, data, epochs=epochs, execution=execution, output_dir=save_adapted
        )
        bundle, adapt_s = adapted.bundle, adapted.timings["adapt_s"]
    bundle = with_projection_steps(hooks, bundle, config.projection_steps)
    shard = _inference_shard(hooks, execution) if distributed else None
    prepared = prepare_inference(config, bundle.manifest, data)
    predict = hooks.make_predict(bundle.model, execution)
    result = run_inference(
        prepared, predict, execution.inference_batch_size, hooks.name, shard=shard
    )
    result.timings["load_bundle_s"] = load_s
    if adapt_s is not None:
        result.timings["adapt_s"] = adapt_s
    result.timings["total_s"] = time.perf_counter() - t0
    return result


def requested_devices(execution: ExecutionConfig) -> int:
    """Processes an inference is asked to span: ``devices`` (an int > 1, or a list's length)
    times ``num_nodes``; ``'auto'`` and ``-1`` count as 1 (one process, the default device)."""
    d = execution.devices
    per_node = len(d) if isinstance(d, tuple | list) else (d if isinstance(d, int) and d > 1 else 1)
    nodes = getattr(execution, "num_nodes", 1)
    return int(per_node) * (int(nodes) if isinstance(nodes, int) and nodes > 1 else 1)


def check_inference_devices(hooks: BackendHooks, execution: ExecutionConfig) -> None:
    """:class:`ConfigError` when ``execution`` asks for several devices (:func:`requested_devices`)
    and the backend has no ``inference_shard`` hook (TensorFlow: one process)."""
    n = requested_devices(execution)
    if n > 1 and getattr(hooks, "inference_shard", None) is None:
        raise ConfigError(
            f"ExecutionConfig.devices = {execution.devices!r} asks for {n} devices; the "
            f"{hooks.name} backend reconstructs in one process; allowed: devices = 1 (or "
            "reconstruct with the pytorch backend, which splits positions across devices)"
        )


def _inference_shard(hooks: BackendHooks, execution: ExecutionConfig) -> InferenceShard | None:
    check_inference_devices(hooks, execution)
    make = getattr(hooks, "inference_shard", None)
    shard: InferenceShard | None = None if make is None else make(execution)
    return shard


# ----------------------------------------------------------------------------- adaptation
#: Default learning rate of :func:`adapt` (measured, ``specs/training.md`` "Adaptation").
ADAPT_LEARNING_RATE = 3e-4


@dataclass(eq=False)
class AdaptResult:
    """The outcome of :func:`adapt`.

    ``bundle``: the adapted model as a :class:`LoadedBundle` — pass it to :func:`reconstruct`
    as ``bundle=`` (its ``path`` is the saved ``wts.h5.zip``, or None when not saved).
    ``history``: per-epoch losses on the scan, columns as in ``history.csv``. ``adapted_from``:
    the provenance also written to the manifest (``bundle``, ``sha256`` of the source archive,
    ``scan`` file name, ``epochs``, ``learning_rate``). ``timings``: ``prepare_s``, ``fit_s``,
    ``adapt_s`` (seconds).
    """

    bundle: LoadedBundle
    history: dict[str, list[float]]
    adapted_from: dict[str, Any]
    timings: dict[str, float]

    @property
    def bundle_path(self) -> Path | None:
        return self.bundle.path


def _check_epochs(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} = {value!r} is invalid; allowed: an integer >= {minimum}")
    return int(value)


def _file_sha256(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def adaptation_config(
    bundle: LoadedBundle, *, epochs: int, output_dir: str | Path, backend: str
) -> TrainingConfig:
    """The training config of an adaptation run (``specs/training.md`` "Adaptation").

    The bundle's training config (defaults when it has none) with its model config and:
    ``nepochs = epochs``; every position of the new scan (``n_groups``, ``n_subsample`` None),
    no validation split; ``nphotons = (s·N/2)²`` so that ``s`` is the bundle's intensity scale
    (the one :func:`reconstruct` scales the input by); ``intensity_scale_trainable = False``
    (``s`` stays that scale); ``realspace_weight = 0`` (no ground truth: the physics loss only).
    """
    mc = bundle.model_config
    where = bundle.path or "<in-memory bundle>"
    if mc.model_type != "pinn":
        raise ConfigError(
            f"{where}: manifest key 'model_config': model_type = {mc.model_type!r} cannot be "
            "adapted; allowed: 'pinn' (adaptation fits the physics loss, which a supervised "
            "model does not have)"
        )
    base = bundle.training_config or TrainingConfig(model=mc, backend=backend)
    if base.nll_weight <= 0 and base.mae_weight <= 0:
        raise ConfigError(
            f"{where}: manifest key 'training_config': nll_weight = mae_weight = 0 leaves no "
            "physics loss to adapt with; allowed: nll_weight > 0 or mae_weight > 0"
        )
    s = float(bundle.intensity_scale)
    return dataclasses.replace(
        base,
        model=mc,
        train_data_file=None,
        test_data_file=None,
        nepochs=int(epochs),
        nphotons=(s * mc.N / 2) ** 2,
        n_groups=None,
        n_subsample=None,
        subsample_seed=None,
        realspace_weight=0.0,
        intensity_scale_trainable=False,
        validation_fraction=0.0,
        output_dir=Path(output_dir),
        backend=backend,
    )


def adapt(
    hooks: BackendHooks,
    bundle: LoadedBundle | str | Path,
    scan: ScanData | str | Path,
    *,
    epochs: int,
    execution: ExecutionConfig | None = None,
    output_dir: str | Path | None = None,
    learning_rate: float | None = None,
) -> AdaptResult:
    """Fine-tune a copy of a trained model on a scan's own diffraction (``specs/training.md``
    "Adaptation"): the physics loss, no ground truth. The bundle on disk is not touched.

    ``bundle``: a :class:`LoadedBundle` (its model is not modified: the fit builds a fresh model
    and loads its weights through ``FitRequest.initial_weights``) or a bundle path. ``scan``:
    the scan to adapt to (a :class:`ScanData` or an NPZ path). The input is ``s·α·X`` with the
    bundle's ``s`` and the scan's own ``α`` — exactly what :func:`reconstruct` feeds the adapted
    model; the probe is the model's. ``execution``: as for training, with checkpoints and the
    framework logger off, and ``learning_rate`` (default :data:`ADAPT_LEARNING_RATE`).
    ``output_dir``: where to save the adapted model (``wts.h5.zip``, loadable by
    :func:`load_bundle`, manifest key ``adapted_from``) and ``history.csv``; None keeps it in
    memory only.
    """
    t0 = time.perf_counter()
    epochs = _check_epochs(epochs, "epochs", minimum=1)
    lb = bundle if isinstance(bundle, LoadedBundle) else load_bundle(hooks, bundle)
    data = scan if isinstance(scan, ScanData) else load_npz(scan)
    lr = ADAPT_LEARNING_RATE if learning_rate is None else float(learning_rate)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning_rate = {learning_rate!r} is invalid; allowed: a number > 0")
    execution = dataclasses.replace(
        execution or ExecutionConfig(),
        learning_rate=lr,
        enable_checkpointing=False,
        logger_backend="none",
    )
    with contextlib.ExitStack() as stack:
        if output_dir is None:
            out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ptycho_adapt_")))
        else:
            out = Path(output_dir)
            out.mkdir(parents=True, exist_ok=True)
        config = adaptation_config(lb, epochs=epochs, output_dir=out, backend=hooks.name)
        prepared = _prepared_for_bundle(prepare_training(config, data), hooks, lb)
        recorder = HistoryRecorder(out / HISTORY_NAME, total_epochs=config.nepochs)
        request = FitRequest(
            config=config,
            execution=execution,
            prepared=prepared,
            loss=LossSpec.from_training_config(config),
            history=recorder,
            output_dir=out,
            initial_weights=hooks.weights_to_bytes(lb.model),
        )
        logger.info(
            "adapting %s to %s: %d epochs on %d groups, learning rate %.3g",
            lb.path or "the model",
            data.source or "the scan",
            epochs,
            len(prepared.train),
            lr,
        )
        outcome = hooks.fit(request)
        history = fit_history(outcome, recorder, out)
        adapted_from = {
            "bundle": str(lb.path) if lb.path is not None else None,
            "sha256": _file_sha256(lb.path),
            "scan": Path(data.source).name if data.source else None,
            "epochs": epochs,
            "learning_rate": lr,
        }
        extra = {
            "adapted_from": adapted_from,
            "epochs_trained": len(history.get("train_loss", [])),
            "history": _json_history(history),
        }
        normalization = prepared.normalization()
        saved = None
        if output_dir is not None and outcome.is_global_zero:
            saved = save_bundle(
                hooks,
                out / core_bundle.BUNDLE_NAME,
                outcome.model,
                config,
                normalization=normalization,
                extra=extra,
            )
        manifest = _manifest(hooks, outcome.model, config, normalization, extra)
    adapted = LoadedBundle(
        outcome.model,
        manifest,
        lb.model_config,
        config,
        float(hooks.model_intensity_scale(outcome.model)),
        saved,
    )
    timings = dict(prepared.timings, fit_s=outcome.fit_s, adapt_s=time.perf_counter() - t0)
    return AdaptResult(adapted, history, adapted_from, timings)


def _prepared_for_bundle(
    prepared: PreparedTraining, hooks: WeightHooks, bundle: LoadedBundle
) -> PreparedTraining:
    """``prepared`` with the bundle's intensity scale ``s`` (exactly) and the model's probe: the
    input becomes ``s·α·X`` with the scan's ``α``, as in :func:`reconstruct`."""
    s = float(bundle.intensity_scale)
    scale = s * prepared.norm_factor
    return dataclasses.replace(
        prepared,
        train=prepared.train.with_scale(scale),
        val=prepared.val.with_scale(scale) if prepared.val is not None else None,
        probe=np.asarray(hooks.model_probe(bundle.model), np.complex64),
        intensity_scale=s,
        nphotons=(s * bundle.model_config.N / 2) ** 2,
        nphotons_source="bundle",
    )
