"""Lightning training: every execution-config field that shapes the run, seeding, history,
checkpoint resume, trainable probe / scale, supervised baseline."""

import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ptycho_core.bundle import read_bundle
from ptycho_core.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_core.engine import FitRequest, TrainResult
from ptycho_core.errors import DataContractError
from ptycho_core.simulation import simulate_scan
from ptycho_core.training import (
    PLATEAU_FACTOR,
    PLATEAU_PATIENCE,
    HistoryRecorder,
    LossSpec,
    min_lr,
    scheduled_lr,
)
from ptycho_core.workflow import prepare_training, read_history_csv
from ptycho_torch.training import HistoryCallback, build_trainer
from ptycho_torch.workflows import build_training_run, train

QUIET = dict(enable_progress_bar=False, logger_backend="none", enable_checkpointing=False)


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(N=32, n_positions=40, nphotons=1e5, seed=3)


def cfg(tmp_path, **kw):
    model = kw.pop("model", ModelConfig(N=32, gridsize=1, n_filters_scale=1))
    base = dict(
        model=model, batch_size=8, nepochs=2, output_dir=tmp_path, seed=7, validation_fraction=0.2
    )
    base.update(kw)
    return TrainingConfig(**base)


def run(config, ex, scan, history=None, **kw):
    """:func:`build_training_run` for the request the engine would make (no fit)."""
    request = FitRequest(
        config=config,
        execution=ex,
        prepared=prepare_training(config, scan),
        loss=LossSpec.from_training_config(config),
        history=history or HistoryRecorder(),
        output_dir=config.output_dir,
    )
    return build_training_run(request, **kw)


# ------------------------------------------------------------------------- builders (no fit)
def test_trainer_honours_execution_fields(tmp_path):
    ex = PyTorchExecutionConfig(
        accelerator="cpu",
        devices=1,
        deterministic=True,
        gradient_clip_val=0.5,
        accum_steps=3,
        enable_progress_bar=False,
        enable_checkpointing=True,
        checkpoint_save_top_k=2,
        checkpoint_monitor_metric="val_nll",
        checkpoint_mode="max",
        early_stop_patience=4,
        logger_backend="csv",
    )
    tr = build_trainer(ex, max_epochs=3, output_dir=tmp_path)
    assert type(tr.accelerator).__name__ == "CPUAccelerator"
    assert tr.gradient_clip_val == 0.5
    assert tr.accumulate_grad_batches == 3
    assert tr.progress_bar_callback is None
    assert torch.are_deterministic_algorithms_enabled()
    assert tr.max_epochs == 3
    ck = tr.checkpoint_callback
    assert isinstance(ck, ModelCheckpoint)
    assert (ck.save_top_k, ck.monitor, ck.mode) == (2, "val_nll", "max")
    assert str(tmp_path / "checkpoints") == ck.dirpath
    es = [c for c in tr.callbacks if isinstance(c, EarlyStopping)]
    assert len(es) == 1 and es[0].patience == 4 and es[0].monitor == "val_loss"
    assert isinstance(tr.logger, CSVLogger)


def test_trainer_toggles(tmp_path):
    ex = PyTorchExecutionConfig(
        accelerator="cpu",
        enable_progress_bar=True,
        enable_checkpointing=False,
        logger_backend="none",
        deterministic=False,
    )
    tr = build_trainer(ex, max_epochs=1, output_dir=tmp_path)
    assert tr.progress_bar_callback is not None
    assert not any(isinstance(c, ModelCheckpoint) for c in tr.callbacks)
    assert tr.logger is None
    assert tr.gradient_clip_val is None and tr.accumulate_grad_batches == 1
    torch.use_deterministic_algorithms(False)


def test_missing_optional_logger_falls_back_to_csv(tmp_path, caplog):
    import importlib.util

    if importlib.util.find_spec("mlflow"):
        pytest.skip("mlflow installed here")
    ex = PyTorchExecutionConfig(
        accelerator="cpu", logger_backend="mlflow", enable_progress_bar=False
    )
    with caplog.at_level(logging.WARNING):
        tr = build_trainer(ex, max_epochs=1, output_dir=tmp_path)
    assert isinstance(tr.logger, CSVLogger)
    assert "mlflow" in caplog.text


def test_ddp_strategy_and_devices_are_passed(tmp_path):
    ex = PyTorchExecutionConfig(
        accelerator="cpu",
        strategy="ddp",
        devices=2,
        enable_progress_bar=False,
        logger_backend="none",
    )
    tr = build_trainer(ex, max_epochs=1, output_dir=tmp_path)
    assert type(tr.strategy).__name__ == "DDPStrategy"
    assert tr.num_devices == 2


