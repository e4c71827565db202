"""Shared fixtures: tiny scans and fabricated bundles built with ptycho-core only (no framework)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ptycho_core.bundle import BUNDLE_NAME, make_manifest, npy_bytes, write_bundle
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
