"""Execution options ``precision``, ``compile`` and ``num_nodes`` (``specs/configuration.md``,
``specs/torch-backend.md``): mapped onto Lightning and inference, checked with clear errors."""

import numpy as np
import pytest
import torch

from ptycho_core.config import ExecutionConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_core.errors import ConfigError
from ptycho_core.simulation import simulate_scan
from ptycho_torch.training import build_trainer
from ptycho_torch.workflows import reconstruct, train

QUIET = dict(
    accelerator="cpu", enable_progress_bar=False, logger_backend="none", enable_checkpointing=False
)
#: bf16-mixed vs fp32 loss, per epoch, relative (measured here: ≈ 1e-3 after 3 epochs).
BF16_LOSS_RTOL = 1e-2


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(N=32, n_positions=40, nphotons=1e5, seed=3)


def _cfg(tmp_path, **kw):
    base = dict(
        model=ModelConfig(N=32, gridsize=1, n_filters_scale=1),
        batch_size=8,
        nepochs=3,
        output_dir=tmp_path,
        seed=7,
        validation_fraction=0.2,
    )
    return TrainingConfig(**{**base, **kw})


def test_trainer_gets_precision_and_num_nodes(tmp_path):
    ex = ExecutionConfig(**QUIET, precision="bf16-mixed", num_nodes=2, strategy="ddp")
    tr = build_trainer(ex, max_epochs=1, output_dir=tmp_path)
    assert tr.precision == "bf16-mixed"
    assert tr.num_nodes == 2
    assert build_trainer(ExecutionConfig(**QUIET), max_epochs=1, output_dir=tmp_path).precision == (
        "32-true"
    )


def test_float16_on_a_cpu_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"precision = '16-mixed' is invalid.*accelerator='cpu'"):
        ExecutionConfig(accelerator="cpu", precision="16-mixed")
    if torch.cuda.is_available():
        pytest.skip("accelerator='auto' means the GPU here")
    # 'auto' on a machine without a GPU is the CPU: refused before Lightning would switch to bf16
    ex = ExecutionConfig(precision="16-mixed", enable_progress_bar=False, logger_backend="none")
    with pytest.raises(ConfigError, match=r"'16-mixed' is invalid on a cpu device.*pytorch"):
        build_trainer(ex, max_epochs=1, output_dir=tmp_path)


def test_bf16_mixed_training_tracks_fp32(tmp_path, scan):
    fp32 = train(_cfg(tmp_path / "fp32"), ExecutionConfig(**QUIET), train_data=scan)
    bf16 = train(
        _cfg(tmp_path / "bf16"), ExecutionConfig(**QUIET, precision="bf16-mixed"), train_data=scan
    )
    a, b = np.array(fp32.history["train_loss"]), np.array(bf16.history["train_loss"])
    assert np.isfinite(b).all()
    np.testing.assert_allclose(b, a, rtol=BF16_LOSS_RTOL)
    assert not np.array_equal(a, b)  # bf16 was in effect (it rounds differently)


def _compile_without_a_c_compiler(monkeypatch):
    """``torch.compile`` with the ``aot_eager`` backend: the same graph capture (forward and
    backward) without inductor's C++ code generation, which takes minutes on 2 CPU cores."""
    calls = []
    real = torch.compile

    def compile_(*args, **kwargs):
        calls.append(args)
        return real(*args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch, "compile", compile_)
    return calls


@pytest.mark.slow
def test_compile_on_and_off_train_and_reconstruct_alike(tmp_path, scan, monkeypatch):
    calls = _compile_without_a_c_compiler(monkeypatch)
    plain = train(_cfg(tmp_path / "eager", nepochs=1), ExecutionConfig(**QUIET), train_data=scan)
    assert not calls
    ex = ExecutionConfig(**QUIET, compile=True)
    compiled = train(_cfg(tmp_path / "compiled", nepochs=1), ex, train_data=scan)
    assert len(calls) == 1  # the model, for training
    np.testing.assert_allclose(
        compiled.history["train_loss"], plain.history["train_loss"], rtol=1e-5
    )
    icfg = InferenceConfig(model=ModelConfig(N=32, n_filters_scale=1), model_path=plain.bundle_path)
    ref = reconstruct(icfg, ExecutionConfig(**QUIET), data=scan)
    got = reconstruct(icfg, ex, data=scan)
    assert len(calls) == 2  # diffraction_to_obj, for inference
    np.testing.assert_allclose(got.object, ref.object, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compile_with_inductor_reconstructs_alike(tmp_path, scan):
    """The real compiler (inductor, C++ on the CPU): ≈ 40 s here."""
    res = train(_cfg(tmp_path, nepochs=1), ExecutionConfig(**QUIET), train_data=scan)
    icfg = InferenceConfig(model=ModelConfig(N=32, n_filters_scale=1), model_path=res.bundle_path)
    ref = reconstruct(icfg, ExecutionConfig(**QUIET), data=scan)
    got = reconstruct(icfg, ExecutionConfig(**QUIET, compile=True), data=scan)
    np.testing.assert_allclose(got.object, ref.object, rtol=1e-5, atol=1e-6)


def test_bf16_inference_is_close_to_fp32(tmp_path, scan):
    res = train(_cfg(tmp_path, nepochs=1), ExecutionConfig(**QUIET), train_data=scan)
    icfg = InferenceConfig(model=ModelConfig(N=32, n_filters_scale=1), model_path=res.bundle_path)
    ref = reconstruct(icfg, ExecutionConfig(**QUIET), data=scan)
    got = reconstruct(icfg, ExecutionConfig(**QUIET, precision="bf16-mixed"), data=scan)
    assert got.object.dtype == ref.object.dtype
    covered = ref.coverage > 0
    err = np.abs(got.object - ref.object)[covered].max() / np.abs(ref.object[covered]).max()
    assert 0 < err < 5e-2  # bf16 has an 8-bit mantissa (≈ 4e-3 per op)
