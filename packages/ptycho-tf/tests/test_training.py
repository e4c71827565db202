"""Keras ``fit`` training: seeding, callbacks, history, trainable probe / scale, supervised,
gridsize-2 data alignment, execution-config handling (``specs/model.md``, ``specs/training.md``)."""

import csv
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

from ptycho_core.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_core.simulation import simulate_scan
from ptycho_core.workflow import prepare_training
from ptycho_tf import physics as tfp
from ptycho_tf.losses import LossWeights
from ptycho_tf.model import build_models
from ptycho_tf.training import PtychoTrainer, build_callbacks, make_dataset, resolve_strategy
from ptycho_tf.workflows import build_training_run, log_ignored_fields, train

QUIET = PyTorchExecutionConfig(
    accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False
)


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
        validation_fraction=0.2,
        **kw,
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
    np.testing.assert_allclose(a["history"]["train_loss"], b["history"]["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(a["history"]["val_loss"], b["history"]["val_loss"], rtol=1e-6)
    c = train(_config(tmp_path / "c", seed=8), QUIET, train_data=scan)
    assert c["history"]["train_loss"] != a["history"]["train_loss"]
    # history.csv columns and a loss plot
    with open(tmp_path / "a" / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:4] == ["epoch", "train_loss", "val_loss", "lr"]
    assert {"train_nll", "val_nll", "train_mae", "val_mae"} <= set(rows[0])
    assert len(rows) == 2 and float(rows[0]["lr"]) == pytest.approx(1e-3)
    assert (tmp_path / "a" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_initial_weights_depend_only_on_seed(scan):
    cfg = TrainingConfig(model=ModelConfig(N=32, n_filters_scale=1), seed=5)
    prep = prepare_training(cfg, scan)
    strategy = tf.distribute.get_strategy()
    w1 = [w.numpy() for w in build_training_run(cfg, QUIET, prep, strategy)[0].autoencoder.weights]
    np.random.default_rng().random(10)  # unrelated randomness in between
    tf.random.uniform(())
    w2 = [w.numpy() for w in build_training_run(cfg, QUIET, prep, strategy)[0].autoencoder.weights]
    assert all(np.array_equal(x, y) for x, y in zip(w1, w2, strict=False))


def _fit_steps(models, cfg, prep, steps=3, lr=1e-2):
    trainer = PtychoTrainer(models.autoencoder, LossWeights.from_training_config(cfg))
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
    assert {"train_amp_mae", "train_phase_mae", "val_amp_mae"} <= set(res["history"])
    assert all(math.isfinite(v) for v in res["history"]["train_loss"])


def test_supervised_without_ground_truth_is_a_clear_error(scan, tmp_path):
    bare = dataclasses.replace(scan, Y=None, object=None)
    cfg = _config(tmp_path, model=ModelConfig(N=32, n_filters_scale=1, model_type="supervised"))
    with pytest.raises(ValueError, match="ground-truth"):
        train(cfg, QUIET, train_data=bare)


def test_callbacks_follow_execution_config(tmp_path):
    models = build_models(ModelConfig(N=32, n_filters_scale=1), probe=np.ones((32, 32)))
    ex = PyTorchExecutionConfig(early_stop_patience=3, learning_rate=5e-4)
    cbs = build_callbacks(
        ex,
        autoencoder=models.autoencoder,
        output_dir=tmp_path,
        nepochs=5,
        has_validation=True,
        history_path=None,
    )
    plateau = next(c for c in cbs if isinstance(c, keras.callbacks.ReduceLROnPlateau))
    assert (plateau.factor, plateau.patience, plateau.min_lr) == (0.5, 2, 1e-4)
    assert plateau.monitor == "val_loss"
    stop = next(c for c in cbs if isinstance(c, keras.callbacks.EarlyStopping))
    assert stop.patience == 3 and stop.monitor == "val_loss"
    cbs = build_callbacks(
        PyTorchExecutionConfig(scheduler="none", enable_checkpointing=False),
        autoencoder=models.autoencoder,
        output_dir=tmp_path,
        nepochs=5,
        has_validation=False,
        history_path=None,
    )
    assert not any(isinstance(c, keras.callbacks.ReduceLROnPlateau) for c in cbs)
    assert next(c for c in cbs if isinstance(c, keras.callbacks.EarlyStopping)).monitor == "loss"


def test_early_stopping_and_checkpoints(scan, tmp_path):
    ex = PyTorchExecutionConfig(
        accelerator="cpu", enable_progress_bar=False, early_stop_patience=1, learning_rate=0.5
    )  # diverges → stops
    res = train(_config(tmp_path, nepochs=8), ex, train_data=scan)
    assert len(res["history"]["train_loss"]) < 8
    assert (tmp_path / "checkpoints" / "last.weights.h5").is_file()


def test_ignored_execution_fields_are_logged(caplog):
    ex = PyTorchExecutionConfig(
        num_workers=2, accum_steps=3, learning_rate=2e-3, checkpoint_mode="max"
    )
    with caplog.at_level(logging.INFO, logger="ptycho_tf.workflows"):
        ignored = log_ignored_fields(ex)
    assert set(ignored) == {"num_workers", "accum_steps"}
    assert "num_workers=2" in caplog.text and "accum_steps=3" in caplog.text
    assert "learning_rate" not in ignored and "checkpoint_mode" not in ignored


def test_strategy_resolution():
    one = resolve_strategy(PyTorchExecutionConfig(accelerator="cpu", devices=1))
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    with pytest.raises(RuntimeError, match="devices=8"):
        resolve_strategy(PyTorchExecutionConfig(accelerator="cpu", devices=8))
    with pytest.raises(ValueError, match="tpu"):
        resolve_strategy(PyTorchExecutionConfig(accelerator="tpu"))


def test_cosine_and_step_schedules_match_torch_definitions():
    from ptycho_tf.training import _schedule

    cos = _schedule("cosine", 1e-3, 10)
    assert cos(0, None) == pytest.approx(1e-3)
    assert cos(5, None) == pytest.approx(1e-4 + (1e-3 - 1e-4) / 2)
    assert cos(10, None) == pytest.approx(1e-4)
    step = _schedule("step", 1e-3, 9)  # halve every 9 // 3 = 3 epochs
    assert [step(e, None) for e in (0, 2, 3, 6)] == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4])


def test_backend_imports_no_torch():
    code = (
        "import sys, ptycho_tf.backend; "
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
