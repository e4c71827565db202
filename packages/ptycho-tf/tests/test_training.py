"""Keras ``fit`` training: seeding, callbacks, history, trainable probe / scale, supervised,
gridsize-2 data alignment, execution-config handling (``specs/model.md``, ``specs/training.md``)."""

import dataclasses
import logging
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import ptycho_tf
from ptycho_core.config import ExecutionConfig, ModelConfig, TrainingConfig
from ptycho_core.config import ignored_execution_fields as core_ignored
from ptycho_core.engine import FitRequest
from ptycho_core.simulation import simulate_scan
from ptycho_core.training import HistoryRecorder, LossSpec, min_lr, scheduled_lr
from ptycho_core.workflow import prepare_training, read_history_csv
from ptycho_tf import physics as tfp
from ptycho_tf import workflows
from ptycho_tf.execution import resolve_strategy
from ptycho_tf.model import build_models
from ptycho_tf.training import (
    HistoryCallback,
    PtychoTrainer,
    TrainingState,
    build_callbacks,
    make_dataset,
)
from ptycho_tf.workflows import build_training_run, train

QUIET = ExecutionConfig(accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False)


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(N=32, n_positions=48, nphotons=1e6, seed=2)


def _config(tmp_path, **kw):
    model = kw.pop("model", ModelConfig(N=32, n_filters_scale=1))
    return TrainingConfig(
        model=model,
        nepochs=kw.pop("nepochs", 2),
        batch_size=8,
        output_dir=tmp_path,
        backend="tensorflow",
        seed=kw.pop("seed", 7),
        validation_fraction=kw.pop("validation_fraction", 0.2),
        **kw,
    )


def _request(cfg, prep, tmp_path, execution=QUIET, recorder=None):
    return FitRequest(
        config=cfg,
        execution=execution,
        prepared=prep,
        loss=LossSpec.from_training_config(cfg),
        history=recorder or HistoryRecorder(None),
        output_dir=tmp_path,
    )


def test_gridsize2_ground_truth_lines_up_with_diffraction(tmp_path):
    """forward_model(Y[g, ..., c]) ∝ diffraction[g, ..., c] on (nearly) noise-free data; the
    point-mirrored truth (the reference's bug) does not fit."""
    data = simulate_scan(N=32, n_positions=40, nphotons=1e12, seed=4)
    cfg = _config(tmp_path, model=ModelConfig(N=32, gridsize=2, n_filters_scale=1))
    prep = prepare_training(cfg, data)
    y = prep.train.channels_last("Y")  # (G, N, N, C) complex
    x = prep.train.channels_last()  # s·α·X
    pred = tfp.forward_model_cl(tf.constant(y), tf.constant(data.probe)).numpy()

    def rel_err(p):
        k = np.vdot(p, x).real / np.vdot(p, p).real  # best single scale factor
        return np.linalg.norm(k * p - x) / np.linalg.norm(x)

    assert rel_err(pred) < 2e-3
    mirrored = tfp.forward_model_cl(tf.constant(y[..., ::-1]), tf.constant(data.probe)).numpy()
    assert rel_err(mirrored) > 0.05


