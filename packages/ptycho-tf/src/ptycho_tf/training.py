"""Keras ``fit`` training (``specs/training.md``): the trainer model, datasets, callbacks and
the device strategy. :class:`PtychoTrainer` wraps the ``autoencoder`` and computes
:func:`ptycho_tf.losses.loss_terms`, so Keras logs ``loss``, ``nll``, ``mae`` (and ``val_*``);
:class:`HistoryCallback` hands them to core's :class:`~ptycho_core.training.HistoryRecorder`.
The learning-rate policy and the monitor fallback are :mod:`ptycho_core.training`'s; this module
only maps them onto Keras callbacks.
"""

from __future__ import annotations

import logging
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
from ptycho_core.training import (
    PLATEAU_FACTOR,
    PLATEAU_PATIENCE,
    HistoryRecorder,
    LossSpec,
    min_lr,
    monitored_metric,
    scheduled_lr,
)
from ptycho_tf.bundle import NAME, keras_weights_bytes
from ptycho_tf.losses import loss_terms

__all__ = [
    "PtychoTrainer",
    "HistoryCallback",
    "AtomicBestWeights",
    "TrainingState",
    "make_dataset",
    "restore_training_state",
    "steps_per_epoch",
    "build_callbacks",
    "resolve_strategy",
    "select_devices",
]

