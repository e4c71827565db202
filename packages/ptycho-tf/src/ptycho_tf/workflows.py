"""Train and reconstruct end to end with the TensorFlow backend (``specs/training.md``).

Data preparation, grouping, batching and stitching come from :mod:`ptycho_core.workflow`; this
module adds the Keras model, ``fit`` and the bundle. Execution settings: the neutral subset of
:class:`ptycho_core.config.PyTorchExecutionConfig` (``specs/tf-backend.md``); the rest is logged
as ignored.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ptycho_core.bundle import BUNDLE_NAME
from ptycho_core.config import (
    InferenceConfig,
    PyTorchExecutionConfig,
    TrainingConfig,
    ignored_execution_fields,
)
from ptycho_core.errors import ConfigError
from ptycho_core.io import ScanData
from ptycho_core.workflow import prepare_inference, prepare_training, run_inference
from ptycho_tf.bundle import LoadedBundle, load_bundle, save_bundle
from ptycho_tf.losses import LossWeights
from ptycho_tf.model import PtychoModels, build_models
from ptycho_tf.training import (
    PtychoTrainer,
    build_callbacks,
    make_dataset,
    plot_history,
    resolve_strategy,
    select_devices,
)

__all__ = [
    "NAME",
    "train",
    "reconstruct",
    "build_training_run",
    "make_predict",
    "log_ignored_fields",
]

log = logging.getLogger(__name__)
NAME = "tensorflow"
LOSS_PLOT = "loss.png"


def log_ignored_fields(execution: PyTorchExecutionConfig | None) -> dict[str, Any]:
    """Log (INFO) and return the execution fields set away from their defaults that the
    TensorFlow backend does not honour."""
    ignored = ignored_execution_fields(execution)
    if ignored:
        log.info(
            "TensorFlow backend ignores these execution settings: %s",
            ", ".join(f"{k}={v!r}" for k, v in sorted(ignored.items())),
        )
    return ignored


@contextlib.contextmanager
def _op_determinism(enabled: bool):
    """Enable TF op determinism for the block and restore the previous process state after
    (TF's public API can only enable it; the query/disable pair lives in
    ``tensorflow.python.framework.config``; without it the setting stays on, logged)."""
    if not enabled:
        yield
        return
    try:
        from tensorflow.python.framework import config as tf_config

        before = bool(tf_config.is_op_determinism_enabled())
        restore = tf_config.disable_op_determinism
    except (ImportError, AttributeError):  # pragma: no cover - depends on the TF version
        before, restore = False, None
        log.info("op determinism enabled for the rest of the process (cannot be restored)")
    if not before:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not before and restore is not None:
            restore()


def build_training_run(
    config: TrainingConfig,
    execution: PyTorchExecutionConfig,
    prepared: Any,
    strategy: tf.distribute.Strategy,
) -> tuple[PtychoModels, PtychoTrainer]:
    """Seed, then build the models and the compiled :class:`PtychoTrainer` in ``strategy``.

    ``keras.backend.clear_session()`` then ``keras.utils.set_random_seed(config.seed)`` run
    immediately before the layers are created, so one seed gives identical initial weights and
    repeated runs in one process do not accumulate Keras state.
    """
    keras.backend.clear_session()  # drop Keras' global name/graph state of earlier builds
    keras.utils.set_random_seed(int(config.seed))
    with strategy.scope():
        models = build_models(
            config.model,
            probe=prepared.probe,
            intensity_scale=prepared.intensity_scale,
            probe_trainable=config.probe_trainable,
            intensity_scale_trainable=config.intensity_scale_trainable,
        )
        trainer = PtychoTrainer(models.autoencoder, LossWeights.from_training_config(config))
        trainer.compile(
            optimizer=keras.optimizers.Adam(float(execution.learning_rate)), jit_compile=False
        )  # the merge canvas has a data-dependent size
    return models, trainer


def train(
    config: TrainingConfig,
    execution: PyTorchExecutionConfig | None = None,
    *,
    train_data: ScanData | None = None,
    test_data: ScanData | None = None,
) -> dict[str, Any]:
    """Train and write ``<output_dir>/wts.h5.zip``, ``history.csv`` and ``loss.png``.

    With test data (``test_data`` or ``config.test_data_file``) the trained model also
    reconstructs it (result under ``"reconstruction"``). Returns ``backend``, ``bundle_path``,
    ``history`` (``epoch``, ``train_loss``, ``val_loss``, ``lr``, ``train_<c>``, ``val_<c>``),
    ``intensity_scale`` (trained ``s``), ``norm_factor``, ``nphotons``, ``timings`` (s;
    ``patterns_per_s`` = training patterns·epochs / fit time), ``config``, ``ignored_execution``.
    """
    execution = execution or PyTorchExecutionConfig()
    t0 = time.perf_counter()
    ignored = log_ignored_fields(execution)
    prepared = prepare_training(config, train_data)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    strategy = resolve_strategy(execution)
    weights = LossWeights.from_training_config(config)
    with _op_determinism(bool(execution.deterministic)):
        models, trainer = build_training_run(config, execution, prepared, strategy)
        gt = weights.needs_ground_truth
        train_ds = make_dataset(
            prepared.train, config.batch_size, shuffle=True, seed=config.seed, with_ground_truth=gt
        )
        val_ds = (
            make_dataset(
                prepared.val,
                config.batch_size,
                shuffle=False,
                seed=config.seed,
                with_ground_truth=gt,
            )
            if prepared.val is not None
            else None
        )
        callbacks = build_callbacks(
            execution,
            autoencoder=models.autoencoder,
            output_dir=out,
            nepochs=config.nepochs,
            has_validation=val_ds is not None,
            history_path=out / "history.csv",
        )
        t_fit = time.perf_counter()
        trainer.fit(
            train_ds,
            validation_data=val_ds,
            epochs=int(config.nepochs),
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles (seeded)
            verbose=1 if execution.enable_progress_bar else 0,
        )
        fit_s = time.perf_counter() - t_fit
    history = callbacks[0].history()
    bundle_path = save_bundle(
        out / BUNDLE_NAME,
        models,
        config,
        normalization=prepared.normalization(),
        extra={
            "epochs_trained": len(history.get("train_loss", [])),
            "history": {
                k: [v if math.isfinite(v) else None for v in vals] for k, vals in history.items()
            },
        },
    )
    plot_history(history, out / LOSS_PLOT)
    epochs = max(1, len(history.get("train_loss", [])))
    n_patterns = len(prepared.train) * config.model.C * epochs
    timings = dict(
        prepared.timings,
        fit_s=fit_s,
        train_s=time.perf_counter() - t0,
        patterns_per_s=n_patterns / fit_s if fit_s > 0 else math.nan,
    )
    result: dict[str, Any] = {
        "backend": NAME,
        "bundle_path": bundle_path,
        "history": history,
        "intensity_scale": models.intensity_scale,
        "norm_factor": prepared.norm_factor,
        "nphotons": prepared.nphotons,
        "timings": timings,
        "config": config.to_dict(),
        "ignored_execution": ignored,
    }
    if test_data is not None or config.test_data_file is not None:
        inf_cfg = InferenceConfig(
            model=config.model,
            model_path=bundle_path,
            test_data_file=config.test_data_file,
            neighbor_count=config.neighbor_count,
            output_dir=config.output_dir,
            backend=NAME,
        )
        result["reconstruction"] = reconstruct(inf_cfg, execution, data=test_data)
    return result


def make_predict(models: PtychoModels, device: str | None = None):
    """``predict(batch) -> (B, C, N, N) complex64`` NumPy (torch layout, as
    :func:`ptycho_core.workflow.run_inference` expects) from a GroupedData batch whose
    ``diffraction`` is ``s·α·X``. One traced graph serves every batch size."""
    mc = models.model_config
    n, c = mc.N, mc.C
    net = models.diffraction_to_obj

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, n, n, c), tf.float32),
            tf.TensorSpec((None, c, 2), tf.float32),
        ],
        autograph=False,
    )
    def run(x, off):
        return net({"x": x, "offsets": off}, training=False)

    def predict(batch: Any) -> np.ndarray:
        x = batch.channels_last().astype(np.float32)
        off = np.asarray(batch.offsets, np.float32)
        with tf.device(device) if device else contextlib.nullcontext():
            obj = run(tf.constant(x), tf.constant(off)).numpy()
        return np.ascontiguousarray(np.moveaxis(obj, -1, 1))

    return predict


def _inference_device(execution: PyTorchExecutionConfig) -> str:
    """Inference runs on the first selected device (several devices: still one; chunks are
    small and stitching is sequential)."""
    return select_devices(execution)[0]


def reconstruct(
    config: InferenceConfig,
    execution: PyTorchExecutionConfig | None = None,
    *,
    data: ScanData | None = None,
    bundle: LoadedBundle | None = None,
) -> dict[str, Any]:
    """Reconstruct a scan with a trained bundle (``config.model_path``: archive or folder).

    Groups every position, predicts in chunks of ``execution.inference_batch_size`` and
    stitches each chunk as it arrives (bounded memory). Returns the keys of
    :data:`ptycho_core.workflow.RESULT_KEYS` (``backend == "tensorflow"``) plus
    ``norm_factor`` and ``intensity_scale``. N and gridsize come from the bundle.
    """
    execution = execution or PyTorchExecutionConfig()
    t0 = time.perf_counter()
    if bundle is None:
        if config.model_path is None:
            raise ConfigError(
                "InferenceConfig.model_path = None is invalid; allowed: a "
                "wts.h5.zip bundle (or the folder holding one)"
            )
        bundle = load_bundle(config.model_path)
    load_s = time.perf_counter() - t0
    prepared = prepare_inference(config, bundle.manifest, data)
    predict = make_predict(bundle.models, _inference_device(execution))
    result = run_inference(prepared, predict, execution.inference_batch_size, NAME)
    result["timings"]["load_bundle_s"] = load_s
    result["timings"]["total_s"] = time.perf_counter() - t0
    return result
