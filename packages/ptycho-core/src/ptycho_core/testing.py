"""The backend conformance suite, written once and run by each backend (needs pytest).

Usage, in a backend's test folder (e.g. ``packages/ptycho-torch/tests/test_conformance.py``)::

    from ptycho_core.testing import BackendConformance

    class TestTorchConformance(BackendConformance):
        backend_name = "pytorch"

Pytest collects the inherited ``test_*`` methods. They use only the backend module API of
``specs/core-api.md`` (``load_backend(name).train`` / ``.reconstruct``) on a tiny seeded simulated
scan (``N = 32``, a few dozen positions, ``n_filters_scale = 1``, 2 epochs), so each test takes a
few seconds on a CPU. One model per gridsize is trained per test class (class-scoped fixtures).
Override :meth:`BackendConformance.execution_config` (e.g. to run on a GPU) or the class
attributes to change sizes. A backend that cannot be imported fails here; it never skips.

Checks: the module API; ``train`` writes ``wts.h5.zip`` (a valid bundle of this backend) and
``history.csv`` and returns a :class:`~ptycho_core.engine.TrainResult` (finite history, one
length per column, scale, normalisation and throughput); ``reconstruct`` returns a
:class:`~ptycho_core.workflow.Reconstruction` with finite ``(H, W)`` arrays of the documented
dtypes, ``amplitude = |object|``, phase in ``(−π, π]`` and the backend name; reconstructing twice
(bundle loaded twice) gives identical outputs; one seed gives one training history; a bundle whose
manifest names the other backend raises :class:`~ptycho_core.errors.BundleBackendMismatchError`;
gridsize 2 trains and reconstructs.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from ptycho_core import bundle as _bundle
from ptycho_core.backends import BACKEND_NAMES, load_backend
from ptycho_core.config import ExecutionConfig, InferenceConfig, ModelConfig, TrainingConfig
from ptycho_core.engine import HISTORY_NAME, TrainResult
from ptycho_core.errors import BundleBackendMismatchError
from ptycho_core.io import ScanData
from ptycho_core.simulation import simulate_scan
from ptycho_core.workflow import Reconstruction

__all__ = ["BackendConformance"]

#: Phase bounds of a float32 phase map: ``(−π, π]`` with π rounded to float32.
_PI32 = float(np.float32(np.pi))


def _positive(value: Any) -> bool:
    """A finite real number > 0 (not a bool)."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    return real and math.isfinite(value) and value > 0


