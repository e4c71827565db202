"""Shared fixtures: tiny scans, fabricated bundles and framework-free fake backends, built with
ptycho-core only (no framework is imported in the pytest process)."""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptycho_core import engine
from ptycho_core.backends import BACKEND_NAMES, check_backend_name
from ptycho_core.bundle import BUNDLE_NAME, load_npy_bytes, make_manifest, npy_bytes, write_bundle
from ptycho_core.config import ModelConfig, TrainingConfig
from ptycho_core.io import ScanData, save_npz


def make_scan(n: int = 32, m: int = 12, seed: int = 0, with_object: bool = True) -> ScanData:
    """A small valid scan: random photon-like amplitudes, positions inside a 2N×2N object."""
    rng = np.random.default_rng(seed)
    size = 2 * n
    obj = None
    if with_object:
        obj = (0.5 + 0.5 * rng.random((size, size))) * np.exp(1j * rng.normal(0, 0.3, (size, size)))
    return ScanData(
        diffraction=np.sqrt(rng.poisson(20.0, (m, n, n))).astype(np.float32),
        xcoords=rng.uniform(n / 2, size - n / 2, m),
        ycoords=rng.uniform(n / 2, size - n / 2, m),
        probe=(np.ones((n, n)) * np.exp(1j * 0.1)).astype(np.complex64),
        object=obj,
        metadata={"nphotons": 20.0 * n * n},
    )


@pytest.fixture
def scan_file(tmp_path: Path):
    """Factory: write a scan .npz (pattern size ``n``) and return its path."""

    def _make(name: str = "scan.npz", n: int = 32, m: int = 12, seed: int = 0, **kw) -> Path:
        path = tmp_path / name
        save_npz(path, make_scan(n=n, m=m, seed=seed, **kw))
        return path

    return _make


@pytest.fixture
def bundle_file(tmp_path: Path):
    """Factory: a fabricated bundle (manifest + probe, fake weights) for ``backend``."""

    def _make(
        backend: str = "pytorch",
        n: int = 32,
        gridsize: int = 1,
        name: str = "model",
        neighbor_count: int = 6,
        n_filters_scale: int = 2,
    ) -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        model = ModelConfig(N=n, gridsize=gridsize, n_filters_scale=n_filters_scale)
        training = TrainingConfig(model=model, backend=backend, neighbor_count=neighbor_count)
        manifest = make_manifest(
            backend,
            model,
            training,
            intensity_scale=3.0,
            normalization={"norm_factor": 0.5, "nphotons": 1e6},
            model_names=["autoencoder", "diffraction_to_obj"],
        )
        weights = "state_dict.pt" if backend == "pytorch" else "model.weights.h5"
        path = folder / BUNDLE_NAME
        write_bundle(
            path,
            manifest,
            {"probe.npy": npy_bytes(np.ones((n, n), np.complex64)), weights: b"not real weights"},
        )
        return path

    return _make


BLOCKER = """
import importlib.abc, sys
class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = set(names)
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in self.names:
            raise ModuleNotFoundError(
                "No module named " + repr(name) + " (hidden by the test)", name=name
            )
        return None
sys.meta_path.insert(0, _Blocker(NAMES))
"""


@pytest.fixture
def run_python(tmp_path: Path):
    """Run ``code`` in a fresh interpreter with the top-level packages ``block`` hidden
    (an import blocker on ``sys.meta_path``); returns the CompletedProcess."""
    import os
    import subprocess
    import sys

    def _run(code: str, block: tuple[str, ...] = (), timeout: float = 600):
        prelude = BLOCKER.replace("NAMES", repr(list(block))) if block else ""
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", MPLBACKEND="Agg", PYTHONHASHSEED="0")
        return subprocess.run(
            [sys.executable, "-c", prelude + code],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tmp_path,
            env=env,
        )

    return _run


