"""TensorFlow model bundles (``specs/data-contracts.md``) on top of :mod:`ptycho_core.bundle`.

Archive entries: ``manifest.json`` (backend ``tensorflow``, model names ``autoencoder`` and
``diffraction_to_obj``, the full model and training config, ``s``, normalisation facts),
``probe.npy`` (the model's current normalised probe, ``(N, N)`` complex64) and
``model.weights.h5`` (the autoencoder's Keras weights file; holds every weight of both models).
No pickles: loading rebuilds the architecture from the manifest's ``model_config`` and reads the
Keras weights file; a bundle of another backend raises ``BundleBackendMismatchError``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core import bundle as core_bundle
from ptycho_core.config import ModelConfig, TrainingConfig
from ptycho_core.errors import BundleError
from ptycho_tf.model import PtychoModels, build_models

__all__ = [
    "NAME",
    "WEIGHTS_ENTRY",
    "PROBE_ENTRY",
    "MODEL_NAMES",
    "LoadedBundle",
    "save_bundle",
    "load_bundle",
    "weights_bytes",
    "load_weights_bytes",
]

log = logging.getLogger(__name__)

NAME = "tensorflow"
WEIGHTS_ENTRY = "model.weights.h5"
PROBE_ENTRY = core_bundle.PROBE_NAME
MODEL_NAMES = ["autoencoder", "diffraction_to_obj"]


def weights_bytes(models: PtychoModels) -> bytes:
    """The autoencoder's Keras ``.weights.h5`` file as bytes (via a private temp folder)."""
    with tempfile.TemporaryDirectory(prefix="ptycho_tf_") as tmp:
        path = os.path.join(tmp, WEIGHTS_ENTRY)
        models.autoencoder.save_weights(path)
        with open(path, "rb") as fh:
            return fh.read()


def _count_arrays(path: str) -> int:
    import h5py

    found: list[str] = []
    with h5py.File(path, "r") as fh:
        fh.visititems(
            lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None
        )
    return len(found)


def load_weights_bytes(models: PtychoModels, data: bytes, where: object = "bundle") -> None:
    """Load ``.weights.h5`` bytes into ``models.autoencoder``, strictly: the file must hold
    exactly one array per model weight, with matching shapes; Keras' "skipping" warnings (which
    would leave freshly initialised layers) are errors. Any mismatch → :class:`BundleError`."""
    n_model = len(models.autoencoder.weights)
    with tempfile.TemporaryDirectory(prefix="ptycho_tf_") as tmp:
        path = os.path.join(tmp, WEIGHTS_ENTRY)
        with open(path, "wb") as fh:
            fh.write(data)
        try:
            n_file = _count_arrays(path)
        except OSError as exc:
            raise BundleError(
                f"{where}: {WEIGHTS_ENTRY} is not a readable HDF5 file ({exc})"
            ) from exc
        if n_file != n_model:
            raise BundleError(
                f"{where}: {WEIGHTS_ENTRY} holds {n_file} arrays but the "
                f"architecture in the manifest has {n_model} weights"
            )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                models.autoencoder.load_weights(path)
        except (ValueError, KeyError, OSError, UserWarning) as exc:
            raise BundleError(
                f"{where}: weights do not match the architecture in the manifest ({exc})"
            ) from exc


def save_bundle(
    path: str | Path,
    models: PtychoModels,
    training_config: TrainingConfig,
    *,
    normalization: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``models`` to ``path`` (usually ``<output_dir>/wts.h5.zip``) atomically.

    The manifest's intensity scale and ``probe.npy`` are the model's *current* ``s`` and probe
    (trained values when trainable). ``normalization``: JSON-safe facts (``norm_factor``, …).
    """
    s = models.intensity_scale
    manifest = core_bundle.make_manifest(
        NAME,
        training_config.model,
        training_config,
        s,
        dict(normalization),
        list(MODEL_NAMES),
        extra=extra,
    )
    files = {}
    if models.forward_layer is not None:
        files[PROBE_ENTRY] = core_bundle.npy_bytes(models.probe.astype(np.complex64))
    else:  # supervised: keep the entry (the contract lists it); the data's probe is unused
        n = models.model_config.N
        files[PROBE_ENTRY] = core_bundle.npy_bytes(np.ones((n, n), np.complex64))
    files[WEIGHTS_ENTRY] = weights_bytes(models)
    path = Path(path)
    core_bundle.write_bundle(path, manifest, files)
    log.info("wrote bundle %s", path)
    return path


@dataclass
class LoadedBundle:
    """A loaded TF bundle: the rebuilt ``models``, the ``manifest`` and the configs."""

    models: PtychoModels
    manifest: dict[str, Any]
    model_config: ModelConfig
    training_config: TrainingConfig | None
    path: Path | None = None

    @property
    def intensity_scale(self) -> float:
        return self.models.intensity_scale


def _configs(manifest: dict[str, Any], where: object) -> tuple[ModelConfig, TrainingConfig | None]:
    try:
        mc = ModelConfig.from_dict(manifest["model_config"])
        tc_d = manifest.get("training_config")
        tc = TrainingConfig.from_dict(tc_d) if tc_d else None
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f"{where}: bundle manifest has no usable model configuration ({exc})"
        ) from exc
    return mc, tc


def load_bundle(path: str | Path) -> LoadedBundle:
    """Read a ``wts.h5.zip`` written by :func:`save_bundle` (or its folder).

    Raises ``BundleBackendMismatchError`` for another backend's bundle, :class:`BundleError`
    for missing entries or weights that do not fit the manifest's architecture.
    """
    p = core_bundle.bundle_file(path)
    b = core_bundle.read_bundle(p, expected_backend=NAME)
    mc, tc = _configs(b.manifest, p)
    probe = b.load_npy(PROBE_ENTRY)
    if probe.shape != (mc.N, mc.N):
        raise BundleError(f"{p}: probe.npy has shape {probe.shape}; expected ({mc.N}, {mc.N})")
    models = build_models(
        mc,
        probe=probe,
        intensity_scale=float(b.manifest["intensity_scale"]),
        probe_trainable=bool(tc.probe_trainable) if tc else False,
        intensity_scale_trainable=bool(tc.intensity_scale_trainable) if tc else False,
    )
    load_weights_bytes(models, b.require(WEIGHTS_ENTRY), p)
    return LoadedBundle(models, b.manifest, mc, tc, p)
