"""``ptycho.workflows.components``: load a bundle for inference, train, write outputs — the
legacy entry points of Ptychodus's child (``specs/ptychodus.md``).

- :func:`load_inference_bundle` verifies the bundle without importing a framework and records
  its intensity scale in ``ptycho.params.cfg``; inference later runs on the backend the bundle
  records.
- :func:`run_cdi_example` trains with the **TensorFlow** backend (this entry is Ptychodus's
  "PtychoPINN"); without ptycho-tf it raises
  :class:`~ptycho_core.errors.BackendUnavailableError` with the install command — never a
  fallback to another backend.
- :func:`save_outputs` writes ``history.csv`` and the test reconstruction.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ptycho import model_manager, params
from ptycho._bundles import resolve_bundle, temp_dir
from ptycho._model import BundleModel
from ptycho._settings import log_inference_settings, training_config
from ptycho.raw_data import RawData
from ptycho_core import engine
from ptycho_core.backends import available_backends, load_backend
from ptycho_core.config import ExecutionConfig
from ptycho_core.errors import BackendUnavailableError
from ptycho_core.io import atomic_write

__all__ = ["TRAIN_BACKEND", "load_inference_bundle", "run_cdi_example", "save_outputs"]

logger = logging.getLogger(__name__)

#: The backend Ptychodus's "PtychoPINN" entry trains with.
TRAIN_BACKEND = "tensorflow"


def load_inference_bundle(model_dir: str | os.PathLike[str]) -> tuple[BundleModel, dict[str, Any]]:
    """The model in ``model_dir`` and a copy of ``ptycho.params.cfg``.

    ``model_dir``: the folder Ptychodus passes — holding ``wts.h5.zip`` or an unpacked bundle
    (Ptychodus extracts any other ``*.zip``) — or a bundle file. The archive, its manifest and
    every entry's hash are checked here; anything that is not a ptycho bundle (an original
    PtychoPINN model, ...) is a ``ForeignModelError`` (a ``BundleError``, ``ValueError``) naming
    the path. Sets ``params.cfg['intensity_scale']`` (the manifest's ``s``), ``N`` and
    ``gridsize`` (the bundle's), and logs each Ptychodus model setting the bundle overrides.
    """
    path, manifest = resolve_bundle(model_dir)
    model_cfg, _ = engine.bundle_configs(manifest, path)
    s = engine.bundle_intensity_scale(manifest, path)
    backend = str(manifest["backend"])
    if backend not in available_backends():
        raise BackendUnavailableError(backend, f"the bundle {path} was trained with it")
    log_inference_settings(params.cfg, model_cfg, path)
    params.cfg.update(intensity_scale=s, N=model_cfg.N, gridsize=model_cfg.gridsize)
    logger.info(
        "loaded %s bundle %s: N=%d, gridsize=%d, s=%.6g",
        backend,
        path,
        model_cfg.N,
        model_cfg.gridsize,
        s,
    )
    model = BundleModel(
        path=path,
        manifest=manifest,
        backend=backend,
        model_config=model_cfg,
        intensity_scale=s,
    )
    return model, dict(params.cfg)


def _output_dir(config: Any) -> Path:
    out = getattr(config, "output_dir", None)
    if out is None or Path(out) in (Path(), Path(".")):
        d = temp_dir("ptycho-ptychodus-train-")
        logger.info(
            "training output folder: %s (temporary; model_manager.save copies the model)", d
        )
        return d
    return Path(out)


def run_cdi_example(
    train_data: RawData,
    test_data: RawData | None,
    config: Any,
    **kwargs: Any,
) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Train a model with the TensorFlow backend; ``(amplitude, phase, results)``.

    ``train_data``/``test_data``: :class:`RawData` (``test_data`` may be None). ``config``: a
    ``ptycho.config.config.TrainingConfig`` (``model.N`` 0 means the data's pattern size),
    mapped by ``ptycho._settings.training_config`` with a logged line per ignored or changed
    setting. ``output_dir`` ``Path()`` (what Ptychodus passes) means a temporary folder.

    Returns the reconstruction of ``test_data`` as ``(H, W) float32`` amplitude and phase
    (radians; None without test data) and ``results``: ``history`` (per-epoch ``train_loss``,
    ``val_loss``, ...), ``bundle_path``, ``output_dir``, ``intensity_scale``, ``backend``. The
    bundle is remembered for :func:`ptycho.model_manager.save`.
    """
    if kwargs:
        logger.info("run_cdi_example: ignoring %s", sorted(kwargs))
    if not isinstance(train_data, RawData) or not (
        test_data is None or isinstance(test_data, RawData)
    ):
        raise TypeError("run_cdi_example expects RawData for train_data and test_data (or None)")
    backend = load_backend(TRAIN_BACKEND)  # BackendUnavailableError: "pip install ptycho-tf"
    out = _output_dir(config)
    core_config = training_config(config, train_data.to_scan(), out)
    logger.info(
        "training with the %s backend: N=%d, gridsize=%d, %d epochs, %d patterns → %s",
        TRAIN_BACKEND,
        core_config.model.N,
        core_config.model.gridsize,
        core_config.nepochs,
        len(train_data),
        out,
    )
    result = backend.train(
        core_config,
        ExecutionConfig(enable_progress_bar=False),
        train_data=train_data.to_scan(),
        test_data=None if test_data is None else test_data.to_scan(),
    )
    model_manager.remember(Path(result.bundle_path))
    results = {
        "history": result.history,
        "bundle_path": str(result.bundle_path),
        "output_dir": str(out),
        "intensity_scale": result.intensity_scale,
        "backend": result.backend,
    }
    recon = result.reconstruction
    if recon is None:
        return None, None, results
    results["reconstruction"] = recon
    return recon.amplitude, recon.phase, results


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb") as handle:
        np.save(handle, np.asarray(array), allow_pickle=False)


def save_outputs(
    amplitude: np.ndarray | None,
    phase: np.ndarray | None,
    results: dict[str, Any],
    output_prefix: str | os.PathLike[str],
) -> list[Path]:
    """Write into the folder ``output_prefix``: ``history.csv`` (copied from the training
    folder) and, when given, ``reconstructed_amplitude.npy`` / ``reconstructed_phase.npy``
    (``(H, W) float32``, phase in radians). Atomic; returns the paths written."""
    out = Path(output_prefix)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    history = Path(str(results.get("output_dir", ""))) / engine.HISTORY_NAME
    if results.get("output_dir") and history.is_file():
        target = out / engine.HISTORY_NAME
        if history.resolve() != target.resolve():
            with atomic_write(target, "wb") as handle, open(history, "rb") as src:
                shutil.copyfileobj(src, handle)
        written.append(target)
    for name, array in (("reconstructed_amplitude", amplitude), ("reconstructed_phase", phase)):
        if array is not None:
            target = out / f"{name}.npy"
            _write_npy(target, array)
            written.append(target)
    logger.info("wrote %s", ", ".join(str(p) for p in written) or "nothing")
    return written
