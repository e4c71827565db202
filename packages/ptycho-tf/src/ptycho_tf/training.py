"""Keras ``fit`` training (``specs/training.md``): the loss-computing trainer model, datasets,
callbacks, device strategy, history CSV and loss plot.

:class:`PtychoTrainer` only orchestrates (like the torch LightningModule): it wraps the
``autoencoder`` from :mod:`ptycho_tf.model`, computes :func:`ptycho_tf.losses.loss_terms` in
``compute_loss`` and tracks the components, so Keras logs ``loss``, ``nll``, ``mae`` (and
``val_*``); :class:`HistoryRecorder` renames them ``train_loss``, ``val_loss``, ``train_nll``, ….
Runtime settings come from a :class:`ptycho_core.config.PyTorchExecutionConfig` (its neutral
subset; see ``specs/tf-backend.md``).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ptycho_core.io import atomic_write
from ptycho_core.workflow import write_history_csv
from ptycho_tf.losses import LossWeights, loss_terms

__all__ = [
    "PtychoTrainer",
    "HistoryRecorder",
    "AtomicBestWeights",
    "make_dataset",
    "build_callbacks",
    "resolve_strategy",
    "select_devices",
    "plot_history",
    "PLATEAU_FACTOR",
    "PLATEAU_PATIENCE",
    "MIN_LR",
    "HISTORY_COLUMNS",
]

log = logging.getLogger(__name__)

PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2
MIN_LR = 1e-4
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "lr")


class PtychoTrainer(keras.Model):
    """Wraps the ``autoencoder``; ``compute_loss`` adds the physics (or supervised) loss.

    Inputs per batch: ``x = {"x": (B, N, N, C) float32 s·α·X, "offsets": (B, C, 2)}`` and, when
    the loss needs ground truth, ``y = (B, N, N, C) complex64`` patches.
    """

    def __init__(self, autoencoder: keras.Model, weights: LossWeights, **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", "ptycho_trainer"), **kwargs)
        self.autoencoder = autoencoder
        self.loss_weights_cfg = weights
        self.component_trackers = [keras.metrics.Mean(name=n) for n in weights.components]

    def call(self, inputs, training=False):
        return self.autoencoder(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = loss_terms(y_pred, x["x"], y, self.loss_weights_cfg)
        batch = tf.shape(x["x"])[0]
        for tracker in self.component_trackers:
            tracker.update_state(terms[tracker.name], sample_weight=batch)
        total = terms["loss"]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:  # the optimizer sums replica gradients
            total = total / float(replicas)
        return total

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
    if with_ground_truth:
        if grouped.Y is None:
            raise ValueError("the loss needs ground-truth patches Y but the data have none")
        ds = tf.data.Dataset.from_tensor_slices(
            (inputs, grouped.channels_last("Y").astype(np.complex64))
        )
    else:
        ds = tf.data.Dataset.from_tensor_slices(inputs)
    if shuffle:
        ds = ds.shuffle(len(grouped), seed=int(seed), reshuffle_each_iteration=True)
    return ds.batch(int(batch_size)).prefetch(2)


class HistoryRecorder(keras.callbacks.Callback):
    """One row per epoch (``epoch``, ``train_loss``, ``val_loss``, ``lr``, ``train_<c>``,
    ``val_<c>``); rewrites ``history.csv`` atomically after every epoch (interrupted runs keep
    their finished epochs). Place it first so ``lr`` is the rate used during the epoch."""

    def __init__(self, path: str | Path | None) -> None:
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        row = {
            "epoch": float(epoch),
            "train_loss": float(logs.get("loss", math.nan)),
            "val_loss": float(logs.get("val_loss", math.nan)),
            "lr": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
        }
        for key in sorted(logs):
            if key in ("loss", "val_loss", "learning_rate"):
                continue
            name = key if key.startswith("val_") else f"train_{key}"
            row[name] = float(logs[key])
        self.rows.append(row)
        log.info(
            "epoch %d: train_loss=%.6g val_loss=%.6g lr=%.3g",
            epoch,
            row["train_loss"],
            row["val_loss"],
            row["lr"],
        )
        if self.path is not None:
            hist = self.history()
            hist.pop("epoch")
            write_history_csv(self.path, hist)

    def history(self) -> dict[str, list[float]]:
        """Dict of lists: ``epoch``, ``train_loss``, ``val_loss``, ``lr``, then components."""
        keys = list(HISTORY_COLUMNS)
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        return {k: [r.get(k, math.nan) for r in self.rows] for k in keys}


class AtomicBestWeights(keras.callbacks.Callback):
    """``enable_checkpointing``: keep the autoencoder's best weights (by ``monitor``, ``mode``)
    as ``<folder>/best.weights.h5`` and the latest as ``last.weights.h5``, each written to a
    temporary ``.weights.h5`` in the same folder and renamed (atomic)."""

    def __init__(
        self,
        autoencoder: keras.Model,
        folder: str | Path,
        monitor: str = "val_loss",
        mode: str = "min",
    ) -> None:
        super().__init__()
        self.autoencoder, self.folder = autoencoder, Path(folder)
        self.monitor, self.mode = monitor, mode
        self.best = math.inf if mode == "min" else -math.inf

    def _save(self, name: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".weights.h5", dir=self.folder)
        os.close(fd)
        try:
            self.autoencoder.save_weights(tmp, overwrite=True)
            os.replace(tmp, self.folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._save("last.weights.h5")
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        better = value < self.best if self.mode == "min" else value > self.best
        if better:
            self.best = float(value)
            self._save("best.weights.h5")


def _schedule(name: str, lr0: float, nepochs: int):
    if name == "cosine":
        eta_min = min(MIN_LR, lr0)
        t_max = max(1, nepochs)
        return lambda e, lr: eta_min + (lr0 - eta_min) * (1 + math.cos(math.pi * e / t_max)) / 2
    if name == "step":
        step = max(1, nepochs // 3)
        return lambda e, lr: lr0 * 0.5 ** (e // step)
    raise ValueError(f"scheduler={name!r} is not one of ('plateau', 'none', 'cosine', 'step')")


def build_callbacks(
    execution: Any,
    *,
    autoencoder: keras.Model,
    output_dir: str | Path,
    nepochs: int,
    has_validation: bool,
    history_path: str | Path | None,
) -> list[keras.callbacks.Callback]:
    """History first, then the learning-rate schedule (``plateau``: ReduceLROnPlateau 0.5,
    patience 2, floor 1e-4), EarlyStopping (``early_stop_patience``) and, with
    ``enable_checkpointing``, :class:`AtomicBestWeights` under ``<output_dir>/checkpoints``.
    Without validation data, monitors fall back from ``val_*`` to the training metric."""

    def monitored(metric: str) -> str:
        if has_validation:
            return metric
        base = metric[4:] if metric.startswith("val_") else metric
        return "loss" if base in ("loss", "train_loss") else base

    cbs: list[keras.callbacks.Callback] = [HistoryRecorder(history_path)]
    lr0 = float(execution.learning_rate)
    if execution.scheduler == "plateau":
        cbs.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitored("val_loss"),
                factor=PLATEAU_FACTOR,
                patience=PLATEAU_PATIENCE,
                min_lr=min(MIN_LR, lr0),
                verbose=0,
            )
        )
    elif execution.scheduler != "none":
        cbs.append(
            keras.callbacks.LearningRateScheduler(_schedule(execution.scheduler, lr0, nepochs))
        )
    cbs.append(
        keras.callbacks.EarlyStopping(
            monitor=monitored("val_loss"), mode="min", patience=int(execution.early_stop_patience)
        )
    )
    if execution.enable_checkpointing:
        metric = execution.checkpoint_monitor_metric  # torch names → Keras log names
        metric = metric[6:] if metric.startswith("train_") else metric
        cbs.append(
            AtomicBestWeights(
                autoencoder,
                Path(output_dir) / "checkpoints",
                monitor=monitored(metric),
                mode=execution.checkpoint_mode,
            )
        )
    return cbs


def _device_type(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda", "mps"):
        return "GPU"
    if accelerator == "cpu":
        return "CPU"
    if accelerator == "auto":
        return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
    raise ValueError(
        f"accelerator={accelerator!r} is not supported by the TensorFlow backend; "
        "allowed: auto, cpu, gpu, cuda, mps"
    )


def select_devices(execution: Any) -> list[str]:
    """TF device names for ``execution.accelerator`` / ``devices`` (``1``: the first device;
    ``n``: the first ``n``; ``-1``/``"auto"``: all; a tuple: those indices). Asking for devices
    that are not there is a ``RuntimeError`` naming what was found (never a silent fallback)."""
    kind = _device_type(execution.accelerator)
    present = [d.name for d in tf.config.list_logical_devices(kind)]
    if not present:
        raise RuntimeError(
            f"accelerator={execution.accelerator!r} selected but TensorFlow sees no {kind} device"
        )
    want = execution.devices
    if isinstance(want, tuple):
        bad = [i for i in want if i >= len(present)]
        if bad:
            raise RuntimeError(
                f"devices={list(want)} requested; only {len(present)} {kind} "
                f"device(s) present: {present}"
            )
        return [present[i] for i in want]
    if want in (-1, "auto"):
        return present
    if int(want) > len(present):
        raise RuntimeError(
            f"devices={want} requested; only {len(present)} {kind} device(s) present: {present}"
        )
    return present[: int(want)]


def resolve_strategy(execution: Any) -> tf.distribute.Strategy:
    """``OneDeviceStrategy`` for one selected device, ``MirroredStrategy`` over several
    (:func:`select_devices`)."""
    chosen = select_devices(execution)
    if len(chosen) == 1:
        return tf.distribute.OneDeviceStrategy(chosen[0])
    log.info("training on %d devices with MirroredStrategy: %s", len(chosen), chosen)
    return tf.distribute.MirroredStrategy(devices=chosen)


def plot_history(history: dict[str, list[float]], path: str | Path) -> Path | None:
    """Loss-curve PNG (train/val loss vs epoch, log scale when positive); matplotlib (Agg) is
    imported lazily; returns None (logged) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        log.info("matplotlib not installed; skipping the loss plot %s", path)
        return None
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    epochs = history.get("epoch") or list(range(len(history.get("train_loss", []))))
    for key in ("train_loss", "val_loss"):
        vals = np.asarray(history.get(key, []), float)
        if vals.size and np.isfinite(vals).any():
            ax.plot(epochs[: vals.size], vals, marker="o", label=key)
    vals = (
        np.concatenate([np.asarray(history.get(k, []), float) for k in ("train_loss", "val_loss")])
        if history
        else np.array([])
    )
    finite = vals[np.isfinite(vals)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    p = Path(path)
    with atomic_write(p, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    return p
