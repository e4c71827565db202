"""Execution options ``precision``, ``compile`` and ``num_nodes`` on TensorFlow
(``specs/tf-backend.md``): the Keras mixed-precision policy per layer (never the global one),
XLA ``jit_compile``, and clear errors for what the backend cannot honour."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from ptycho_core.config import ExecutionConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_core.engine import FitRequest
from ptycho_core.errors import ConfigError
from ptycho_core.simulation import simulate_scan
from ptycho_core.training import HistoryRecorder, LossSpec
from ptycho_core.workflow import prepare_training
from ptycho_tf.execution import resolve_strategy
from ptycho_tf.workflows import build_training_run, reconstruct, train

QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False)
#: bf16-mixed vs fp32 loss, per epoch, relative (measured here: ≈ 3e-4 after 3 epochs).
BF16_LOSS_RTOL = 1e-2


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(N=32, n_positions=48, nphotons=1e6, seed=2)


#: single patterns: these tests check execution options, not the default network
MODEL = ModelConfig(N=32, gridsize=1, n_filters_scale=1)


def _cfg(tmp_path, **kw):
    base = dict(
        model=MODEL,
        nepochs=3,
        batch_size=8,
        output_dir=tmp_path,
        backend="tensorflow",
        seed=7,
        validation_fraction=0.2,
    )
    return TrainingConfig(**{**base, **kw})


@pytest.mark.slow
def test_bf16_mixed_training_tracks_fp32_and_leaves_the_global_policy(tmp_path, scan):
    before = keras.config.dtype_policy().name
    fp32 = train(_cfg(tmp_path / "a"), ExecutionConfig(**QUIET), train_data=scan)
    bf16 = train(
        _cfg(tmp_path / "b"), ExecutionConfig(**QUIET, precision="bf16-mixed"), train_data=scan
    )
    assert keras.config.dtype_policy().name == before == "float32"  # no global leak
    a, b = np.array(fp32.history["train_loss"]), np.array(bf16.history["train_loss"])
    np.testing.assert_allclose(b, a, rtol=BF16_LOSS_RTOL)
    assert not np.array_equal(a, b)  # bf16 was in effect
    again = train(_cfg(tmp_path / "c"), ExecutionConfig(**QUIET), train_data=scan)
    assert again.history["train_loss"] == fp32.history["train_loss"]  # nothing carried over


def test_mixed_policy_is_on_the_network_layers_only(tmp_path, scan):
    cfg = _cfg(tmp_path)
    ex = ExecutionConfig(**QUIET, precision="bf16-mixed")
    request = FitRequest(
        config=cfg,
        execution=ex,
        prepared=prepare_training(cfg, scan),
        loss=LossSpec.from_training_config(cfg),
        history=HistoryRecorder(None),
        output_dir=tmp_path,
    )
    models, _ = build_training_run(request, resolve_strategy(ex))
    ae = models.autoencoder
    assert ae.get_layer("enc0_conv1").dtype_policy.name == "mixed_bfloat16"
    assert ae.get_layer("forward_model").dtype_policy.name == "float32"
    assert ae.get_layer("object_patch").dtype_policy.name == "float32"
    assert all(w.dtype == "float32" for w in ae.weights)  # variables stay float32
    ex = ExecutionConfig(**QUIET, deterministic=False, compile=True)
    _, trainer = build_training_run(
        dataclasses.replace(request, execution=ex), resolve_strategy(ex)
    )
    assert trainer.jit_compile is True  # XLA, not Keras' silent fallback


def test_what_tensorflow_cannot_honour_is_a_clear_error(tmp_path, scan):
    cfg = _cfg(tmp_path, nepochs=1)
    with pytest.raises(ConfigError, match=r"num_nodes = 2 is invalid for the tensorflow"):
        train(cfg, ExecutionConfig(**QUIET, num_nodes=2), train_data=scan)
    with pytest.raises(ConfigError, match=r"compile = True is invalid with deterministic=True"):
        train(cfg, ExecutionConfig(**QUIET, compile=True), train_data=scan)
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("accelerator='auto' means the GPU here")
    with pytest.raises(ConfigError, match=r"'16-mixed' is invalid on a cpu device.*tensorflow"):
        train(
            cfg, ExecutionConfig(enable_progress_bar=False, precision="16-mixed"), train_data=scan
        )


@pytest.mark.slow
def test_compile_on_and_off_give_the_same_results(tmp_path, scan):
    """XLA training and prediction (``jit_compile``; ≈ 20 s here)."""
    # The rate and schedule the rtol below was set with: it bounds XLA's rounding against
    # eager after two epochs, which a larger step (the default 1e-3) amplifies to ~2e-4.
    ex = dict(QUIET, deterministic=False, learning_rate=3e-4, scheduler="plateau")
    plain = train(_cfg(tmp_path / "a", nepochs=2), ExecutionConfig(**ex), train_data=scan)
    xla = train(
        _cfg(tmp_path / "b", nepochs=2), ExecutionConfig(**ex, compile=True), train_data=scan
    )
    np.testing.assert_allclose(xla.history["train_loss"], plain.history["train_loss"], rtol=1e-4)
    icfg = InferenceConfig(model=MODEL, model_path=plain.bundle_path)
    ref = reconstruct(icfg, ExecutionConfig(**ex), data=scan)
    got = reconstruct(icfg, ExecutionConfig(**ex, compile=True), data=scan)
    np.testing.assert_allclose(got.object, ref.object, rtol=1e-5, atol=1e-5)
