"""Resuming a TensorFlow training run (``specs/tf-backend.md``): the training state written after
every epoch (weights, optimizer, epoch, history, callback state) and the epoch-keyed shuffle
let an interrupted run continue to the weights and history of an uninterrupted one."""

import dataclasses

import keras
import numpy as np
import pytest

from ptycho_core.checkpoint import STATE_NAME, read_training_state
from ptycho_core.config import ExecutionConfig, ModelConfig, TrainingConfig
from ptycho_core.engine import FitRequest
from ptycho_core.errors import ConfigError, PtychoError
from ptycho_core.simulation import simulate_scan
from ptycho_core.training import HistoryRecorder, LossSpec, steps_per_epoch
from ptycho_core.workflow import prepare_training
from ptycho_tf import workflows
from ptycho_tf.bundle import load_bundle
from ptycho_tf.execution import resolve_strategy
from ptycho_tf.training import make_dataset, restore_training_state

#: Checkpointing on (the state is a checkpoint). With this rate the validation loss is best after
#: epoch 0, so the plateau callback (patience 2) halves the rate at the end of epoch 2: that only
#: happens after a resume at epoch 1 if its wait count and best value were carried over.
EXEC = ExecutionConfig(
    accelerator="cpu",
    enable_progress_bar=False,
    enable_checkpointing=True,
    learning_rate=0.02,
    scheduler="plateau",
    early_stop_patience=50,
)
NEPOCHS = 4
#: Tolerance of a resumed run against an uninterrupted one (specs/tf-backend.md): op
#: determinism on the CPU makes them bit-identical; this bound is what the spec promises.
RTOL = 1e-6


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(N=32, n_positions=40, nphotons=1e6, seed=3)


def _config(out, **kw):
    return TrainingConfig(
        # the network this test's plateau schedule was set up with (EXEC: the rate drop after
        # the resume point needs its validation curve); the resume mechanics do not depend on it
        model=ModelConfig(N=32, gridsize=1, n_filters_scale=1, generator="cnn"),
        nepochs=kw.pop("nepochs", NEPOCHS),
        batch_size=8,
        output_dir=out,
        backend="tensorflow",
        seed=11,
        validation_fraction=0.2,
        # the loss this test's plateau schedule was set up with (a rate drop after the resume
        # point); the resume mechanics do not depend on the loss
        nll_weight=1.0,
        mae_weight=0.0,
        **kw,
    )