class BackendConformance:
    """Base class of the conformance tests; subclasses set :attr:`backend_name`."""

    backend_name: ClassVar[str] = ""
    N: ClassVar[int] = 32
    n_positions: ClassVar[int] = 40
    nphotons: ClassVar[float] = 1e5
    nepochs: ClassVar[int] = 2
    batch_size: ClassVar[int] = 8
    data_seed: ClassVar[int] = 11

    # ------------------------------------------------------------------ hooks
    def execution_config(self) -> ExecutionConfig:
        """Execution settings for the tests (CPU, quiet, small inference batches)."""
        return ExecutionConfig(
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            deterministic=True,
            inference_batch_size=16,
        )

    def training_config(self, output_dir: Path, gridsize: int = 1, **kw: Any) -> TrainingConfig:
        model = ModelConfig(N=self.N, gridsize=gridsize, n_filters_scale=1)
        return TrainingConfig(
            model=model,
            nepochs=self.nepochs,
            batch_size=self.batch_size,
            output_dir=output_dir,
            backend=self.backend_name,
            seed=3,
            validation_fraction=0.1,
            **kw,
        )

    def inference_config(
        self, bundle_path: Path, output_dir: Path, gridsize: int = 1
    ) -> InferenceConfig:
        model = ModelConfig(N=self.N, gridsize=gridsize, n_filters_scale=1)
        return InferenceConfig(
            model=model, model_path=bundle_path, output_dir=output_dir, backend=self.backend_name
        )

    # ------------------------------------------------------------------ fixtures
    # Class-scoped fixtures are classmethods (pytest deprecates instance-method ones); they call
    # the hooks on a fresh instance, so subclasses override the hooks as ordinary methods.
    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls):
        assert cls.backend_name in BACKEND_NAMES, (
            f"{cls.__name__}.backend_name must be one of {BACKEND_NAMES}"
        )
        return load_backend(cls.backend_name)  # fails (never skips) when unavailable

    @pytest.fixture(scope="class")
    @classmethod
    def scan(cls) -> ScanData:
        return simulate_scan(
            N=cls.N, n_positions=cls.n_positions, nphotons=cls.nphotons, seed=cls.data_seed
        )

    def _train(self, backend, scan, out: Path, gridsize: int) -> TrainResult:
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.training_config(out, gridsize=gridsize)
        return backend.train(cfg, self.execution_config(), train_data=scan)

    @pytest.fixture(scope="class")
    @classmethod
    def trained(cls, backend, scan, tmp_path_factory) -> TrainResult:
        return cls()._train(backend, scan, tmp_path_factory.mktemp("train_g1"), 1)

    @pytest.fixture(scope="class")
    @classmethod
    def trained_g2(cls, backend, scan, tmp_path_factory) -> TrainResult:
        return cls()._train(backend, scan, tmp_path_factory.mktemp("train_g2"), 2)

    def _reconstruct(self, backend, scan, bundle_path, out: Path, gridsize: int = 1):
        out.mkdir(parents=True, exist_ok=True)
        cfg = self.inference_config(Path(bundle_path), out, gridsize)
        return backend.reconstruct(cfg, self.execution_config(), data=scan)

    # ------------------------------------------------------------------ checks
    def _check_result(self, res: Reconstruction, scan: ScanData) -> None:
        assert isinstance(res, Reconstruction), f"reconstruct returned {type(res).__name__}"
        amp, phase, obj, cov = res.amplitude, res.phase, res.object, res.coverage
        assert amp.ndim == 2 and amp.shape == phase.shape == obj.shape == cov.shape
        assert amp.dtype == np.float32 and phase.dtype == np.float32
        assert obj.dtype == np.complex64 and cov.dtype == np.float32
        for name, a in (("amplitude", amp), ("phase", phase), ("object", obj), ("coverage", cov)):
            assert np.all(np.isfinite(a)), f"{name} holds non-finite values"
        assert np.all(amp >= 0)
        np.testing.assert_allclose(amp, np.abs(obj), rtol=1e-6, atol=1e-7)
        assert np.all(phase > -_PI32) and np.all(phase <= _PI32), "phase outside (−π, π]"
        assert np.all(cov >= 0) and np.any(cov > 0)
        assert np.any(amp[cov > 0] > 0), "the reconstruction is all zeros where covered"
        assert res.backend == self.backend_name
        assert res.positions.shape == (scan.M, 2) and res.positions.dtype == np.float64
        np.testing.assert_allclose(res.positions, scan.positions)
        assert len(res.origin) == 2 and all(isinstance(v, float) for v in res.origin)
        assert isinstance(res.config, dict) and isinstance(res.timings, dict)
        assert all(isinstance(v, float) and v >= 0 for v in res.timings.values())
        assert _positive(res.intensity_scale) and _positive(res.norm_factor)

    def test_module_api(self, backend):
        assert backend.NAME == self.backend_name
        assert callable(backend.train) and callable(backend.reconstruct)

    def test_train_writes_bundle_and_history(self, trained):
        assert isinstance(trained, TrainResult), f"train returned {type(trained).__name__}"
        assert trained.backend == self.backend_name and trained.global_rank == 0
        path = Path(trained.bundle_path)
        assert path.name == _bundle.BUNDLE_NAME and path.is_file()
        assert (path.parent / HISTORY_NAME).is_file()
        assert trained.reconstruction is None  # no test data
        b = _bundle.read_bundle(path, expected_backend=self.backend_name)
        assert b.manifest["backend"] == self.backend_name
        assert math.isclose(b.manifest["intensity_scale"], trained.intensity_scale, rel_tol=1e-6)
        assert b.manifest["model_config"]["N"] == self.N
        assert b.manifest["epochs_trained"] == trained.epochs_trained
        assert _bundle.PROBE_NAME in b.files
        hist = trained.history
        assert list(hist)[:4] == ["epoch", "train_loss", "val_loss", "lr"]
        assert 1 <= trained.epochs_trained <= self.nepochs
        assert {len(v) for v in hist.values()} == {trained.epochs_trained}
        assert all(math.isfinite(v) for v in hist["train_loss"])
        with open(path.parent / HISTORY_NAME, newline="", encoding="utf-8") as fh:
            assert len(fh.read().splitlines()) == 1 + trained.epochs_trained
        assert _positive(trained.intensity_scale) and _positive(trained.norm_factor)
        assert _positive(trained.nphotons)
        assert _positive(trained.timings["fit_s"]) and _positive(trained.timings["patterns_per_s"])
        assert isinstance(trained.config, dict) and trained.config["nepochs"] == self.nepochs

    def test_reconstruct_result_contract(self, backend, scan, trained, tmp_path):
        res = self._reconstruct(backend, scan, trained.bundle_path, tmp_path)
        self._check_result(res, scan)
        assert math.isclose(res.intensity_scale, trained.intensity_scale, rel_tol=1e-6)
        if scan.object is not None:  # object frame: the canvas lines up with objectGuess
            assert res.amplitude.shape == scan.object.shape
            assert res.origin == (0.0, 0.0)

    def test_reconstruct_is_deterministic(self, backend, scan, trained, tmp_path):
        a = self._reconstruct(backend, scan, trained.bundle_path, tmp_path / "a")
        b = self._reconstruct(backend, scan, trained.bundle_path, tmp_path / "b")
        for key in ("amplitude", "phase", "object", "coverage"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
        assert a.origin == b.origin

    def test_same_seed_same_history(self, backend, scan, trained, tmp_path):
        again = self._train(backend, scan, tmp_path / "again", 1)
        np.testing.assert_allclose(
            again.history["train_loss"], trained.history["train_loss"], rtol=1e-5
        )

    def test_other_backend_bundle_is_rejected(self, backend, scan, trained, tmp_path):
        original = _bundle.read_bundle(trained.bundle_path)
        other = next(n for n in BACKEND_NAMES if n != self.backend_name)
        manifest = dict(original.manifest, backend=other)
        fake = tmp_path / "other" / _bundle.BUNDLE_NAME
        fake.parent.mkdir()
        _bundle.write_bundle(fake, manifest, original.files)
        with pytest.raises(BundleBackendMismatchError) as info:
            self._reconstruct(backend, scan, fake, tmp_path / "out")
        assert other in str(info.value) and self.backend_name in str(info.value)

    def test_gridsize2_trains_and_reconstructs(self, backend, scan, trained_g2, tmp_path):
        assert isinstance(trained_g2, TrainResult)
        b = _bundle.read_bundle(trained_g2.bundle_path, expected_backend=self.backend_name)
        assert b.manifest["model_config"]["gridsize"] == 2
        assert all(math.isfinite(v) for v in trained_g2.history["train_loss"])
        res = self._reconstruct(backend, scan, trained_g2.bundle_path, tmp_path, gridsize=2)
        self._check_result(res, scan)
