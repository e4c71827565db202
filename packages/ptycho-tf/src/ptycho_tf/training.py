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
from ptycho_tf.bundle import keras_weights_bytes
from ptycho_tf.losses import loss_terms

__all__ = [
    "PtychoTrainer",
    "HistoryCallback",
    "AtomicBestWeights",
    "make_dataset",
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
    grouped: Any, batch_size: int, *, shuffle: bool, seed: int, with_ground_truth: bool
) -> tf.data.Dataset:
    """``tf.data`` pipeline over a :class:`ptycho_core.grouping.GroupedData` (already scaled to
    ``s·α·X``): elements ``{"x", "offsets"}`` (+ ``Y`` channels-last) batched by ``batch_size``;
    shuffled each epoch with the op seed ``seed`` when ``shuffle``."""
    inputs = {
        "x": grouped.channels_last().astype(np.float32),
        "offsets": np.asarray(grouped.offsets, np.float32),
    }
    if with_ground_truth:  # core's LossSpec.check_ground_truth ran before
        ds = tf.data.Dataset.from_tensor_slices(
            (inputs, grouped.channels_last("Y").astype(np.complex64))
        )
    else:
        ds = tf.data.Dataset.from_tensor_slices(inputs)
    if shuffle:
        ds = ds.shuffle(len(grouped), seed=int(seed), reshuffle_each_iteration=True)
    return ds.batch(int(batch_size)).prefetch(2)


class HistoryCallback(keras.callbacks.Callback):
    """Hands each epoch's Keras logs to a core :class:`HistoryRecorder` (which writes
    ``history.csv``): ``loss`` → ``train_loss``, ``<c>`` → ``train_<c>``, ``val_*`` unchanged,
    ``lr`` the optimizer's rate. Place it first so ``lr`` is the rate used during the epoch."""

    def __init__(self, recorder: HistoryRecorder) -> None:
        super().__init__()
        self.recorder = recorder

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        row = self.recorder.record(
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
        log.info("epoch %d: %s", epoch, " ".join(f"{k}={v:.6g}" for k, v in row.items()))


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


def _keras_monitor(metric: str, has_validation: bool) -> str:
    """Core's :func:`~ptycho_core.training.monitored_metric` as a Keras log name: ``train_loss``
    → ``loss``, ``train_<c>`` → ``<c>``, ``val_*`` unchanged."""
    name = monitored_metric(metric, has_validation)
    return name[len("train_") :] if name.startswith("train_") else name


def build_callbacks(
    request: FitRequest, autoencoder: keras.Model, *, has_validation: bool
) -> list[keras.callbacks.Callback]:
    """The callbacks for ``request.execution``: :class:`HistoryCallback` (into
    ``request.history``) first, then core's learning-rate policy (``plateau``:
    ``ReduceLROnPlateau``; ``cosine``/``step``: :func:`~ptycho_core.training.scheduled_lr` per
    epoch; ``none``), EarlyStopping (``early_stop_patience``) and, with ``enable_checkpointing``,
    :class:`AtomicBestWeights` under ``<request.output_dir>/checkpoints``. Monitors follow
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
    if execution.enable_checkpointing:
        metric = _keras_monitor(execution.checkpoint_monitor_metric, has_validation)
        folder = Path(request.output_dir) / "checkpoints"
        cbs.append(AtomicBestWeights(autoencoder, folder, metric, execution.checkpoint_mode))
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
