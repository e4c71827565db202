"""Keras ``fit`` training (``specs/training.md``): the trainer model, datasets and callbacks
(devices, strategy and precision: :mod:`ptycho_tf.execution`). :class:`PtychoTrainer` wraps the
``autoencoder`` and computes :func:`ptycho_tf.losses.loss_terms`, so Keras logs ``loss``,
``nll``, ``mae`` (and ``val_*``); :class:`HistoryCallback` hands them to core's
:class:`~ptycho_core.training.HistoryRecorder`. The learning-rate policy, the monitor fallback
and the resumable state are core's (:mod:`ptycho_core.training`, :mod:`ptycho_core.checkpoint`);
this module only maps them onto Keras.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ptycho_core import checkpoint
from ptycho_core.checkpoint import STATE_NAME, TrainingSnapshot
from ptycho_core.engine import FitRequest
from ptycho_core.io import atomic_write
from ptycho_core.seeding import batch_order
from ptycho_core.training import (
    PLATEAU_FACTOR,
    PLATEAU_PATIENCE,
    HistoryRecorder,
    LossSpec,
    min_lr,
    monitored_metric,
    scheduled_lr,
    unprefixed_name,
)
from ptycho_tf.bundle import NAME, keras_weights_bytes
from ptycho_tf.losses import loss_terms

__all__ = [
    "PtychoTrainer",
    "HistoryCallback",
    "TrainingState",
    "make_dataset",
    "restore_training_state",
    "build_callbacks",
]


class PtychoTrainer(keras.Model):
    """Wraps the ``autoencoder``; ``compute_loss`` adds the physics (or supervised) loss.

    Inputs per batch: ``x = {"x": (B, N, N, C) float32 s·α·X, "offsets": (B, C, 2)}`` and, when
    the loss needs ground truth, ``y = (B, N, N, C) complex64`` patches.
    """

    def __init__(self, autoencoder: keras.Model, loss: LossSpec, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", "ptycho_trainer"), **kwargs)
        self.autoencoder = autoencoder
        self.loss_spec = loss
        self.component_trackers = [keras.metrics.Mean(name=n) for n in loss.components]

    def call(self, inputs, training=False):
        return self.autoencoder(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = loss_terms(y_pred, x["x"], y, self.loss_spec)
        batch = tf.shape(x["x"])[0]
        for tracker in self.component_trackers:
            tracker.update_state(terms[tracker.name], sample_weight=batch)
        # the optimizer sums the replicas' gradients
        return terms["loss"] / float(tf.distribute.get_strategy().num_replicas_in_sync)

    @property
    def metrics(self):
        return list(super().metrics) + list(self.component_trackers)


def make_dataset(
    grouped: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    with_ground_truth: bool,
    epochs: tuple[int, int] = (0, 1),
) -> tf.data.Dataset:
    """``tf.data`` pipeline over a :class:`ptycho_core.grouping.GroupedData` (already scaled to
    ``s·α·X``): elements ``{"x", "offsets"}`` (+ ``Y`` channels-last) batched by ``batch_size``.

    With ``shuffle``: one pass over the data for each epoch ``e`` in ``range(*epochs)``, in the
    order :func:`ptycho_core.seeding.batch_order` ``(n, seed, e)`` (as PyTorch), batches never
    crossing an epoch (:func:`steps_per_epoch` batches per epoch; give Keras
    ``steps_per_epoch``). Epoch ``e``'s order depends on nothing else, so a resumed run
    (``epochs[0] > 0``) sees the batches of the uninterrupted one (``specs/tf-backend.md``).
    Without ``shuffle``: one pass in order."""
    n = len(grouped)
    first, stop = (int(epochs[0]), int(epochs[1])) if shuffle else (0, 1)
    x = {
        "x": tf.constant(grouped.channels_last().astype(np.float32)),
        "offsets": tf.constant(np.asarray(grouped.offsets, np.float32)),
    }
    # core's LossSpec.check_ground_truth ran before any ground truth is asked for
    y = tf.constant(grouped.channels_last("Y").astype(np.complex64)) if with_ground_truth else None

    def core_order(epoch: Any) -> np.ndarray:  # the PyTorch backend's order too
        return batch_order(n, int(seed), int(epoch))

    def epoch_order(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            order = tf.numpy_function(core_order, [epoch], tf.int64, stateful=False)
            order.set_shape([n])
        return tf.data.Dataset.from_tensor_slices(order).batch(int(batch_size))

    def gather(idx: tf.Tensor) -> Any:
        inputs = {k: tf.gather(t, idx) for k, t in x.items()}
        return (inputs, tf.gather(y, idx)) if y is not None else inputs

    ds = tf.data.Dataset.range(first, max(first, stop)).flat_map(epoch_order)
    batches = max(0, stop - first) * math.ceil(n / int(batch_size))  # Keras wants it known
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.map(gather).prefetch(2)


class HistoryCallback(keras.callbacks.Callback):
    """Hands each epoch's Keras logs and the optimizer's rate to core's
    :meth:`~ptycho_core.training.HistoryRecorder.record_logs` (it writes ``history.csv`` and
    logs the progress line). Place it first so ``lr`` is the rate used during the epoch."""

    def __init__(self, recorder: HistoryRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        lr = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
        self.recorder.record_logs(epoch, logs or {}, lr=lr)


def restore_training_state(
    snapshot: TrainingSnapshot,
    autoencoder: keras.Model,
    trainer: keras.Model,
    strategy: tf.distribute.Strategy,
) -> None:
    """Put ``snapshot``'s weights into ``autoencoder`` and its optimizer variables into
    ``trainer.optimizer`` (built here, in ``strategy``); shapes must match exactly
    (:func:`~ptycho_core.checkpoint.assign_state`)."""
    with strategy.scope():
        if not trainer.optimizer.built:
            trainer.optimizer.build(trainer.trainable_variables)
    optimizer = trainer.optimizer.variables
    checkpoint.assign_state(snapshot, weights=autoencoder.weights, optimizer=optimizer)


class TrainingState(keras.callbacks.Callback):
    """Checkpoints in ``folder`` after every epoch (``enable_checkpointing``): the autoencoder's
    best weights by ``monitor`` (a Keras log name and ``"min"``/``"max"``) as
    ``best.weights.h5``, and all a resumed run needs as ``last.state.npz``
    (:func:`ptycho_core.checkpoint.write_training_state`: weights, optimizer variables, epoch,
    history rows, and the carried-over state of the callbacks in :data:`_CALLBACK_FIELDS`, this
    one's ``best`` included), each written atomically. Place it last so it sees the epoch's
    learning-rate change and early-stopping decision. ``folder = None`` writes nothing.

    ``resume``: a snapshot whose callback state is put back in ``on_train_begin`` (Keras' own
    callbacks reset theirs there; this one runs after them)."""

    def __init__(
        self,
        autoencoder: keras.Model,
        folder: Path | None,
        recorder: HistoryRecorder,
        callbacks: list[keras.callbacks.Callback],
        nepochs: int,
        *,
        monitor: tuple[str, str] = ("val_loss", "min"),
        resume: TrainingSnapshot | None = None,
    ) -> None:
        super().__init__()
        self.autoencoder, self.recorder, self.nepochs = autoencoder, recorder, int(nepochs)
        self.folder = Path(folder) if folder is not None else None
        self.monitor, self.mode = monitor
        self.best = math.inf if self.mode == "min" else -math.inf
        self.callbacks, self.resume = [*callbacks, self], resume

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.resume is not None:
            checkpoint.restore_callback_state(self.resume, self.callbacks)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.folder is None:
            return
        value = float((logs or {}).get(self.monitor, math.nan))
        if math.isfinite(value) and (
            value < self.best if self.mode == "min" else value > self.best
        ):
            self.best = value
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.folder / "best.weights.h5") as fh:
                fh.write(keras_weights_bytes(self.autoencoder))
        snapshot = TrainingSnapshot(
            backend=NAME,
            epoch=epoch,
            nepochs=self.nepochs,
            stopped=bool(getattr(self.model, "stop_training", False)),
            history=self.recorder.state_dict(),
            callbacks=checkpoint.callback_state(self.callbacks, _CALLBACK_FIELDS),
            weights=[keras.ops.convert_to_numpy(w) for w in self.autoencoder.weights],
            optimizer=[keras.ops.convert_to_numpy(v) for v in self.model.optimizer.variables],
        )
        checkpoint.write_training_state(self.folder / STATE_NAME, snapshot)


#: Callback attributes that carry over epochs (Keras resets them in ``on_train_begin``).
_CALLBACK_FIELDS: dict[type, tuple[str, ...]] = {
    keras.callbacks.ReduceLROnPlateau: ("wait", "cooldown_counter", "best"),
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    TrainingState: ("best",),
}


def build_callbacks(
    request: FitRequest,
    autoencoder: keras.Model,
    *,
    has_validation: bool,
    resume: TrainingSnapshot | None = None,
) -> list[keras.callbacks.Callback]:
    """The callbacks for ``request.execution``: :class:`HistoryCallback` (into
    ``request.history``) first, then core's learning-rate policy (``plateau``:
    ``ReduceLROnPlateau``; ``cosine``/``step``: :func:`~ptycho_core.training.scheduled_lr` per
    epoch; ``none``), EarlyStopping (``early_stop_patience``) and, last, :class:`TrainingState`
    (checkpoints under ``<request.output_dir>/checkpoints`` with ``enable_checkpointing``; also
    without, to put back the callback state of ``resume``). Monitors are core's
    :func:`~ptycho_core.training.monitored_metric` under their Keras names."""
    execution, nepochs = request.execution, request.config.nepochs
    cbs: list[keras.callbacks.Callback] = [HistoryCallback(request.history)]
    lr0, name = float(execution.learning_rate), execution.scheduler
    monitor = unprefixed_name(monitored_metric("val_loss", has_validation))
    if name == "plateau":
        plateau = dict(factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE, min_lr=min_lr(lr0))
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, verbose=0, **plateau))
    elif name != "none":
        cbs.append(
            keras.callbacks.LearningRateScheduler(
                lambda epoch, lr: scheduled_lr(name, lr0, epoch, nepochs)
            )
        )
    patience = int(execution.early_stop_patience)
    cbs.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="min", patience=patience))
    folder = Path(request.output_dir) / "checkpoints" if execution.enable_checkpointing else None
    if folder is not None or resume is not None:
        metric = monitored_metric(execution.checkpoint_monitor_metric, has_validation)
        best = (unprefixed_name(metric), execution.checkpoint_mode)
        args = (autoencoder, folder, request.history, cbs, nepochs)
        cbs.append(TrainingState(*args, monitor=best, resume=resume))
    return cbs