log = logging.getLogger(__name__)


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
    order of a stateless shuffle keyed by ``(seed, e)``, batches never crossing an epoch
    (:func:`steps_per_epoch` batches per epoch; give Keras ``steps_per_epoch``). Epoch ``e``'s
    order depends on nothing else, so a resumed run (``epochs[0] > 0``) sees the batches of the
    uninterrupted one (``specs/tf-backend.md``). Without ``shuffle``: one pass in order."""
    n = len(grouped)
    first, stop = (int(epochs[0]), int(epochs[1])) if shuffle else (0, 1)
    x = {
        "x": tf.constant(grouped.channels_last().astype(np.float32)),
        "offsets": tf.constant(np.asarray(grouped.offsets, np.float32)),
    }
    # core's LossSpec.check_ground_truth ran before any ground truth is asked for
    y = tf.constant(grouped.channels_last("Y").astype(np.complex64)) if with_ground_truth else None

    def epoch_order(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            key = tf.stack([tf.constant(int(seed), tf.int64), epoch])
            order = tf.random.experimental.stateless_shuffle(order, seed=key)
        return tf.data.Dataset.from_tensor_slices(order).batch(int(batch_size))

    def gather(idx: tf.Tensor) -> Any:
        inputs = {k: tf.gather(t, idx) for k, t in x.items()}
        return (inputs, tf.gather(y, idx)) if y is not None else inputs

    ds = tf.data.Dataset.range(first, max(first, stop)).flat_map(epoch_order)
    batches = max(0, stop - first) * math.ceil(n / int(batch_size))  # Keras wants it known
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    return ds.map(gather).prefetch(2)


def steps_per_epoch(n_groups: int, batch_size: int) -> int:
    """Batches in one pass over ``n_groups`` groups (the last one may be short)."""
    return max(1, math.ceil(int(n_groups) / int(batch_size)))


class HistoryCallback(keras.callbacks.Callback):
    """Hands each epoch's Keras logs to a core :class:`HistoryRecorder` (which writes
    ``history.csv``): ``loss`` → ``train_loss``, ``<c>`` → ``train_<c>``, ``val_*`` unchanged,
    ``lr`` the optimizer's rate. Place it first so ``lr`` is the rate used during the epoch."""

    def __init__(self, recorder: HistoryRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        self.recorder.record(  # it logs the epoch's progress line
            epoch,
            train_loss=logs.pop("loss", math.nan),
            val_loss=logs.pop("val_loss", math.nan),
            lr=keras.ops.convert_to_numpy(self.model.optimizer.learning_rate),
            components={
                k if k.startswith("val_") else f"train_{k}": v
                for k, v in logs.items()
                if k != "learning_rate"
            },
        )


class AtomicBestWeights(keras.callbacks.Callback):
    """``enable_checkpointing``: keep the autoencoder's best weights (by ``monitor``, ``mode``)
    as ``<folder>/best.weights.h5`` and the latest as ``last.weights.h5`` (Keras weight files,
    each written atomically)."""

    def __init__(self, autoencoder: keras.Model, folder: Path, monitor: str, mode: str) -> None:
        super().__init__()
        self.autoencoder, self.folder = autoencoder, Path(folder)
        self.monitor, self.mode = monitor, mode
        self.best = math.inf if mode == "min" else -math.inf

    def _save(self, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.folder / name) as fh:
            fh.write(keras_weights_bytes(self.autoencoder))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._save("last.weights.h5")
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        better = value < self.best if self.mode == "min" else value > self.best
        if better:
            self.best = float(value)
            self._save("best.weights.h5")


#: Callback attributes that carry over epochs (Keras resets them in ``on_train_begin``).
_CALLBACK_FIELDS: dict[type, tuple[str, ...]] = {
    keras.callbacks.ReduceLROnPlateau: ("wait", "cooldown_counter", "best"),
    keras.callbacks.EarlyStopping: ("wait", "stopped_epoch", "best", "best_epoch"),
    AtomicBestWeights: ("best",),
}


def restore_training_state(
    snapshot: TrainingSnapshot,
    autoencoder: keras.Model,
    trainer: keras.Model,
    strategy: tf.distribute.Strategy,
) -> None:
    """Put ``snapshot``'s weights into ``autoencoder`` and its optimizer variables into
    ``trainer.optimizer`` (built here, in ``strategy``); shapes must match exactly
    (:func:`~ptycho_core.checkpoint.checked_arrays`)."""
    with strategy.scope():
        if not trainer.optimizer.built:
            trainer.optimizer.build(trainer.trainable_variables)
    pairs = {"weights": autoencoder.weights, "optimizer": trainer.optimizer.variables}
    arrays = {
        what: checkpoint.checked_arrays(snapshot, what, [(v.path, v.shape) for v in variables])
        for what, variables in pairs.items()
    }
    for what, variables in pairs.items():
        for var, arr in zip(variables, arrays[what], strict=True):
            var.assign(arr)


class TrainingState(keras.callbacks.Callback):
    """``enable_checkpointing``: after every epoch, write everything a resumed run needs to
    ``<folder>/last.state.npz`` (:func:`ptycho_core.checkpoint.write_training_state`) — the
    autoencoder's weights, the optimizer variables, the epoch, the history rows and the
    callbacks' carried-over state (:data:`_CALLBACK_FIELDS`). Place it last so it sees the
    epoch's learning-rate change and early-stopping decision. ``folder = None`` writes nothing
    (checkpointing off; the callback only restores a resumed run's state).

    ``resume``: a snapshot whose callback state is put back in ``on_train_begin`` (Keras' own
    callbacks reset theirs there; this one runs after them)."""

    def __init__(
        self,
        autoencoder: keras.Model,
        folder: Path | None,
        recorder: HistoryRecorder,
        callbacks: list[keras.callbacks.Callback],
        nepochs: int,
        resume: TrainingSnapshot | None = None,
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.folder = Path(folder) if folder is not None else None
        self.recorder, self.nepochs, self.resume = recorder, int(nepochs), resume
        self.callbacks = [cb for cb in callbacks if type(cb) in _CALLBACK_FIELDS]

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.resume is None:
            return
        for cb in self.callbacks:
            for name, value in self.resume.callbacks.get(type(cb).__name__, {}).items():
                setattr(cb, name, value)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.folder is None:
            return
        snapshot = TrainingSnapshot(
            backend=NAME,
            epoch=epoch,
            nepochs=self.nepochs,
            stopped=bool(getattr(self.model, "stop_training", False)),
            history=self.recorder.state_dict(),
            callbacks={
                type(cb).__name__: {f: getattr(cb, f) for f in _CALLBACK_FIELDS[type(cb)]}
                for cb in self.callbacks
            },
            weights=[keras.ops.convert_to_numpy(w) for w in self.autoencoder.weights],
            optimizer=[keras.ops.convert_to_numpy(v) for v in self.model.optimizer.variables],
        )
        checkpoint.write_training_state(self.folder / STATE_NAME, snapshot)


def _keras_monitor(metric: str, has_validation: bool) -> str:
    """Core's :func:`~ptycho_core.training.monitored_metric` as a Keras log name: ``train_loss``
    → ``loss``, ``train_<c>`` → ``<c>``, ``val_*`` unchanged."""
    name = monitored_metric(metric, has_validation)
    return name[len("train_") :] if name.startswith("train_") else name


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
    epoch; ``none``), EarlyStopping (``early_stop_patience``) and, with ``enable_checkpointing``,
    :class:`AtomicBestWeights` and, last, :class:`TrainingState` under
    ``<request.output_dir>/checkpoints`` (also without checkpointing when ``resume``, the
    snapshot whose callback state it puts back, is given). Monitors follow
    :func:`_keras_monitor` (training metrics without validation data)."""
    execution, nepochs = request.execution, request.config.nepochs
    cbs: list[keras.callbacks.Callback] = [HistoryCallback(request.history)]
    lr0, name = float(execution.learning_rate), execution.scheduler
    monitor = _keras_monitor("val_loss", has_validation)
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
    if folder is not None:
        metric = _keras_monitor(execution.checkpoint_monitor_metric, has_validation)
        cbs.append(AtomicBestWeights(autoencoder, folder, metric, execution.checkpoint_mode))
    if folder is not None or resume is not None:
        cbs.append(TrainingState(autoencoder, folder, request.history, cbs, nepochs, resume))
    return cbs


_DEVICE_KINDS = {"cpu": "CPU", "gpu": "GPU", "cuda": "GPU", "mps": "GPU"}


def select_devices(execution: Any) -> list[str]:
    """TF device names for ``execution.accelerator`` (``auto``: GPUs if TF sees any, else CPU;
    ``gpu``/``cuda``/``mps``: GPUs; others but ``cpu`` are a ``ValueError``) and ``devices``
    (``n``: the first ``n``; ``-1``/``"auto"``: all; a tuple: those indices). Devices that are
    not there are a ``RuntimeError`` naming what was found (never a silent fallback)."""
    acc, want = execution.accelerator, execution.devices
    if acc == "auto":
        kind = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    elif acc in _DEVICE_KINDS:
        kind = _DEVICE_KINDS[acc]
    else:
        raise ValueError(
            f"accelerator={acc!r} is not supported by the TensorFlow backend; allowed: auto, "
            + ", ".join(_DEVICE_KINDS)
        )
    present = [d.name for d in tf.config.list_logical_devices(kind)]
    if isinstance(want, tuple):
        index = list(want)
    else:
        index = list(range(len(present) if want in (-1, "auto") else int(want)))
    if not present or max(index, default=0) >= len(present):
        raise RuntimeError(
            f"accelerator={acc!r}, devices={want!r} requested; TensorFlow sees {len(present)} "
            f"{kind} device(s): {present}"
        )
    return [present[i] for i in index]


def resolve_strategy(execution: Any) -> tf.distribute.Strategy:
    """``OneDeviceStrategy`` for one selected device, ``MirroredStrategy`` over several
    (:func:`select_devices`)."""
    chosen = select_devices(execution)
    if len(chosen) == 1:
        return tf.distribute.OneDeviceStrategy(chosen[0])
    log.info("training on %d devices with MirroredStrategy: %s", len(chosen), chosen)
    return tf.distribute.MirroredStrategy(devices=chosen)