def test_same_seed_same_initial_weights_and_history(scan, tmp_path):
    a = train(_config(tmp_path / "a"), QUIET, train_data=scan)
    b = train(_config(tmp_path / "b"), QUIET, train_data=scan)
    np.testing.assert_allclose(a.history["train_loss"], b.history["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(a.history["val_loss"], b.history["val_loss"], rtol=1e-6)
    c = train(_config(tmp_path / "c", seed=8), QUIET, train_data=scan)
    assert c.history["train_loss"] != a.history["train_loss"]
    # history.csv columns (written by core's recorder); no loss plot (the CLI's)
    rows = read_history_csv(tmp_path / "a" / "history.csv")
    assert list(rows)[:4] == ["epoch", "train_loss", "val_loss", "lr"]
    assert {"train_nll", "val_nll", "train_mae", "val_mae"} <= set(rows)
    assert "train_learning_rate" not in rows
    assert rows["epoch"] == [0.0, 1.0] and rows["lr"][0] == pytest.approx(QUIET.learning_rate)
    for key in ("train_loss", "val_loss", "train_nll"):
        np.testing.assert_allclose(rows[key], a.history[key], rtol=1e-6)
    assert not (tmp_path / "a" / "loss.png").exists()


def test_initial_weights_depend_only_on_seed(scan, tmp_path):
    cfg = TrainingConfig(model=ModelConfig(N=32, n_filters_scale=1), seed=5)
    request = _request(cfg, prepare_training(cfg, scan), tmp_path)
    strategy = tf.distribute.get_strategy()
    w1 = [w.numpy() for w in build_training_run(request, strategy)[0].autoencoder.weights]
    np.random.default_rng().random(10)  # unrelated randomness in between
    tf.random.uniform(())
    w2 = [w.numpy() for w in build_training_run(request, strategy)[0].autoencoder.weights]
    assert all(np.array_equal(x, y) for x, y in zip(w1, w2, strict=True))


def _fit_steps(models, cfg, prep, steps=3, lr=1e-2):
    trainer = PtychoTrainer(models.autoencoder, LossSpec.from_training_config(cfg))
    trainer.compile(optimizer=keras.optimizers.Adam(lr), jit_compile=False)
    ds = make_dataset(prep.train, 8, shuffle=False, seed=0, with_ground_truth=False).take(steps)
    trainer.fit(ds, epochs=1, verbose=0, shuffle=False)


@pytest.mark.parametrize("trainable", [True, False])
def test_probe_and_scale_train_only_when_trainable(scan, trainable):
    cfg = TrainingConfig(
        model=ModelConfig(N=32, n_filters_scale=1),
        probe_trainable=trainable,
        intensity_scale_trainable=trainable,
    )
    prep = prepare_training(cfg, scan)
    models = build_models(
        cfg.model,
        probe=prep.probe,
        intensity_scale=prep.intensity_scale,
        probe_trainable=trainable,
        intensity_scale_trainable=trainable,
    )
    s0, p0 = models.intensity_scale, models.probe.copy()
    _fit_steps(models, cfg, prep)
    changed_s = abs(models.intensity_scale - s0) > 1e-6 * s0
    changed_p = np.abs(models.probe - p0).max() > 1e-6
    assert changed_s == trainable and changed_p == trainable


def test_supervised_trains_against_ground_truth(scan, tmp_path):
    cfg = _config(tmp_path, model=ModelConfig(N=32, n_filters_scale=1, model_type="supervised"))
    res = train(cfg, QUIET, train_data=scan)
    assert {"train_amp_mae", "train_phase_mae", "val_amp_mae"} <= set(res.history)
    assert all(math.isfinite(v) for v in res.history["train_loss"])


def test_supervised_without_ground_truth_is_a_clear_error(scan, tmp_path):
    bare = dataclasses.replace(scan, Y=None, object=None)
    cfg = _config(tmp_path, model=ModelConfig(N=32, n_filters_scale=1, model_type="supervised"))
    with pytest.raises(ValueError, match="ground-truth"):
        train(cfg, QUIET, train_data=bare)


def _callbacks(scan, tmp_path, execution, validation=0.2, nepochs=5):
    cfg = _config(tmp_path, nepochs=nepochs, validation_fraction=validation)
    request = _request(cfg, prepare_training(cfg, scan), tmp_path, execution)
    models = build_models(cfg.model, probe=np.ones((32, 32)))
    return build_callbacks(request, models.autoencoder, has_validation=validation > 0)


def _find(cbs, kind):
    return [c for c in cbs if isinstance(c, kind)]


def test_callbacks_follow_execution_config(scan, tmp_path):
    ex = ExecutionConfig(
        early_stop_patience=3,
        learning_rate=5e-4,
        scheduler="plateau",
        checkpoint_monitor_metric="train_loss",
    )
    cbs = _callbacks(scan, tmp_path, ex)
    assert isinstance(cbs[0], HistoryCallback)  # first: lr is the rate used in the epoch
    (plateau,) = _find(cbs, keras.callbacks.ReduceLROnPlateau)
    assert (plateau.factor, plateau.patience, plateau.min_lr) == (0.5, 2, min_lr(5e-4))
    assert plateau.monitor == "val_loss"
    (stop,) = _find(cbs, keras.callbacks.EarlyStopping)
    assert stop.patience == 3 and stop.monitor == "val_loss"
    (ckpt,) = _find(cbs, TrainingState)  # torch name "train_loss" → Keras' "loss"
    assert (ckpt.monitor, ckpt.mode) == ("loss", "min")
    # without validation data the monitors fall back to the training loss (Keras: "loss")
    ex = ExecutionConfig(
        scheduler="none", checkpoint_monitor_metric="val_loss", checkpoint_mode="max"
    )
    cbs = _callbacks(scan, tmp_path, ex, validation=0.0)
    assert not _find(cbs, keras.callbacks.ReduceLROnPlateau)
    assert not _find(cbs, keras.callbacks.LearningRateScheduler)
    assert _find(cbs, keras.callbacks.EarlyStopping)[0].monitor == "loss"
    (ckpt,) = _find(cbs, TrainingState)
    assert (ckpt.monitor, ckpt.mode) == ("loss", "max")


@pytest.mark.parametrize("name", ["cosine", "step"])
def test_epoch_schedules_are_cores(scan, tmp_path, name):
    cbs = _callbacks(scan, tmp_path, ExecutionConfig(scheduler=name, learning_rate=2e-3), nepochs=9)
    (sched,) = _find(cbs, keras.callbacks.LearningRateScheduler)
    assert not _find(cbs, keras.callbacks.ReduceLROnPlateau)
    got = [sched.schedule(e, 123.0) for e in range(10)]
    assert got == pytest.approx([scheduled_lr(name, 2e-3, e, 9) for e in range(10)])
    assert len(set(got)) > 1  # the schedule moves


class _Optimizer:
    learning_rate = np.float32(2.5e-3)


def test_history_callback_feeds_cores_recorder(tmp_path):
    recorder = HistoryRecorder(tmp_path / "history.csv")
    cb = HistoryCallback(recorder)
    cb.set_model(type("M", (), {"optimizer": _Optimizer()})())
    logs = {"loss": 3.0, "val_loss": 4.0, "nll": 1.0, "val_nll": 2.0, "learning_rate": 9.0}
    cb.on_epoch_end(0, logs)
    cb.on_epoch_end(1, {"loss": 2.0, "nll": 0.5})  # an epoch without validation logs
    hist = recorder.history()
    assert hist["train_loss"] == [3.0, 2.0] and hist["train_nll"] == [1.0, 0.5]
    assert hist["val_loss"][0] == 4.0 and math.isnan(hist["val_loss"][1])
    assert hist["val_nll"][0] == 2.0 and hist["lr"] == pytest.approx([2.5e-3, 2.5e-3])
    assert not any("learning_rate" in k for k in hist)
    on_disk = read_history_csv(tmp_path / "history.csv")
    assert on_disk["train_loss"] == [3.0, 2.0] and math.isnan(on_disk["val_loss"][1])


def test_early_stopping_checkpoints_and_ignored_fields(scan, tmp_path, caplog):
    ex = ExecutionConfig(
        accelerator="cpu",
        enable_progress_bar=False,
        early_stop_patience=1,
        learning_rate=0.5,  # diverges → stops
        num_workers=2,  # not honoured: logged and reported
    )
    with caplog.at_level(logging.INFO, logger="ptycho_core.runtime"):
        res = train(_config(tmp_path, nepochs=8), ex, train_data=scan)
    assert res.epochs_trained < 8
    assert (tmp_path / "checkpoints" / "last.state.npz").is_file()
    assert res.extra["ignored_execution"] == {"num_workers": 2}
    assert "num_workers" in caplog.text


def _ignored(execution):
    return core_ignored(
        execution,
        ptycho_tf.HONOURED_EXECUTION_FIELDS,
        honoured_values=ptycho_tf.HONOURED_VALUES,
    )


def test_honoured_execution_fields():
    assert _ignored(None) == {} and _ignored(ExecutionConfig()) == {}
    e = ExecutionConfig(
        num_workers=2,
        accum_steps=4,
        learning_rate=5e-4,
        checkpoint_mode="max",
        logger_backend="tensorboard",
    )
    assert _ignored(e) == {"num_workers": 2, "accum_steps": 4, "logger_backend": "tensorboard"}
    assert _ignored(ExecutionConfig(logger_backend="none")) == {}
    fields = ptycho_tf.HONOURED_EXECUTION_FIELDS
    assert {"learning_rate", "devices", "logger_backend"} <= fields
    assert {"checkpoint_monitor_metric", "checkpoint_mode"} <= fields
    assert not {"num_workers", "accum_steps", "strategy", "gradient_clip_val"} & fields
    assert fields <= set(ExecutionConfig.field_names())
    assert workflows.HONOURED_EXECUTION_FIELDS is fields
    assert workflows.HONOURED_VALUES is ptycho_tf.HONOURED_VALUES


def test_strategy_resolution():
    one = resolve_strategy(ExecutionConfig(accelerator="cpu", devices=1))
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    with pytest.raises(RuntimeError, match="devices=8"):
        resolve_strategy(ExecutionConfig(accelerator="cpu", devices=8))
    with pytest.raises(RuntimeError, match=r"devices=\(0, 3\)"):
        resolve_strategy(ExecutionConfig(accelerator="cpu", devices=(0, 3)))
    with pytest.raises(ValueError, match="tpu"):
        resolve_strategy(ExecutionConfig(accelerator="tpu"))


def test_backend_imports_no_torch():
    code = (
        "import sys, ptycho_tf; "
        "assert 'tensorflow' not in sys.modules; "
        "assert 'learning_rate' in ptycho_tf.HONOURED_EXECUTION_FIELDS; "
        "import ptycho_tf.backend; "
        "bad = [m for m in ('torch', 'lightning') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
