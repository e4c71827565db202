"""Train and reconstruct with the TensorFlow backend (``specs/training.md``): the skeleton is
:mod:`ptycho_core.engine`'s; this module supplies its :class:`TFHooks` (Keras ``fit`` and
prediction; the weight bytes come from :class:`~ptycho_tf.bundle.TFBundleHooks`). The model the
hooks pass around is a :class:`~ptycho_tf.model.PtychoModels`. The execution settings are checked
by :func:`ptycho_core.runtime.check_execution` against :data:`ptycho_tf.SUPPORT`; those ignored
are reported in ``TrainResult.extra["ignored_execution"]`` (``specs/tf-backend.md``).
"""

from __future__ import annotations

import contextlib
import time
from functools import partial

import keras
import numpy as np
import tensorflow as tf

from ptycho_core import checkpoint, engine, runtime
from ptycho_core.config import ExecutionConfig
from ptycho_core.engine import FitOutcome, FitRequest
from ptycho_core.grouping import GroupedData
from ptycho_core.training import steps_per_epoch
from ptycho_tf import HONOURED_EXECUTION_FIELDS, HONOURED_VALUES, SUPPORT
from ptycho_tf.bundle import NAME, TFBundleHooks
from ptycho_tf.execution import resolve_strategy, set_precision, tf_devices
from ptycho_tf.model import PtychoModels
from ptycho_tf.training import PtychoTrainer, build_callbacks, make_dataset, restore_training_state

__all__ = [
    "HONOURED_EXECUTION_FIELDS",
    "HONOURED_VALUES",
    "HOOKS",
    "NAME",
    "TFHooks",
    "build_training_run",
    "reconstruct",
    "train",
]


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
    """Seed, then build the models (in ``execution.precision``, :func:`set_precision`) and the
    :class:`PtychoTrainer` (``request.loss``) compiled in ``strategy``, with XLA when
    ``execution.compile``. Clearing the Keras session and seeding right before the layers are
    created gives one seed identical initial weights, and repeated runs in one process
    accumulate no Keras state."""
    keras.backend.clear_session()  # drop Keras' global name/graph state of earlier builds
    keras.utils.set_random_seed(int(request.config.seed))
    with strategy.scope():
        models = engine.build_initial_model(HOOKS, request)
        trainer = PtychoTrainer(models.autoencoder, request.loss)
        set_precision(models, request.execution.precision)
        optimizer = keras.optimizers.Adam(float(request.execution.learning_rate))
        if request.execution.precision == "16-mixed":  # float16 gradients need loss scaling
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        trainer.compile(optimizer=optimizer, jit_compile=request.execution.compile)
    return models, trainer


class TFHooks(TFBundleHooks):
    """:class:`ptycho_core.engine.BackendHooks` for TensorFlow / Keras 3."""

    def fit(self, request: FitRequest) -> FitOutcome:
        """Seed, build and compile in the device strategy, then Keras ``fit`` with the
        callbacks of :func:`~ptycho_tf.training.build_callbacks` (history into
        ``request.history``). ``request.resume_from``: a training state
        (``checkpoints/last.state.npz``) to continue from — weights, optimizer, epoch, history
        and callback state are restored and the epoch-keyed shuffle replays the remaining
        epochs (``specs/tf-backend.md``)."""
        config, execution, prepared = request.config, request.execution, request.prepared
        snapshot = checkpoint.resume_state(request.resume_from, NAME, request.history)
        ignored = runtime.check_execution(execution, SUPPORT, tf_devices())
        strategy = resolve_strategy(execution)
        gt = request.loss.needs_ground_truth
        dataset = partial(
            make_dataset, batch_size=config.batch_size, seed=config.seed, with_ground_truth=gt
        )
        nepochs = int(config.nepochs)

        with _op_determinism(bool(execution.deterministic)):
            models, trainer = build_training_run(request, strategy)
            if request.initial_weights is not None:  # adaptation: continue from these weights
                self.weights_from_bytes(models, request.initial_weights, "initial_weights")
            first = 0 if snapshot is None else snapshot.first_epoch(nepochs)
            if snapshot is not None:
                restore_training_state(snapshot, models.autoencoder, trainer, strategy)
            val_ds = dataset(prepared.val, shuffle=False) if prepared.val is not None else None
            callbacks = build_callbacks(
                request, models.autoencoder, has_validation=val_ds is not None, resume=snapshot
            )
            t0 = time.perf_counter()
            if first < nepochs:
                train_ds = dataset(prepared.train, shuffle=True, epochs=(first, nepochs))
                trainer.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=nepochs,
                    initial_epoch=first,
                    steps_per_epoch=steps_per_epoch(len(prepared.train), config.batch_size),
                    callbacks=callbacks,
                    shuffle=False,  # the dataset shuffles (epoch-keyed, seeded)
                    verbose=1 if execution.enable_progress_bar else 0,
                )
            fit_s = time.perf_counter() - t0
        return FitOutcome(models, fit_s, notes={"ignored_execution": ignored})

    def make_predict(self, model: PtychoModels, execution: ExecutionConfig):
        """``predict(batch) -> (B, C, N, N) complex64`` NumPy (torch layout, as
        :func:`ptycho_core.workflow.run_inference` expects) from a :class:`GroupedData` batch
        whose ``diffraction`` is ``s·α·X``. One traced graph (XLA with ``execution.compile``)
        serves every batch size, in ``execution.precision``; it runs on the first selected
        device (chunks are small and stitching is sequential)."""
        n, c = model.model_config.N, model.model_config.C
        net, present = model.diffraction_to_obj, tf_devices()
        runtime.check_execution(execution, SUPPORT, present, training=False)
        set_precision(model, execution.precision)
        device = runtime.select_devices(execution, present, NAME)[0]

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, n, n, c), tf.float32),
                tf.TensorSpec((None, c, 2), tf.float32),
            ],
            autograph=False,
            jit_compile=execution.compile,
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


HOOKS = TFHooks()
#: ``train(config, execution=None, *, train_data=None, test_data=None)``:
#: :func:`ptycho_core.engine.train` with :data:`HOOKS`; writes ``<output_dir>/wts.h5.zip`` and
#: ``history.csv``; ``extra["ignored_execution"]`` lists the settings not honoured.
train = partial(engine.train, HOOKS)
#: ``reconstruct(config, execution=None, *, data=None, bundle=None, ...)``:
#: :func:`ptycho_core.engine.reconstruct` with :data:`HOOKS` (``backend == "tensorflow"``; N and
#: gridsize come from the bundle).
reconstruct = partial(engine.reconstruct, HOOKS)