def test_dataloaders_honour_worker_fields(tmp_path, scan):
    ex = PyTorchExecutionConfig(
        accelerator="cpu",
        num_workers=2,
        pin_memory=True,
        persistent_workers=True,
        prefetch_factor=3,
        **QUIET,
    )
    module, dm, _ = run(cfg(tmp_path, batch_size=5), ex, scan)
    dl = dm.train_dataloader()
    assert (
        dl.num_workers,
        dl.pin_memory,
        dl.persistent_workers,
        dl.prefetch_factor,
        dl.batch_size,
    ) == (2, True, True, 3, 5)
    vl = dm.val_dataloader()
    assert vl.num_workers == 2 and vl.batch_size == 5
    ex0 = PyTorchExecutionConfig(accelerator="cpu", **QUIET)
    _, dm0, _ = run(cfg(tmp_path), ex0, scan)
    dl0 = dm0.train_dataloader()
    assert (dl0.num_workers, dl0.pin_memory, dl0.persistent_workers) == (0, False, False)


@pytest.mark.parametrize("sched", ["plateau", "cosine", "step", "none"])
def test_optimizer_learning_rate_and_scheduler_follow_core_policy(tmp_path, scan, sched):
    lr0, nepochs = 3e-3, 7
    ex = PyTorchExecutionConfig(accelerator="cpu", learning_rate=lr0, scheduler=sched, **QUIET)
    module, _, _ = run(cfg(tmp_path, nepochs=nepochs), ex, scan)
    conf = module.configure_optimizers()
    opt = conf["optimizer"] if isinstance(conf, dict) else conf
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == lr0
    if sched == "none":
        assert not isinstance(conf, dict)
        return
    s = conf["lr_scheduler"]["scheduler"]
    if sched == "plateau":
        assert isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau)
        assert (s.factor, s.patience, s.min_lrs[0]) == (
            PLATEAU_FACTOR,
            PLATEAU_PATIENCE,
            min_lr(lr0),
        )
        assert conf["lr_scheduler"]["monitor"] == "val_loss"
        return
    got = []
    for _ in range(nepochs):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert got == pytest.approx([scheduled_lr(sched, lr0, e, nepochs) for e in range(nepochs)])


def test_monitors_fall_back_to_train_without_validation(tmp_path, scan):
    ex = PyTorchExecutionConfig(
        accelerator="cpu",
        enable_progress_bar=False,
        logger_backend="none",
        checkpoint_monitor_metric="val_nll",
    )
    module, dm, tr = run(cfg(tmp_path, validation_fraction=0.0), ex, scan)
    assert not dm.has_validation
    assert module.monitor == "train_loss"
    es = [c for c in tr.callbacks if isinstance(c, EarlyStopping)]
    assert es[0].monitor == "train_loss" and tr.checkpoint_callback.monitor == "train_nll"


def test_extra_callbacks_and_core_history_recorder(tmp_path, scan):
    class Marker(Callback):
        pass

    marker, rec = Marker(), HistoryRecorder()
    ex = PyTorchExecutionConfig(accelerator="cpu", **QUIET)
    _, _, tr = run(cfg(tmp_path), ex, scan, history=rec, callbacks=[marker])
    assert tr.callbacks[-1] is marker
    hist = [c for c in tr.callbacks if isinstance(c, HistoryCallback)]
    assert len(hist) == 1 and hist[0].recorder is rec


# --------------------------------------------------------------------------------- fitting
def test_same_seed_same_initial_weights_and_loss_curve(tmp_path, scan):
    ex = PyTorchExecutionConfig(accelerator="cpu", **QUIET)
    sd = []
    for d in ("a", "b"):
        module, _, _ = run(cfg(tmp_path / d), ex, scan)
        sd.append(module.model.state_dict())
    assert all(torch.equal(sd[0][k], sd[1][k]) for k in sd[0])
    other, _, _ = run(cfg(tmp_path / "c", seed=8), ex, scan)
    assert not torch.equal(
        other.model.state_dict()["enc0_conv1.weight"], sd[0]["enc0_conv1.weight"]
    )
    r1 = train(cfg(tmp_path / "r1"), ex, train_data=scan)
    r2 = train(cfg(tmp_path / "r2"), ex, train_data=scan)
    assert r1.history["train_loss"] == r2.history["train_loss"]
    assert r1.history["val_loss"] == r2.history["val_loss"]


