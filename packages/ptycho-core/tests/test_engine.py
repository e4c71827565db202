"""The train / reconstruct skeleton and bundles (``ptycho_core.engine``), driven by a fake NumPy
backend.

The fake "model" holds a probe, a log intensity scale and a small weight array; its ``fit``
"trains" by scaling them and records a few epochs; its ``predict`` cuts the patches of a known
object at each group's positions (``ptycho_core.physics``), so the stitched reconstruction must
equal that object wherever a patch landed (integer raster positions: extraction and stitching are
exact there).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from ptycho_core import bundle as core_bundle
from ptycho_core import engine, physics
from ptycho_core.config import ExecutionConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_core.engine import FitOutcome, FitRequest, LoadedBundle, TrainResult
from ptycho_core.errors import (
    BundleBackendMismatchError,
    BundleError,
    ConfigError,
    DataContractError,
)
from ptycho_core.io import ScanData, save_npz
from ptycho_core.simulation import default_probe, procedural_object, raster_scan, simulate
from ptycho_core.testing import BackendConformance
from ptycho_core.training import LossSpec, scheduled_lr
from ptycho_core.workflow import Reconstruction

N = 32
SIZE = 72
NEPOCHS = 3
FIT_S = 0.5
SCALE_GAIN = 1.25  # the fake's "training" multiplies the intensity scale by this ...
PROBE_GAIN = 2.0  # ... the probe by this ...
WEIGHTS0 = np.arange(4, dtype=np.float32)  # ... and adds 1 to these initial weights


@dataclass(eq=False)
class FakeModel:
    config: ModelConfig
    probe: np.ndarray
    log_scale: float
    weights: np.ndarray
    flags: dict[str, bool] = field(default_factory=dict)


class FakeHooks:
    """A NumPy backend implementing :class:`ptycho_core.engine.BackendHooks`."""

    name = "pytorch"
    weights_entry = "weights.npy"

    def __init__(
        self,
        truth: np.ndarray,
        *,
        global_zero: bool = True,
        history: dict[str, list[float]] | None = None,
    ) -> None:
        self.truth = truth
        self.global_zero = global_zero
        self.history = history
        self.fit_calls: list[FitRequest] = []
        self.batches: list[Any] = []

    def fit(self, request: FitRequest) -> FitOutcome:
        self.fit_calls.append(request)
        p, cfg = request.prepared, request.config
        model = engine.build_initial_model(self, request)
        model.log_scale += math.log(SCALE_GAIN)
        model.probe = (model.probe * PROBE_GAIN).astype(np.complex64)
        model.weights = model.weights + 1
        if not self.global_zero:
            request.history.write = False
        if self.history is None:
            for e in range(cfg.nepochs):
                request.history.record(
                    e,
                    train_loss=1.0 / (e + 1),
                    val_loss=2.0 / (e + 1) if p.val is not None else math.nan,
                    lr=scheduled_lr("cosine", request.execution.learning_rate, e, cfg.nepochs),
                    components={"train_nll": 0.5 / (e + 1), "train_mae": 0.25},
                )
        return FitOutcome(
            model,
            fit_s=FIT_S,
            history=self.history,
            is_global_zero=self.global_zero,
            global_rank=0 if self.global_zero else 1,
            notes={"fake": True},
        )

    def build_model(
        self,
        model_config: ModelConfig,
        *,
        probe: np.ndarray,
        intensity_scale: float,
        probe_trainable: bool,
        intensity_scale_trainable: bool,
    ) -> FakeModel:
        return FakeModel(
            model_config,
            np.array(probe, np.complex64),
            math.log(intensity_scale),
            WEIGHTS0.copy(),
            {"probe_trainable": probe_trainable, "scale_trainable": intensity_scale_trainable},
        )

    def weights_to_bytes(self, model: FakeModel) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.concatenate([[model.log_scale], model.weights]), allow_pickle=False)
        return buf.getvalue()

    def weights_from_bytes(self, model: FakeModel, data: bytes, where: str) -> None:
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise BundleError(f"{where}: unreadable weights ({exc})") from exc
        if arr.shape != (1 + model.weights.size,):
            raise BundleError(f"{where}: expected {1 + model.weights.size} values, got {arr.shape}")
        model.log_scale = float(arr[0])
        model.weights = arr[1:].astype(np.float32)

    def model_probe(self, model: FakeModel) -> np.ndarray:
        return model.probe

    def model_intensity_scale(self, model: FakeModel) -> float:
        return math.exp(model.log_scale)

    def make_predict(self, model: FakeModel, execution: ExecutionConfig):
        def predict(batch):
            self.batches.append(batch)
            b, c = len(batch), batch.C
            patches = physics.extract_patches(self.truth, batch.positions.reshape(-1, 2), N)
            patches = patches.reshape(b, c, N, N).astype(np.complex64)
            return patches if model.config.object_big else patches[:, :1]

        return predict


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def scan() -> ScanData:
    obj = procedural_object(SIZE, seed=3)
    positions = raster_scan(SIZE, N, step=8)  # integer positions 16, 24, …, 56
    return simulate(obj, default_probe(N), positions, nphotons=1e5, seed=1, workers=1)


def _config(out: Path, gridsize: int = 1, **kw: Any) -> TrainingConfig:
    kw.setdefault("validation_fraction", 0.1)
    return TrainingConfig(
        model=ModelConfig(N=N, gridsize=gridsize, n_filters_scale=1),
        nepochs=NEPOCHS,
        batch_size=8,
        output_dir=out,
        seed=3,
        **kw,
    )


@pytest.fixture(scope="module")
def trained(scan, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    hooks = FakeHooks(scan.object)
    cfg = _config(out)
    return hooks, cfg, engine.train(hooks, cfg, train_data=scan)


def _rewrite(src: Path, dst: Path, mutate=None, files: dict[str, bytes] | None = None) -> Path:
    """Copy a bundle with its manifest changed by ``mutate`` and entries replaced by ``files``;
    the JSON may hold NaN (written by hand, checksums recomputed)."""
    b = core_bundle.read_bundle(src)
    manifest = copy.deepcopy(b.manifest)
    manifest.pop("files")
    if mutate is not None:
        mutate(manifest)
    entries = dict(b.files, **(files or {}))
    manifest["files"] = {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in entries.items()
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr(core_bundle.MANIFEST_NAME, json.dumps(manifest))
        for name, data in entries.items():
            zf.writestr(name, data)
    return dst


def _covered_matches(recon: Reconstruction, truth: np.ndarray) -> None:
    cov = recon.coverage > 0
    assert cov.sum() > 0.4 * cov.size
    np.testing.assert_allclose(recon.object[cov], truth[cov], atol=1e-5)
    np.testing.assert_allclose(recon.amplitude, np.abs(truth) * cov, atol=1e-5)
    assert np.all(recon.object[~cov] == 0)


# ----------------------------------------------------------------------------- train
def test_train_writes_bundle_history_and_result(trained, scan):
    hooks, cfg, res = trained
    out = Path(cfg.output_dir)
    assert isinstance(res, TrainResult)
    assert res.backend == "pytorch" and res.global_rank == 0 and res.extra == {"fake": True}
    assert res.bundle_path == out / "wts.h5.zip" and res.bundle_path.is_file()
    assert res.reconstruction is None  # no test data
    assert res.config == cfg.to_dict()

    # history: one row per epoch in every column, as the fake recorded it
    assert list(res.history)[:4] == ["epoch", "train_loss", "val_loss", "lr"]
    assert {len(v) for v in res.history.values()} == {NEPOCHS} and res.epochs_trained == NEPOCHS
    assert res.history["train_loss"] == pytest.approx([1.0, 1 / 2, 1 / 3])
    assert res.history["val_loss"] == pytest.approx([2.0, 1.0, 2 / 3])
    assert res.history["train_mae"] == [0.25] * NEPOCHS
    with open(out / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == NEPOCHS
    assert [float(r["train_nll"]) for r in rows] == pytest.approx([0.5, 0.25, 0.5 / 3])

    # normalisation facts and the trained scale
    (request,) = hooks.fit_calls
    p = request.prepared
    assert request.output_dir == out and request.resume_from is None
    assert request.loss == LossSpec() and request.history.path == out / "history.csv"
    assert res.intensity_scale == pytest.approx(SCALE_GAIN * p.intensity_scale, rel=1e-12)
    assert res.norm_factor == p.norm_factor and res.nphotons == p.nphotons
    energy = np.mean(np.sum(scan.diffraction.astype(np.float64) ** 2, axis=(1, 2)))
    assert res.nphotons == pytest.approx(energy, rel=1e-5)

    # timings: patterns/s = training patterns · epochs / fit time
    t = res.timings
    assert t["fit_s"] == FIT_S and t["train_s"] > 0 and t["prepare_s"] >= 0
    assert math.isfinite(t["patterns_per_s"])
    assert t["patterns_per_s"] == pytest.approx(len(p.train) * 1 * NEPOCHS / FIT_S)
    assert len(p.train) == scan.M - round(0.1 * scan.M)


def test_bundle_manifest_and_entries(trained):
    hooks, cfg, res = trained
    b = core_bundle.read_bundle(res.bundle_path, expected_backend="pytorch")
    m = b.manifest
    assert set(b.files) == {"probe.npy", "weights.npy"}
    assert m["model_names"] == ["autoencoder", "diffraction_to_obj"]
    assert m["epochs_trained"] == NEPOCHS
    assert m["history"]["train_loss"] == pytest.approx([1.0, 0.5, 1 / 3])
    assert m["intensity_scale"] == pytest.approx(res.intensity_scale, rel=1e-12)
    assert m["model_config"] == cfg.model.to_dict()
    assert m["training_config"]["nepochs"] == NEPOCHS
    assert m["normalization"]["norm_factor"] == pytest.approx(res.norm_factor)
    # the probe entry is the model's trained probe, complex64
    probe = b.load_npy("probe.npy")
    assert probe.dtype == np.complex64
    np.testing.assert_array_equal(probe, PROBE_GAIN * hooks.fit_calls[0].prepared.probe)


def test_missing_validation_is_null_in_the_manifest(scan, tmp_path):
    res = engine.train(
        FakeHooks(scan.object), _config(tmp_path, validation_fraction=0.0), train_data=scan
    )
    assert all(math.isnan(v) for v in res.history["val_loss"])
    m = core_bundle.read_manifest(res.bundle_path)
    assert m["history"]["val_loss"] == [None] * NEPOCHS  # JSON has no NaN


def test_train_reconstructs_test_data(scan, tmp_path):
    hooks = FakeHooks(scan.object)
    res = engine.train(hooks, _config(tmp_path / "a"), train_data=scan, test_data=scan)
    assert isinstance(res.reconstruction, Reconstruction)
    assert res.reconstruction.backend == "pytorch"
    assert res.reconstruction.intensity_scale == pytest.approx(res.intensity_scale, rel=1e-12)
    _covered_matches(res.reconstruction, scan.object)
    # the same from config.test_data_file
    path = tmp_path / "test.npz"
    save_npz(path, scan)
    res2 = engine.train(
        FakeHooks(scan.object), _config(tmp_path / "b", test_data_file=path), train_data=scan
    )
    _covered_matches(res2.reconstruction, scan.object)


def test_fit_history_outcome_replaces_the_recorder(scan, tmp_path):
    given = {"epoch": [0.0, 1.0], "train_loss": [5.0, 4.0], "val_loss": [6.0, 5.5], "lr": [1, 1]}
    hooks = FakeHooks(scan.object, history=given)
    res = engine.train(hooks, _config(tmp_path), train_data=scan)
    assert res.history == given and res.epochs_trained == 2
    m = core_bundle.read_manifest(res.bundle_path)
    assert m["epochs_trained"] == 2 and m["history"]["train_loss"] == [5.0, 4.0]


def test_resume_from_reaches_fit(scan, tmp_path):
    hooks = FakeHooks(scan.object)
    engine.train(hooks, _config(tmp_path), train_data=scan, resume_from=str(tmp_path / "x.ckpt"))
    assert hooks.fit_calls[0].resume_from == tmp_path / "x.ckpt"


def test_non_zero_rank_writes_no_bundle(scan, tmp_path):
    hooks = FakeHooks(scan.object, global_zero=False)
    res = engine.train(hooks, _config(tmp_path), train_data=scan, test_data=scan)
    assert not (tmp_path / "wts.h5.zip").exists()
    assert not (tmp_path / "history.csv").exists()
    assert res.global_rank == 1 and res.reconstruction is None
    assert res.history["train_loss"] == pytest.approx([1.0, 0.5, 1 / 3])


def _no_truth(scan: ScanData) -> ScanData:
    return ScanData(
        diffraction=scan.diffraction, xcoords=scan.xcoords, ycoords=scan.ycoords, probe=scan.probe
    )


@pytest.mark.parametrize(
    ("kw", "setting"),
    [
        ({"model": ModelConfig(N=N, model_type="supervised")}, "model_type='supervised'"),
        ({"realspace_weight": 0.5}, "realspace_weight=0.5"),
    ],
)
def test_missing_ground_truth_fails_before_fit(scan, tmp_path, monkeypatch, kw, setting):
    calls = []
    real = LossSpec.check_ground_truth

    def counting(self, has, where="<in-memory scan>"):
        calls.append(where)
        return real(self, has, where)

    monkeypatch.setattr(LossSpec, "check_ground_truth", counting)
    hooks = FakeHooks(scan.object)
    cfg = TrainingConfig(
        **{"model": ModelConfig(N=N), "nepochs": 1, "output_dir": tmp_path / "o"} | kw
    )
    with pytest.raises(DataContractError) as info:
        engine.train(hooks, cfg, train_data=_no_truth(scan))
    assert "<in-memory scan>" in str(info.value) and setting in str(info.value)
    assert hooks.fit_calls == [] and calls == ["<in-memory scan>"]
    assert not (tmp_path / "o" / "wts.h5.zip").exists()
    # from a file: the message names it
    path = tmp_path / "scan.npz"
    save_npz(path, _no_truth(scan))
    with pytest.raises(DataContractError, match=setting) as info:
        engine.train(hooks, dataclasses.replace(cfg, train_data_file=path))
    assert str(path) in str(info.value) and hooks.fit_calls == []
    # with ground truth the check runs once and passes
    calls.clear()
    engine.train(hooks, cfg, train_data=scan)
    assert len(calls) == 1 and len(hooks.fit_calls) == 1


# ----------------------------------------------------------------------------- reconstruct
@pytest.mark.parametrize("gridsize", [1, 2])
def test_reconstruct_matches_the_known_object(scan, tmp_path, gridsize):
    hooks = FakeHooks(scan.object)
    res = engine.train(hooks, _config(tmp_path, gridsize=gridsize), train_data=scan)
    hooks.batches.clear()
    recon = engine.reconstruct(
        hooks,
        InferenceConfig(model_path=tmp_path),  # the folder holding wts.h5.zip
        ExecutionConfig(inference_batch_size=5),
        data=scan,
    )
    assert isinstance(recon, Reconstruction)
    _covered_matches(recon, scan.object)
    assert recon.object.dtype == np.complex64 and recon.amplitude.dtype == np.float32
    assert recon.phase.dtype == np.float32 and recon.coverage.dtype == np.float32
    assert recon.backend == "pytorch" and recon.origin == (0.0, 0.0)
    np.testing.assert_array_equal(recon.positions, scan.positions)
    assert recon.intensity_scale == pytest.approx(res.intensity_scale, rel=1e-12)
    assert recon.norm_factor == pytest.approx(physics.diffraction_norm_factor(scan.diffraction))
    for key in ("load_bundle_s", "total_s", "predict_s", "prepare_s"):
        assert recon.timings[key] >= 0
    # every position once, in chunks of at most 5, fed s·α·X
    sizes = [len(b) for b in hooks.batches]
    assert sum(sizes) == scan.M and max(sizes) == 5
    b0 = hooks.batches[0]
    assert b0.C == gridsize**2
    s_alpha = recon.intensity_scale * recon.norm_factor
    np.testing.assert_allclose(
        b0.diffraction, s_alpha * scan.diffraction[b0.indices], rtol=1e-5, atol=1e-6
    )


def test_reconstruct_with_a_loaded_bundle_and_without_a_path(trained, scan):
    hooks, _, res = trained
    loaded = engine.load_bundle(hooks, res.bundle_path)
    recon = engine.reconstruct(hooks, InferenceConfig(), data=scan, bundle=loaded)
    _covered_matches(recon, scan.object)
    with pytest.raises(ConfigError, match="model_path"):
        engine.reconstruct(hooks, InferenceConfig(), data=scan)


# ----------------------------------------------------------------------------- load_bundle
def test_load_bundle_round_trip(trained):
    hooks, cfg, res = trained
    lb = engine.load_bundle(hooks, res.bundle_path)
    assert isinstance(lb, LoadedBundle) and lb.path == res.bundle_path
    assert lb.model_config == cfg.model
    assert isinstance(lb.training_config, TrainingConfig) and lb.training_config.nepochs == NEPOCHS
    assert lb.intensity_scale == pytest.approx(res.intensity_scale, rel=1e-12)
    np.testing.assert_array_equal(lb.model.weights, WEIGHTS0 + 1)
    np.testing.assert_array_equal(
        lb.model.probe, core_bundle.read_bundle(res.bundle_path).load_npy()
    )
    assert lb.model.flags == {"probe_trainable": False, "scale_trainable": False}
    assert lb.manifest["backend"] == "pytorch"


def test_load_bundle_without_training_config(trained, tmp_path):
    hooks, cfg, res = trained
    path = _rewrite(res.bundle_path, tmp_path / "b.zip", lambda m: m.update(training_config=None))
    lb = engine.load_bundle(hooks, path)
    assert lb.training_config is None and lb.model_config == cfg.model


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _del(key):
    return lambda m: m.pop(key)


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        (_del("model_config"), "'model_config'"),
        (_set("model_config", None), "'model_config'"),
        (_set("model_config", [32]), "'model_config'"),
        (_set("model_config", {"N": 48}), "'model_config'"),
        (_set("model_config", {"bogus": 1}), "'model_config'"),
        (_set("training_config", "x"), "'training_config'"),
        (_set("training_config", {"nepochs": 0}), "'training_config'"),
        (_set("intensity_scale", math.nan), "'intensity_scale'"),
        (_set("intensity_scale", math.inf), "'intensity_scale'"),
        (_set("intensity_scale", True), "'intensity_scale'"),
        (_set("intensity_scale", "x"), "'intensity_scale'"),
        (_set("intensity_scale", None), "'intensity_scale'"),
        (_set("intensity_scale", -1.0), "'intensity_scale'"),
        (_set("intensity_scale", 0), "'intensity_scale'"),
        (_del("intensity_scale"), "'intensity_scale'"),
    ],
)
def test_load_bundle_rejects_bad_manifests(trained, tmp_path, mutate, key):
    hooks, _, res = trained
    path = _rewrite(res.bundle_path, tmp_path / "bad" / "wts.h5.zip", mutate)
    with pytest.raises(BundleError) as info:
        engine.load_bundle(hooks, path)
    assert key in str(info.value) and str(path) in str(info.value)
    assert not isinstance(info.value, BundleBackendMismatchError)


def test_load_bundle_rejects_a_scale_that_disagrees_with_the_weights(trained, tmp_path):
    hooks, _, res = trained
    s = res.intensity_scale
    path = _rewrite(res.bundle_path, tmp_path / "b.zip", _set("intensity_scale", 2 * s))
    with pytest.raises(BundleError, match="disagrees") as info:
        engine.load_bundle(hooks, path)
    assert "'intensity_scale'" in str(info.value) and "weights.npy" in str(info.value)
    # within the relative tolerance it loads
    ok = _rewrite(res.bundle_path, tmp_path / "ok.zip", _set("intensity_scale", s * (1 + 1e-7)))
    assert engine.load_bundle(hooks, ok).intensity_scale == pytest.approx(s)


@pytest.mark.parametrize(
    "probe",
    [
        np.ones((16, 16), np.complex64),
        np.ones((N, N + 2), np.complex64),
        np.ones((N, N), np.int32),
        np.full((N, N), np.nan, np.complex64),
    ],
    ids=["small", "not-square", "integer", "nan"],
)
def test_load_bundle_rejects_a_bad_probe(trained, tmp_path, probe):
    hooks, _, res = trained
    path = _rewrite(
        res.bundle_path, tmp_path / "b.zip", files={"probe.npy": core_bundle.npy_bytes(probe)}
    )
    with pytest.raises(BundleError, match="probe.npy"):
        engine.load_bundle(hooks, path)


def test_load_bundle_passes_where_to_the_weights_reader(trained, tmp_path):
    hooks, _, res = trained
    bad = io.BytesIO()
    np.save(bad, np.zeros(2))
    path = _rewrite(res.bundle_path, tmp_path / "b.zip", files={"weights.npy": bad.getvalue()})
    with pytest.raises(BundleError) as info:
        engine.load_bundle(hooks, path)
    assert f"{path}:weights.npy" in str(info.value)


def test_other_backends_bundle_is_rejected(trained, scan, tmp_path):
    hooks, _, res = trained
    path = _rewrite(res.bundle_path, tmp_path / "tf" / "wts.h5.zip", _set("backend", "tensorflow"))
    with pytest.raises(BundleBackendMismatchError) as info:
        engine.load_bundle(hooks, path)
    assert info.value.archived == "tensorflow" and info.value.active == "pytorch"
    with pytest.raises(BundleBackendMismatchError):
        engine.reconstruct(hooks, InferenceConfig(model_path=path.parent), data=scan)


# ----------------------------------------------------------------------------- conformance
class TestFakeBackendConformance(BackendConformance):
    """The shared conformance suite (``ptycho_core.testing``) passes for a backend built on the
    engine with the fake hooks: the suite's checks fit the typed results."""

    backend_name = "pytorch"

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls, scan):  # the suite's own scan (random positions), not this module's
        hooks = FakeHooks(scan.object)
        return SimpleNamespace(
            NAME="pytorch",
            train=functools.partial(engine.train, hooks),
            reconstruct=functools.partial(engine.reconstruct, hooks),
        )


def test_state_mismatch_names_shapes_and_the_error_is_one_short_line():
    model = {"w": np.zeros((2, 3)), "b": np.zeros(3)}
    assert engine.state_mismatch(model, dict(model)) == ""
    text = engine.state_mismatch(model, {"w": np.zeros((3, 2)), "x": np.zeros(1)})
    assert (
        "1 tensor(s) of another shape, e.g. w: [3, 2] in the weights, [2, 3] in the model" in text
    )
    assert "1 missing, e.g. b" in text and "1 unexpected, e.g. x" in text
    assert str(engine.weights_mismatch_error("f.zip:w", text)).endswith(f"({text})")
    err = engine.weights_mismatch_error("f.zip:w", RuntimeError("layer mismatch\n" * 100))
    assert isinstance(err, BundleError) and str(err).startswith("f.zip:w: ")
    assert "\n" not in str(err) and str(err).endswith(" …)") and len(str(err)) < 260
