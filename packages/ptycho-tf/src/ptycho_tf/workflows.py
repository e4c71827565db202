"""Train and reconstruct with the TensorFlow backend (``specs/training.md``): the skeleton is
:mod:`ptycho_core.engine`'s; this module supplies its :class:`TFHooks` (Keras ``fit`` and
prediction; the weight bytes come from :class:`~ptycho_tf.bundle.TFBundleHooks`). The model the
hooks pass around is a :class:`~ptycho_tf.model.PtychoModels`. Execution fields outside
:data:`HONOURED_EXECUTION_FIELDS` set away from their default are logged as ignored and reported
in ``TrainResult.extra["ignored_execution"]`` (``specs/tf-backend.md``).
"""

from __future__ import annotations

import contextlib
import logging
import time

import keras
import numpy as np
import tensorflow as tf

from ptycho_core import engine
from ptycho_core.config import (
    ExecutionConfig,
    InferenceConfig,
    TrainingConfig,
    ignored_execution_fields,
)
from ptycho_core.engine import FitOutcome, FitRequest, LoadedBundle, TrainResult
from ptycho_core.errors import ConfigError
from ptycho_core.grouping import GroupedData
from ptycho_core.io import ScanData
from ptycho_core.workflow import Reconstruction
from ptycho_tf import HONOURED_EXECUTION_FIELDS, HONOURED_VALUES
from ptycho_tf.bundle import NAME, TFBundleHooks
from ptycho_tf.model import PtychoModels, build_models
from ptycho_tf.training import (
    PtychoTrainer,
    build_callbacks,
    make_dataset,
    resolve_strategy,
    select_devices,
)

__all__ = [
    "HONOURED_EXECUTION_FIELDS",
    "HONOURED_VALUES",
    "NAME",
    "TFHooks",
    "build_training_run",
    "reconstruct",
    "train",
]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _op_determinism(enabled: bool):
    """Enable TF op determinism for the block, then restore the previous process state (TF's
    public API can only enable it; the query/disable pair is ``tensorflow.python.framework``'s)."""
    from tensorflow.python.framework import config as tf_config

    turn_on = enabled and not tf_config.is_op_determinism_enabled()
    if turn_on:
        tf_config.enable_op_determinism()
    try:
        yield
    finally:
        if turn_on:
            tf_config.disable_op_determinism()


def build_training_run(
    request: FitRequest, strategy: tf.distribute.Strategy
) -> tuple[PtychoModels, PtychoTrainer]:
    """Seed, then build the models and the :class:`PtychoTrainer` (``request.loss``) compiled
    in ``strategy``. Clearing the Keras session and seeding right before the layers are created
    gives one seed identical initial weights, and repeated runs in one process accumulate no
    Keras state."""
    config, prepared = request.config, request.prepared
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
        trainer = PtychoTrainer(models.autoencoder, request.loss)
        optimizer = keras.optimizers.Adam(float(request.execution.learning_rate))
        trainer.compile(optimizer=optimizer, jit_compile=False)  # data-dependent canvas size
    return models, trainer


class TFHooks(TFBundleHooks):
    """:class:`ptycho_core.engine.BackendHooks` for TensorFlow / Keras 3."""

    def fit(self, request: FitRequest) -> FitOutcome:
        """Seed, build and compile in the device strategy, then Keras ``fit`` with the
        callbacks of :func:`~ptycho_tf.training.build_callbacks` (history into
        ``request.history``). TensorFlow has no resumable checkpoints: ``resume_from`` is a
        :class:`ConfigError`."""
        config, execution, prepared = request.config, request.execution, request.prepared
        if request.resume_from is not None:
            raise ConfigError(
                f"resume_from={str(request.resume_from)!r} is invalid for the TensorFlow "
                "backend; allowed: None (it cannot resume a run)"
            )
        ignored = ignored_execution_fields(
            execution, HONOURED_EXECUTION_FIELDS, honoured_values=HONOURED_VALUES
        )
        if ignored:
            log.info("TensorFlow backend ignores these execution settings: %s", ignored)
        strategy = resolve_strategy(execution)
        gt = request.loss.needs_ground_truth

        def dataset(grouped: GroupedData, shuffle: bool) -> tf.data.Dataset:
            return make_dataset(
                grouped, config.batch_size, shuffle=shuffle, seed=config.seed, with_ground_truth=gt
            )

        with _op_determinism(bool(execution.deterministic)):
            models, trainer = build_training_run(request, strategy)
            has_val = prepared.val is not None
            val_ds = dataset(prepared.val, False) if prepared.val is not None else None
            callbacks = build_callbacks(request, models.autoencoder, has_validation=has_val)
            t0 = time.perf_counter()
            trainer.fit(
                dataset(prepared.train, True),
                validation_data=val_ds,
                epochs=int(config.nepochs),
                callbacks=callbacks,
                shuffle=False,  # the dataset shuffles (seeded)
                verbose=1 if execution.enable_progress_bar else 0,
            )
            fit_s = time.perf_counter() - t0
        return FitOutcome(models, fit_s, notes={"ignored_execution": ignored})

    def make_predict(self, model: PtychoModels, execution: ExecutionConfig):
        """``predict(batch) -> (B, C, N, N) complex64`` NumPy (torch layout, as
        :func:`ptycho_core.workflow.run_inference` expects) from a :class:`GroupedData` batch
        whose ``diffraction`` is ``s·α·X``. One traced graph serves every batch size; it runs
        on the first selected device (chunks are small and stitching is sequential)."""
        n, c = model.model_config.N, model.model_config.C
        net = model.diffraction_to_obj
        device = select_devices(execution)[0]

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, n, n, c), tf.float32),
                tf.TensorSpec((None, c, 2), tf.float32),
            ],
            autograph=False,
        )
        def run(x, off):
            return net({"x": x, "offsets": off}, training=False)

        def predict(batch: GroupedData) -> np.ndarray:
            x = batch.channels_last().astype(np.float32)
            off = np.asarray(batch.offsets, np.float32)
            with tf.device(device):
                obj = run(tf.constant(x), tf.constant(off)).numpy()
            return np.ascontiguousarray(np.moveaxis(obj, -1, 1))

        return predict


def train(
    config: TrainingConfig,
    execution: ExecutionConfig | None = None,
    *,
    train_data: ScanData | None = None,
    test_data: ScanData | None = None,
) -> TrainResult:
    """:func:`ptycho_core.engine.train` with :class:`TFHooks`: writes
    ``<output_dir>/wts.h5.zip`` and ``history.csv``; ``extra["ignored_execution"]`` lists the
    settings not honoured."""
    return engine.train(TFHooks(), config, execution, train_data=train_data, test_data=test_data)


def reconstruct(
    config: InferenceConfig,
    execution: ExecutionConfig | None = None,
    *,
    data: ScanData | None = None,
    bundle: LoadedBundle | None = None,
) -> Reconstruction:
    """:func:`ptycho_core.engine.reconstruct` with :class:`TFHooks` (``backend ==
    "tensorflow"``; N and gridsize come from the bundle)."""
    return engine.reconstruct(TFHooks(), config, execution, data=data, bundle=bundle)