def test_train_writes_history_and_bundle(tmp_path, scan):
    ex = PyTorchExecutionConfig(
        accelerator="cpu",
        enable_progress_bar=False,
        logger_backend="csv",
        scheduler="step",
        learning_rate=2e-3,
        early_stop_patience=10,
    )
    res = train(cfg(tmp_path, nepochs=3, nll_weight=1.0, mae_weight=0.1), ex, train_data=scan)
    assert isinstance(res, TrainResult)
    assert res.backend == "pytorch" and res.epochs_trained == 3
    csv_history = read_history_csv(tmp_path / "history.csv")
    assert list(csv_history)[:4] == ["epoch", "train_loss", "val_loss", "lr"]
    assert csv_history["epoch"] == [0.0, 1.0, 2.0]
    for key in ("train_nll", "train_mae", "val_nll", "val_mae"):
        assert all(math.isfinite(v) for v in csv_history[key])
    for k in ("train_loss", "val_loss"):
        assert csv_history[k] == pytest.approx(res.history[k])
    # lr is the rate used during each epoch (specs/training.md), not the next epoch's
    assert csv_history["lr"] == pytest.approx([scheduled_lr("step", 2e-3, e, 3) for e in range(3)])
    # total = nll + 0.1 * mae, recorded per epoch
    total = np.add(csv_history["train_nll"], np.multiply(0.1, csv_history["train_mae"]))
    np.testing.assert_allclose(csv_history["train_loss"], total, rtol=1e-4)
    b = read_bundle(res.bundle_path, expected_backend="pytorch")
    assert b.manifest["backend"] == "pytorch"
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    assert any((tmp_path / "logs").rglob("metrics.csv"))


def test_resume_from_checkpoint(tmp_path, scan):
    # cosine: the interrupted run (1 epoch) stepped its rate to the floor; the resumed run (2
    # epochs) must use the rate of epoch 1 of a 2-epoch schedule, as the straight run does
    ex = PyTorchExecutionConfig(
        accelerator="cpu", enable_progress_bar=False, logger_backend="none", scheduler="cosine"
    )
    first = train(cfg(tmp_path, nepochs=1), ex, train_data=scan)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.exists()
    resumed = train(cfg(tmp_path, nepochs=2), ex, train_data=scan, resume_from=ckpt)
    assert resumed.history["train_loss"][0] == first.history["train_loss"][0]
    assert len(resumed.history["train_loss"]) == 2
    straight = train(cfg(tmp_path / "s", nepochs=2), ex, train_data=scan)
    assert resumed.history["train_loss"] == pytest.approx(straight.history["train_loss"], rel=1e-5)


def test_trainable_probe_and_scale_train_and_are_saved(tmp_path, scan):
    ex = PyTorchExecutionConfig(accelerator="cpu", **QUIET)
    res = train(
        cfg(tmp_path, nepochs=1, probe_trainable=True, intensity_scale_trainable=True),
        ex,
        train_data=scan,
    )
    from ptycho_core.physics import normalize_probe

    b = read_bundle(res.bundle_path)
    probe = b.load_npy("probe.npy")
    start = normalize_probe(scan.probe, 4.0)
    assert not np.allclose(probe, start, atol=1e-7)
    s0 = b.manifest["normalization"]["intensity_scale"]
    assert b.manifest["intensity_scale"] != pytest.approx(s0, rel=1e-7)
    assert res.intensity_scale == pytest.approx(b.manifest["intensity_scale"], rel=1e-6)


def test_frozen_probe_and_scale_do_not_change(tmp_path, scan):
    ex = PyTorchExecutionConfig(accelerator="cpu", **QUIET)
    res = train(cfg(tmp_path, nepochs=1), ex, train_data=scan)
    b = read_bundle(res.bundle_path)
    from ptycho_core.physics import normalize_probe

    np.testing.assert_array_equal(
        b.load_npy("probe.npy"), normalize_probe(scan.probe, 4.0).astype(np.complex64)
    )
    assert b.manifest["intensity_scale"] == pytest.approx(
        b.manifest["normalization"]["intensity_scale"], rel=1e-6
    )


def test_supervised_baseline_trains_and_needs_ground_truth(tmp_path, scan):
    ex = PyTorchExecutionConfig(accelerator="cpu", **QUIET)
    model = ModelConfig(N=32, gridsize=1, n_filters_scale=1, model_type="supervised")
    res = train(cfg(tmp_path, model=model, nepochs=2), ex, train_data=scan)
    h = res.history
    assert (
        "train_amp_mae" in h
        and "train_phase_mae" in h
        and all(math.isfinite(v) for v in h["train_loss"])
    )
    bare = replace(scan, Y=None, object=None)
    with pytest.raises(DataContractError, match="'Y'.*supervised"):
        train(cfg(tmp_path / "x", model=model, nepochs=1), ex, train_data=bare)


def test_gridsize2_trains(tmp_path, scan):
    ex = PyTorchExecutionConfig(accelerator="cpu", **QUIET)
    model = ModelConfig(N=32, gridsize=2, n_filters_scale=1)
    res = train(cfg(tmp_path, model=model, nepochs=1, realspace_weight=0.5), ex, train_data=scan)
    assert math.isfinite(res.history["train_loss"][0])
    assert "train_realspace" in res.history
