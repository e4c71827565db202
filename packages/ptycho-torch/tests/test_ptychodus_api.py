"""The Ptychodus "PtychoPINN-Torch" entry without Ptychodus (``specs/torch-backend.md``,
"Ptychodus entry"): config holders, data and settings mapping, model-file checks, and the
``base_api`` flow Ptychodus's children run. Acceptance against the real Ptychodus 1.7.0 is
``tests/ptychodus/test_torch_entry.py``."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from ptycho_core import bundle as core_bundle
from ptycho_core.config import ExecutionConfig, ModelConfig, TrainingConfig
from ptycho_core.errors import BundleError, ConfigError, DataContractError
from ptycho_core.io import save_npz
from ptycho_core.simulation import simulate_scan
from ptycho_torch import config_params as cp
from ptycho_torch.api import _mapping
from ptycho_torch.lightning_utils import find_best_checkpoint

# What Ptychodus 1.7.0 builds from its default settings (model/ptychopinn_torch/settings.py),
# a representative part of its ~90 keywords.
PTYCHODUS_DATA = dict(N=128, C=4, K=6, grid_size=(2, 2), probe_scale=4.0, scan_pattern="Isotropic")
PTYCHODUS_MODEL = dict(
    mode="Unsupervised",
    object_big=True,
    probe_big=True,
    loss_function="Poisson",
    amp_activation="silu",
    cbam_encoder=True,
    intensity_scale=10000.0,
    intensity_scale_trainable=False,
    n_filters_scale=2,
    probe_mask=None,
    C_model=4,
    C_forward=4,
    decoder_last_amp_channels=4,
)
PTYCHODUS_TRAINING = dict(
    epochs=50,
    batch_size=16,
    learning_rate=1e-3,
    n_devices=1,
    num_workers=4,
    accum_steps=1,
    gradient_clip_val=None,
    nll=True,
    device="cuda",
    strategy="ddp_spawn",
    framework="Lightning",
    orchestrator="Lightning",
    scheduler="Default",
    epochs_fine_tune=0,
)
PTYCHODUS_INFERENCE = dict(batch_size=1000, middle_trim=32, window=20)


def _map(tmp_path, n=32, cuda=False, **changes):
    parts = [dict(PTYCHODUS_DATA), dict(PTYCHODUS_MODEL), dict(PTYCHODUS_TRAINING)]
    for part in parts:
        part.update({k: v for k, v in changes.items() if k in part})
    return _mapping.training_configs(
        *parts, PTYCHODUS_INFERENCE, n=n, output_dir=tmp_path, cuda_available=cuda
    )


# ----------------------------------------------------------------------------- config_params
def test_config_params_imports_no_framework():
    code = (
        "import sys, ptycho_torch.config_params, ptycho_torch.api, ptycho_torch.lightning_utils;"
        "bad = [m for m in ('torch', 'lightning', 'tensorflow') if m in sys.modules];"
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_config_params_are_lenient_mutable_and_picklable():
    t = cp.TrainingConfig(epochs=3, finetune_stage3_lr_decoder=1e-5, unknown_new_key="x")
    t.n_devices = 2  # Ptychodus reassigns it in its child
    back = pickle.loads(pickle.dumps(t))
    assert back.to_dict() == t.to_dict()
    assert back.to_dict()["unknown_new_key"] == "x" and back.to_dict()["n_devices"] == 2
    assert cp.DataConfig().to_dict()["C"] == 1  # defaults fill what was not given
    with pytest.raises(TypeError):
        cp.ModelConfig("positional")


# ----------------------------------------------------------------------------- data
def test_counts_become_amplitudes():
    counts = np.array([[[0, 1], [4, 9]]], np.uint32)
    np.testing.assert_array_equal(_mapping.amplitude_from_counts(counts), [[[0, 1], [2, 3]]])
    inpainted = np.array([[[-0.5, 16.0], [1.0, 0.0]]])
    np.testing.assert_array_equal(_mapping.amplitude_from_counts(inpainted), [[[0, 4], [1, 0]]])
    with pytest.raises(DataContractError, match="finite"):
        _mapping.amplitude_from_counts(np.full((1, 2, 2), np.nan))


def test_single_mode_probe_only():
    p = np.ones((1, 8, 8), np.complex128)
    assert _mapping.single_mode_probe(p).shape == (8, 8)
    with pytest.raises(DataContractError, match=r"single-mode probe.*\(3, 8, 8\)"):
        _mapping.single_mode_probe(np.ones((3, 8, 8), complex))


def test_object_grid_is_ptychodus_centred_grid():
    # Ptychodus puts the object centre at the centre of the scan's bounding box: for a 21 x 31
    # array that is pixel (10, 15); positions symmetric about it.
    pos_yx = np.array([[4.0, 9.5], [16.0, 20.5], [10.0, 15.0]])
    assert _mapping.object_grid(pos_yx) == (21, 31)
    scan = _mapping.scan_from_ptychodus(
        np.ones((3, 8, 8), np.uint16), np.ones((1, 8, 8), complex), pos_yx
    )
    assert scan.object is not None and scan.object.shape == (21, 31)
    np.testing.assert_array_equal(scan.xcoords, [9.5, 20.5, 15.0])  # x is column 1
    np.testing.assert_array_equal(scan.ycoords, [4.0, 16.0, 10.0])


def _export(path, scan):
    """A file laid out as Ptychodus's "Export Training Data" writes it (api/io.py)."""
    counts = np.rint(scan.diffraction.astype(np.float64) ** 2).astype(np.uint32)
    np.savez(
        path,
        xcoords=scan.xcoords,
        ycoords=scan.ycoords,
        xcoords_start=scan.xcoords,
        ycoords_start=scan.ycoords,
        diff3d=counts,
        bad_pixels=np.zeros(counts.shape[1:], bool),
        probeGuess=scan.probe[None],
        objectGuess=np.ones((64, 64), np.complex64),
        scan_index=np.zeros(len(counts), int),
    )
    return counts