# ----------------------------------------------------------------------------- fake backends
class NumpyHooks:
    """:class:`ptycho_core.engine.BackendHooks` without a framework: the "model" is a dict (probe,
    intensity scale), training records a decreasing loss per epoch, prediction returns a constant
    object patch. Bundles are real bundles of backend ``name``."""

    weights_entry = "fake_weights.npy"
    #: The constant object value every predicted patch holds.
    PATCH_VALUE = 0.8 * np.exp(0.3j)

    def __init__(self, name: str, notes: dict[str, Any] | None = None) -> None:
        self.name = name
        self.notes = dict(notes or {})

    def build_model(self, model_config, *, probe, intensity_scale, **_: Any) -> dict[str, Any]:
        return {"config": model_config, "probe": np.asarray(probe), "scale": float(intensity_scale)}

    def fit(self, request: engine.FitRequest) -> engine.FitOutcome:
        cfg = request.config
        prepared = request.prepared
        model = self.build_model(
            cfg.model, probe=prepared.probe, intensity_scale=prepared.intensity_scale
        )
        for epoch in range(cfg.nepochs):
            val = 2.0 / (epoch + 2) if prepared.val is not None else math.nan
            request.history.record(epoch, train_loss=1.0 / (epoch + 1), val_loss=val, lr=1e-3)
        return engine.FitOutcome(model=model, fit_s=1e-3, notes=dict(self.notes))

    def weights_to_bytes(self, model: dict[str, Any]) -> bytes:
        return npy_bytes(np.array([model["scale"]], np.float64))

    def weights_from_bytes(self, model: dict[str, Any], data: bytes, where: str) -> None:
        model["scale"] = float(load_npy_bytes(data, name=where)[0])

    def model_probe(self, model: dict[str, Any]) -> np.ndarray:
        return model["probe"]

    def model_intensity_scale(self, model: dict[str, Any]) -> float:
        return model["scale"]

    def make_predict(self, model: dict[str, Any], execution: Any):
        n = model["config"].N

        def predict(batch) -> np.ndarray:
            g, c = batch.indices.shape
            return np.full((g, c, n, n), self.PATCH_VALUE, np.complex64)

        return predict


def make_fake_backend(name: str, notes: dict[str, Any] | None = None) -> types.ModuleType:
    """A backend module (``NAME``, ``train``, ``reconstruct``, ``load_bundle``) running the core
    skeleton (:func:`ptycho_core.engine.train` / :func:`~ptycho_core.engine.reconstruct`) with
    :class:`NumpyHooks`: it returns the typed results, as the real backends do."""
    module = types.ModuleType(f"fake_{name}_backend")
    hooks = NumpyHooks(name, notes)
    module.NAME = name
    module.hooks = hooks
    module.calls = []

    def train(config, execution=None, *, train_data=None, test_data=None):
        module.calls.append(("train", execution))
        return engine.train(hooks, config, execution, train_data=train_data, test_data=test_data)

    def reconstruct(config, execution=None, *, data=None):
        module.calls.append(("reconstruct", execution))
        return engine.reconstruct(hooks, config, execution, data=data)

    def load_bundle(path):
        module.calls.append(("load_bundle", path))
        return engine.load_bundle(hooks, path)

    module.train = train
    module.reconstruct = reconstruct
    module.load_bundle = load_bundle
    return module


@pytest.fixture
def fake_backends(monkeypatch):
    """Make :mod:`ptycho_cli.dispatch` load framework-free fake backends (one per backend name);
    ``accelerator=auto`` resolves to ``cpu`` without asking a framework. Returns a namespace with
    ``modules`` (name → module) and ``loaded`` (the names dispatch loaded, in order)."""
    from ptycho_cli import dispatch

    ns = types.SimpleNamespace(modules={n: make_fake_backend(n) for n in BACKEND_NAMES}, loaded=[])

    def load_backend(name: str) -> types.ModuleType:
        check_backend_name(name)
        ns.loaded.append(name)
        return ns.modules[name]

    monkeypatch.setattr(dispatch, "load_backend", load_backend)
    monkeypatch.setattr(
        dispatch, "resolve_accelerator", lambda accel, backend: "cpu" if accel == "auto" else accel
    )
    return ns


@pytest.fixture
def record_reconstructions(fake_backends):
    """``record(name) -> list``: make that fake backend's ``reconstruct`` run the real skeleton
    (:func:`ptycho_core.engine.reconstruct` with the fake hooks) and record each call's
    ``(config, reconstruction)`` in the returned list."""

    def record(name: str) -> list[tuple[Any, Any]]:
        module = fake_backends.modules[name]
        seen: list[tuple[Any, Any]] = []

        def reconstruct(config, execution=None, *, data=None, **kw):
            rec = engine.reconstruct(module.hooks, config, execution, data=data, **kw)
            seen.append((config, rec))
            return rec

        module.reconstruct = reconstruct
        return seen

    return record
