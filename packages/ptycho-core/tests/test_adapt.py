"""Adaptation on a new scan (``ptycho_core.engine.adapt``, ``specs/training.md`` "Adaptation"),
driven by a NumPy fake backend.

The fake model is a weight vector plus the probe and intensity scale; its ``fit`` loads
``FitRequest.initial_weights`` when given (as the real backends do) and "trains" by adding 1 to
the weights; its prediction is a constant patch ``w[0] + 1j·w[1]``, so the reconstruction shows
which weights made it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptycho_core import bundle as core_bundle
from ptycho_core import engine, physics
from ptycho_core.config import ExecutionConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_core.engine import FitOutcome, FitRequest
from ptycho_core.errors import BundleError, ConfigError
from ptycho_core.io import ScanData, save_npz
from ptycho_core.simulation import simulate_scan

N = 32


@dataclasses.dataclass(eq=False)
class Model:
    config: ModelConfig
    probe: np.ndarray
    scale: float
    weights: np.ndarray


class Hooks:
    name = "pytorch"
    weights_entry = "weights.npy"

    def __init__(self) -> None:
        self.requests: list[FitRequest] = []

    def build_model(self, model_config, *, probe, intensity_scale, **_: Any) -> Model:
        return Model(
            model_config, np.array(probe, np.complex64), float(intensity_scale), np.ones(3)
        )

    def fit(self, request: FitRequest) -> FitOutcome:
        self.requests.append(request)
        cfg, p = request.config, request.prepared
        model = self.build_model(cfg.model, probe=p.probe, intensity_scale=p.intensity_scale)
        if request.initial_weights is not None:
            self.weights_from_bytes(model, request.initial_weights, "initial_weights")
        for epoch in range(cfg.nepochs):
            model.weights = model.weights + 1
            request.history.record(epoch, train_loss=-float(model.weights.sum()), lr=1e-4)
        if not cfg.intensity_scale_trainable:
            assert model.scale == p.intensity_scale
        else:
            model.scale *= 1.5  # a trained scale
        return FitOutcome(model, fit_s=0.25)

    def weights_to_bytes(self, model: Model) -> bytes:
        buf = io.BytesIO()
        np.save(buf, np.concatenate([[model.scale], model.weights]), allow_pickle=False)
        return buf.getvalue()

    def weights_from_bytes(self, model: Model, data: bytes, where: str) -> None:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if arr.shape != (4,):
            raise BundleError(f"{where}: bad weights")
        model.scale, model.weights = float(arr[0]), arr[1:].copy()

    def model_probe(self, model: Model) -> np.ndarray:
        return model.probe

    def model_intensity_scale(self, model: Model) -> float:
        return model.scale

    def make_predict(self, model: Model, execution: ExecutionConfig):
        value = np.complex64(model.weights[0] + 1j * model.weights[1])

        def predict(batch) -> np.ndarray:
            return np.full((len(batch), batch.C, N, N), value, np.complex64)

        return predict


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def scans() -> tuple[ScanData, ScanData]:
    old = simulate_scan(N=N, n_positions=24, nphotons=1e6, seed=1, workers=1)
    new = simulate_scan(N=N, n_positions=20, nphotons=3e4, seed=2, workers=1)  # other α
    return old, dataclasses.replace(new, source="/data/new_scan.npz")


@pytest.fixture(scope="module")
def trained(scans, tmp_path_factory):
    """A bundle whose intensity scale was trained (so it differs from the data's estimate)."""
    out = tmp_path_factory.mktemp("train")
    cfg = TrainingConfig(
        model=ModelConfig(N=N, n_filters_scale=1),
        nepochs=3,
        output_dir=out,
        seed=5,
        intensity_scale_trainable=True,
        validation_fraction=0.2,
        n_groups=10,
    )
    res = engine.train(Hooks(), cfg, train_data=scans[0])
    return res.bundle_path


@pytest.fixture
def adapted(trained, scans, tmp_path):
    hooks = Hooks()
    sha0 = _sha(trained)
    source = engine.load_bundle(hooks, trained)
    result = engine.adapt(hooks, trained, scans[1], epochs=2, output_dir=tmp_path / "ad")
    return hooks, source, sha0, result


def test_the_fit_starts_from_the_bundle_with_its_scale_and_probe(adapted, scans):
    hooks, source, _, _ = adapted
    (request,) = hooks.requests
    new = scans[1]
    assert request.initial_weights == hooks.weights_to_bytes(source.model)
    assert request.resume_from is None
    cfg, p = request.config, request.prepared
    assert cfg.nepochs == 2 and cfg.model == source.model_config
    assert cfg.validation_fraction == 0 and p.val is None and len(p.train) == new.M
    assert cfg.n_groups is None and cfg.n_subsample is None and cfg.realspace_weight == 0
    assert cfg.intensity_scale_trainable is False
    # the input is s·α·X with the bundle's (trained) s and the new scan's own α
    s = source.intensity_scale
    alpha = float(physics.diffraction_norm_factor(new.diffraction))
    assert p.intensity_scale == s and p.norm_factor == pytest.approx(alpha, rel=1e-12)
    assert p.train.scale == pytest.approx(s * alpha, rel=1e-12)
    assert p.nphotons_source == "bundle"
    assert physics.intensity_scale(cfg.nphotons, N) == pytest.approx(s, rel=1e-9)
    np.testing.assert_array_equal(p.probe, source.model.probe)
    assert request.execution.learning_rate == engine.ADAPT_LEARNING_RATE
    assert request.execution.enable_checkpointing is False


def test_bundle_untouched_and_adapted_bundle_saved(adapted, trained):
    hooks, source, sha0, result = adapted
    assert _sha(trained) == sha0
    np.testing.assert_array_equal(engine.load_bundle(hooks, trained).model.weights, [1 + 3] * 3)
    folder = result.bundle_path.parent
    assert sorted(p.name for p in folder.iterdir()) == ["history.csv", "wts.h5.zip"]
    loaded = engine.load_bundle(hooks, folder)
    np.testing.assert_array_equal(loaded.model.weights, source.model.weights + 2)
    np.testing.assert_array_equal(result.bundle.model.weights, loaded.model.weights)
    assert loaded.intensity_scale == pytest.approx(source.intensity_scale, rel=1e-12)
    meta = loaded.manifest["adapted_from"]
    assert meta == result.adapted_from
    assert meta["sha256"] == sha0 and meta["bundle"] == str(trained)
    assert meta["scan"] == "new_scan.npz" and meta["epochs"] == 2
    assert meta["learning_rate"] == engine.ADAPT_LEARNING_RATE
    assert loaded.manifest["epochs_trained"] == 2
    assert loaded.manifest["normalization"]["nphotons_source"] == "bundle"
    assert result.history["train_loss"] == [-(4 + 1) * 3.0, -(4 + 2) * 3.0]
    with open(folder / "history.csv", encoding="utf-8") as fh:
        assert len(fh.read().splitlines()) == 3
    # the in-memory result carries the same manifest facts (reconstruct reads them)
    assert result.bundle.manifest["adapted_from"] == meta
    assert result.bundle.manifest["model_config"] == loaded.manifest["model_config"]
    assert result.timings["adapt_s"] > 0 and result.timings["fit_s"] == 0.25


def test_in_memory_adaptation_writes_nothing(trained, scans, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = engine.adapt(Hooks(), trained, scans[1], epochs=1)
    assert result.bundle_path is None and list(tmp_path.iterdir()) == []
    assert len(result.history["train_loss"]) == 1


def test_reconstruct_with_and_without_adaptation(trained, scans, tmp_path):
    hooks = Hooks()
    cfg = InferenceConfig(model=ModelConfig(N=N), model_path=trained)
    plain = engine.reconstruct(hooks, cfg, data=scans[1])
    zero = engine.reconstruct(hooks, cfg, data=scans[1], adapt_epochs=0)
    assert hooks.requests == [] and "adapt_s" not in zero.timings
    np.testing.assert_array_equal(zero.object, plain.object)
    sha0 = _sha(trained)
    path = tmp_path / "new.npz"
    save_npz(path, scans[1])
    cfg_file = dataclasses.replace(cfg, test_data_file=path)
    two = engine.reconstruct(hooks, cfg_file, adapt_epochs=2, save_adapted=tmp_path / "kept")
    assert len(hooks.requests) == 1 and two.timings["adapt_s"] > 0
    covered = two.coverage > 0
    np.testing.assert_allclose(two.object[covered], 6 + 6j)  # weights 4 + 2 epochs
    np.testing.assert_allclose(plain.object[plain.coverage > 0], 4 + 4j)
    assert _sha(trained) == sha0 and (tmp_path / "kept" / "wts.h5.zip").is_file()


@pytest.mark.parametrize("epochs", [0, -1, True, 1.5])
def test_bad_epochs(trained, scans, epochs):
    with pytest.raises(ConfigError, match="epochs"):
        engine.adapt(Hooks(), trained, scans[1], epochs=epochs)


def test_bad_requests(trained, scans, tmp_path):
    cfg = InferenceConfig(model=ModelConfig(N=N), model_path=trained)
    with pytest.raises(ConfigError, match="save_adapted"):
        engine.reconstruct(Hooks(), cfg, data=scans[1], save_adapted=tmp_path / "x")
    with pytest.raises(ConfigError, match="adapt_epochs"):
        engine.reconstruct(Hooks(), cfg, data=scans[1], adapt_epochs=-2)
    with pytest.raises(ConfigError, match="test_data_file"):
        engine.reconstruct(Hooks(), cfg, adapt_epochs=1)
    with pytest.raises(ConfigError, match="learning_rate"):
        engine.adapt(Hooks(), trained, scans[1], epochs=1, learning_rate=0.0)
    assert not (tmp_path / "x").exists()


def _rewrite_training_config(src: Path, dst: Path, **changes: Any) -> Path:
    b = core_bundle.read_bundle(src)
    manifest = {k: v for k, v in b.manifest.items() if k != "files"}
    tc = manifest["training_config"]
    for key, value in changes.items():
        if key in tc["model"]:
            tc["model"][key] = value
            manifest["model_config"][key] = value
        else:
            tc[key] = value
    dst.parent.mkdir(parents=True, exist_ok=True)
    return core_bundle.write_bundle(dst, manifest, dict(b.files))


def test_supervised_bundle_cannot_be_adapted(trained, scans, tmp_path):
    path = _rewrite_training_config(
        trained, tmp_path / "sup" / "wts.h5.zip", model_type="supervised"
    )
    with pytest.raises(ConfigError, match="supervised") as info:
        engine.adapt(Hooks(), path, scans[1], epochs=1)
    assert str(path) in str(info.value)


def test_realspace_loss_is_dropped_without_ground_truth(trained, scans, tmp_path):
    path = _rewrite_training_config(trained, tmp_path / "rs" / "wts.h5.zip", realspace_weight=1.0)
    new = dataclasses.replace(scans[1], Y=None, object=None)
    hooks = Hooks()
    engine.adapt(hooks, path, new, epochs=1)
    assert (
        hooks.requests[0].loss.realspace_weight == 0
        and not hooks.requests[0].loss.needs_ground_truth
    )


def test_bundle_without_training_config(trained, scans, tmp_path):
    b = core_bundle.read_bundle(trained)
    manifest = {k: v for k, v in b.manifest.items() if k != "files"}
    manifest["training_config"] = None
    path = core_bundle.write_bundle(tmp_path / "wts.h5.zip", manifest, dict(b.files))
    hooks = Hooks()
    result = engine.adapt(hooks, path, scans[1], epochs=1, output_dir=tmp_path / "out")
    cfg = hooks.requests[0].config
    assert cfg.model.N == N and cfg.nepochs == 1 and cfg.batch_size == TrainingConfig().batch_size
    with zipfile.ZipFile(result.bundle_path) as zf:
        saved = json.loads(zf.read("manifest.json"))
    assert saved["training_config"]["nepochs"] == 1
    assert math.isclose(saved["intensity_scale"], engine.load_bundle(hooks, path).intensity_scale)