def test_training_folder_reads_a_ptychodus_export_as_amplitudes(tmp_path):
    scan = simulate_scan(N=32, n_positions=8, seed=1, object_size=64)
    counts = _export(tmp_path / "exported.npz", scan)
    got = _mapping.read_training_scan(tmp_path)
    np.testing.assert_allclose(got.diffraction, np.sqrt(counts.astype(np.float32)), rtol=1e-6)
    assert got.probe.shape == (32, 32)
    # A DATA-001 file is amplitudes already, and train_data.npz is preferred.
    save_npz(tmp_path / "train_data.npz", scan)
    np.testing.assert_array_equal(
        _mapping.read_training_scan(tmp_path).diffraction, scan.diffraction
    )
    (tmp_path / "train_data.npz").unlink()
    save_npz(tmp_path / "other.npz", scan)
    with pytest.raises(DataContractError, match="exactly one"):
        _mapping.read_training_scan(tmp_path)


# ----------------------------------------------------------------------------- settings
def test_ptychodus_defaults_map_with_a_line_per_change(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ptycho_torch.api")
    config, execution = _map(tmp_path)
    m = config.model
    assert (m.N, m.gridsize, m.amp_activation, m.model_type) == (32, 2, "swish", "pinn")
    assert (config.nll_weight, config.mae_weight, config.nepochs, config.batch_size) == (
        1.0,
        0.0,
        50,
        16,
    )
    assert config.neighbor_count == 6 and config.backend == "pytorch"
    assert (execution.accelerator, execution.devices, execution.strategy) == ("cpu", 1, "auto")
    assert (execution.num_workers, execution.scheduler, execution.inference_batch_size) == (
        4,
        ExecutionConfig().scheduler,
        1000,
    )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("DataConfig.N = 128" in w for w in warnings)
    assert any("TrainingConfig.device = 'cuda'" in w for w in warnings)
    assert any("TrainingConfig.strategy = 'ddp_spawn'" in w for w in warnings)
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    for key in ("cbam_encoder", "intensity_scale", "scan_pattern", "epochs_fine_tune", "window"):
        assert sum(f".{key} = " in i for i in infos) == 1, key
    for used in ("C_model", "framework", "batch_size", "epochs"):
        assert not any(f".{used} = " in i and "ignored" in i for i in infos), used


def test_settings_variants(tmp_path, caplog):
    config, execution = _map(tmp_path, loss_function="MAE", nll=False, mode="Supervised", C=1)
    assert (config.nll_weight, config.mae_weight, config.model.model_type) == (
        0.0,
        1.0,
        "supervised",
    )
    assert config.model.gridsize == 1
    _, execution = _map(tmp_path, cuda=True, n_devices=2, scheduler="Exponential")
    assert (execution.accelerator, execution.devices, execution.strategy) == ("gpu", 2, "ddp_spawn")
    assert execution.scheduler == ExecutionConfig().scheduler == "cosine"
    assert "scheduler = 'Exponential'" in caplog.text
    with pytest.raises(ConfigError, match="num_channels"):
        _map(tmp_path, C=3)
    with pytest.raises(ConfigError, match="amp_activation"):
        _map(tmp_path, amp_activation="gelu")


# ----------------------------------------------------------------------------- model files
def test_foreign_model_files_are_clear_errors(tmp_path):
    ckpt = tmp_path / "ptychopinn.ckpt"
    with zipfile.ZipFile(ckpt, "w") as zf:  # torch.save / Lightning layout
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(BundleError, match="Lightning checkpoint"):
        _mapping.check_model_file(ckpt)
    (tmp_path / "text.ckpt").write_text("hello")
    with pytest.raises(BundleError, match="not a zip"):
        _mapping.check_model_file(tmp_path / "text.ckpt")
    with pytest.raises(BundleError, match="not found"):
        _mapping.check_model_file(tmp_path / "missing.ckpt")
    tc = TrainingConfig(model=ModelConfig(N=32))
    manifest = core_bundle.make_manifest(
        "tensorflow", tc.model, tc, 1.0, {}, ["autoencoder", "diffraction_to_obj"]
    )
    core_bundle.write_bundle(tmp_path / "tf.ckpt", manifest, {})
    with pytest.raises(BundleError, match="'tensorflow' backend"):
        _mapping.check_model_file(tmp_path / "tf.ckpt")


def test_find_best_checkpoint(tmp_path):
    assert find_best_checkpoint(tmp_path) is None
    (tmp_path / "wts.h5.zip").write_bytes(b"x")
    assert find_best_checkpoint(tmp_path) == tmp_path / "wts.h5.zip"


def test_model_module_exports_the_handle():
    from ptycho_torch._ptychodus_module import PtychoPINN_Lightning as Handle
    from ptycho_torch.model import PtychoPINN_Lightning

    assert PtychoPINN_Lightning is Handle


# ----------------------------------------------------------------------------- the flow
def test_base_api_flow_as_ptychodus_runs_it(tmp_path):
    """Train from an export with a live callback, then reconstruct on Ptychodus's grid; the
    object equals ptycho_torch.workflows.reconstruct on the same scan."""
    from lightning.pytorch.callbacks import Callback

    from ptycho_core.config import InferenceConfig
    from ptycho_torch.api.base_api import (
        ConfigManager,
        DataloaderFormats,
        InferenceEngine,
        PtychoDataLoader,
        PtychoModel,
        Trainer,
    )
    from ptycho_torch.model import PtychoPINN_Lightning
    from ptycho_torch.workflows import reconstruct

    scan = simulate_scan(N=32, n_positions=24, seed=2, object_size=72)
    counts = _export(tmp_path / "export.npz", scan)
    cm = ConfigManager(
        data_config=cp.DataConfig(N=32, C=1),
        model_config=cp.ModelConfig(mode="Unsupervised"),
        training_config=cp.TrainingConfig(epochs=1, device="cpu"),
        inference_config=cp.InferenceConfig(),
        datagen_config=cp.DatagenConfig(),
    )
    loader = PtychoDataLoader(
        data_dir=tmp_path,
        config_manager=cm,
        data_format=DataloaderFormats("lightning_only_module"),
        output_dir=tmp_path / "out",
    )
    pm = PtychoModel._new_model(model=PtychoPINN_Lightning, config_manager=cm)
    trainer = Trainer._from_lightning(
        model=pm, dataloader=loader, orchestration="lightning", config_manager=cm
    )
    seen: list[tuple[int, float]] = []

    class Collect(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(
                (trainer.current_epoch, float(trainer.callback_metrics[pm.model.loss_name]))
            )

    trainer._trainer.callbacks.append(Collect())
    trainer.train(orchestration="lightning", experiment_name="")
    ckpt = find_best_checkpoint(loader.output_dir)
    assert ckpt is not None and ckpt.parent.parent == tmp_path / "out"
    history = core_bundle.read_manifest(ckpt)["history"]
    assert seen == [(0, pytest.approx(history["train_loss"][0], rel=1e-6))]

    configs = PtychoModel._extract_configs_from_checkpoint(str(ckpt))
    assert configs[1].to_dict()["mode"] == "Unsupervised" and configs[0].to_dict()["C"] == 1
    loaded = PtychoModel(*configs[1:2], configs[0], *configs[2:])
    loaded.model = PtychoPINN_Lightning.load_from_checkpoint(ckpt)
    cm2 = ConfigManager.from_loaded_model(loaded)
    cm2.validate_arch_compatibility(loaded)
    pos_yx = np.stack([scan.ycoords, scan.xcoords], axis=1)
    data = PtychoDataLoader.from_np(counts, scan.probe[None], pos_yx, cm2)
    got = InferenceEngine(config_manager=cm2, ptycho_model=loaded).predict_and_stitch(data)
    assert got.shape == _mapping.object_grid(pos_yx) and got.dtype == np.complex64
    direct = reconstruct(
        InferenceConfig(model=ModelConfig(N=32), model_path=ckpt), data=data.scan
    ).object
    np.testing.assert_allclose(got, direct, atol=1e-6)