class _Interrupt(keras.callbacks.Callback):
    """Raise KeyboardInterrupt at the end of epoch ``at`` (after the state was written)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            raise KeyboardInterrupt


def _weights(bundle_path):
    return [np.asarray(w) for w in load_bundle(bundle_path).model.autoencoder.weights]


def test_state_round_trip_restores_weights_and_optimizer(scan, tmp_path):
    cfg = _config(tmp_path, nepochs=1)
    res = workflows.train(cfg, EXEC, train_data=scan)
    snap = read_training_state(tmp_path / "checkpoints" / STATE_NAME)
    assert snap.epoch == 0 and snap.nepochs == 1 and len(snap.history["rows"]) == 1
    assert snap.history["rows"][0]["train_loss"] == res.history["train_loss"][0]
    assert set(snap.callbacks) == {"ReduceLROnPlateau", "EarlyStopping", "TrainingState"}
    # a freshly built run restored from the state holds the trained weights and optimizer
    prep = prepare_training(cfg, scan)
    request = FitRequest(
        config=cfg,
        execution=EXEC,
        prepared=prep,
        loss=LossSpec.from_training_config(cfg),
        history=HistoryRecorder(),
        output_dir=tmp_path / "unused",
    )
    strategy = resolve_strategy(EXEC)
    models, trainer = workflows.build_training_run(request, strategy)
    fresh = [np.asarray(w).copy() for w in models.autoencoder.weights]
    restore_training_state(snap, models.autoencoder, trainer, strategy)
    restored = [np.asarray(w) for w in models.autoencoder.weights]
    trained = _weights(res.bundle_path)
    assert any(not np.array_equal(a, b) for a, b in zip(fresh, trained, strict=True))
    for a, b in zip(restored, trained, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(trainer.optimizer.iterations.numpy()) == steps_per_epoch(len(prep.train), 8)
    for var, saved in zip(trainer.optimizer.variables, snap.optimizer, strict=True):
        np.testing.assert_array_equal(np.asarray(var), saved)


@pytest.fixture(scope="module")
def straight(scan, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    return workflows.train(_config(out), EXEC, train_data=scan)


@pytest.mark.slow  # three 4-epoch trainings (about 60 s on 2 cores)
def test_interrupted_then_resumed_matches_uninterrupted(scan, straight, tmp_path, monkeypatch):
    real = workflows.build_callbacks

    def interrupting(*args, **kwargs):
        return [*real(*args, **kwargs), _Interrupt(at=1)]

    out = tmp_path / "run"
    monkeypatch.setattr(workflows, "build_callbacks", interrupting)
    with pytest.raises(KeyboardInterrupt):
        workflows.train(_config(out), EXEC, train_data=scan)
    monkeypatch.setattr(workflows, "build_callbacks", real)
    state = out / "checkpoints" / STATE_NAME
    snap = read_training_state(state)
    assert snap.epoch == 1 and snap.nepochs == NEPOCHS and not snap.stopped
    assert len(snap.history["rows"]) == 2

    resumed = workflows.train(_config(out), EXEC, train_data=scan, resume_from=state)
    assert resumed.epochs_trained == NEPOCHS
    assert resumed.history["epoch"] == [0.0, 1.0, 2.0, 3.0]
    for key in ("train_loss", "val_loss", "lr"):
        assert np.isfinite(straight.history[key]).all()
        np.testing.assert_allclose(
            resumed.history[key], straight.history[key], rtol=RTOL, equal_nan=False
        )
    # the plateau callback lowered the rate after the resume point: its state carried over
    assert straight.history["lr"][3] < straight.history["lr"][2]
    for a, b in zip(_weights(resumed.bundle_path), _weights(straight.bundle_path), strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-7)


@pytest.mark.slow
def test_resume_extends_a_finished_run(scan, straight, tmp_path):
    """A finished 4-epoch run resumed with 6 epochs keeps its 4 rows and adds 2."""
    state = straight.bundle_path.parent / "checkpoints" / STATE_NAME
    longer = workflows.train(_config(tmp_path, nepochs=6), EXEC, train_data=scan, resume_from=state)
    assert longer.epochs_trained == 6
    assert np.isfinite(longer.history["train_loss"]).all()
    assert longer.history["train_loss"][:4] == straight.history["train_loss"]


@pytest.mark.slow
def test_a_resumed_run_with_nothing_left_trains_no_epoch(scan, straight, tmp_path):
    state = straight.bundle_path.parent / "checkpoints" / STATE_NAME
    again = workflows.train(_config(tmp_path), EXEC, train_data=scan, resume_from=state)
    assert again.history["train_loss"] == straight.history["train_loss"]
    for a, b in zip(_weights(again.bundle_path), _weights(straight.bundle_path), strict=True):
        np.testing.assert_array_equal(a, b)


def test_epoch_order_depends_only_on_seed_and_epoch(scan):
    cfg = _config("unused")
    prep = prepare_training(cfg, scan)
    n, bs = len(prep.train), 8
    steps = steps_per_epoch(n, bs)

    def batches(first, stop):
        ds = make_dataset(
            prep.train, bs, shuffle=True, seed=5, with_ground_truth=False, epochs=(first, stop)
        )
        return [np.asarray(b["x"]) for b in ds]

    full = batches(0, 3)
    assert len(full) == 3 * steps
    tail = batches(2, 3)  # epoch 2 alone, as a run resumed after epoch 1 sees it
    for a, b in zip(full[2 * steps :], tail, strict=True):
        np.testing.assert_array_equal(a, b)
    # every epoch is a permutation of the groups, and epochs differ
    epoch0 = np.concatenate(full[:steps])
    epoch1 = np.concatenate(full[steps : 2 * steps])
    assert len(epoch0) == n and not np.array_equal(epoch0, epoch1)


@pytest.mark.parametrize(
    "content", [b"", b"not an npz", None], ids=["empty", "garbage", "other-npz"]
)
def test_a_bad_state_file_is_a_config_error_naming_it(scan, tmp_path, content):
    bad = tmp_path / "bad.state.npz"
    if content is None:
        np.savez(bad, x=np.zeros(3))
    else:
        bad.write_bytes(content)
    with pytest.raises(ConfigError, match="bad.state.npz") as info:
        workflows.train(_config(tmp_path / "o"), EXEC, train_data=scan, resume_from=bad)
    assert isinstance(info.value, PtychoError)


@pytest.mark.slow
def test_a_state_of_another_architecture_is_refused(scan, straight, tmp_path):
    state = straight.bundle_path.parent / "checkpoints" / STATE_NAME
    wider = dataclasses.replace(
        _config(tmp_path), model=ModelConfig(N=32, gridsize=1, n_filters_scale=2)
    )
    with pytest.raises(ConfigError, match="shape|arrays"):
        workflows.train(wider, EXEC, train_data=scan, resume_from=state)
