"""TensorFlow model bundles (``specs/data-contracts.md``): the archive and its checks are
:mod:`ptycho_core.engine`'s; :class:`TFBundleHooks` adds what is TensorFlow's — a
:class:`~ptycho_tf.model.PtychoModels` to ``model.weights.h5`` bytes (the autoencoder's Keras
weights file) and back, strictly, its probe and its intensity scale. No pickles.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from ptycho_core import engine
from ptycho_core.config import TrainingConfig
from ptycho_core.errors import BundleError
from ptycho_tf.model import PtychoModels, build_models

__all__ = [
    "NAME",
    "WEIGHTS_ENTRY",
    "TFBundleHooks",
    "keras_weights_bytes",
    "load_bundle",
    "save_bundle",
]

NAME = "tensorflow"
WEIGHTS_ENTRY = "model.weights.h5"


def keras_weights_bytes(model: keras.Model) -> bytes:
    """A Keras model's ``.weights.h5`` file as bytes (written in a private temp folder)."""
    with tempfile.TemporaryDirectory(prefix="ptycho_tf_") as tmp:
        path = os.path.join(tmp, WEIGHTS_ENTRY)
        model.save_weights(path)
        with open(path, "rb") as fh:
            return fh.read()


def _count_arrays(path: str) -> int:
    import h5py

    with h5py.File(path, "r") as fh:
        names: list[str] = []
        fh.visit(names.append)
        return sum(isinstance(fh[name], h5py.Dataset) for name in names)


class TFBundleHooks:
    """The model-state half of :class:`ptycho_tf.workflows.TFHooks` (what a bundle needs);
    the ``model`` is a :class:`~ptycho_tf.model.PtychoModels`."""

    name = NAME
    weights_entry = WEIGHTS_ENTRY

    #: ``build_model(model_config, *, probe, intensity_scale, probe_trainable,
    #: intensity_scale_trainable)``: a fresh :class:`PtychoModels`.
    build_model = staticmethod(build_models)

    def weights_to_bytes(self, model: PtychoModels) -> bytes:
        """The autoencoder's ``.weights.h5`` (it holds every weight of both models)."""
        return keras_weights_bytes(model.autoencoder)

    def weights_from_bytes(self, model: PtychoModels, data: bytes, where: str) -> None:
        """Load ``.weights.h5`` bytes into ``model.autoencoder``, strictly: the file must hold
        exactly one array per model weight, with matching shapes; Keras' "skipping" warnings
        (which would leave freshly initialised layers) are errors. Any mismatch is a
        :class:`BundleError` naming ``where``."""
        n_model = len(model.autoencoder.weights)
        with tempfile.TemporaryDirectory(prefix="ptycho_tf_") as tmp:
            path = os.path.join(tmp, WEIGHTS_ENTRY)
            with open(path, "wb") as fh:
                fh.write(data)
            try:
                n_file = _count_arrays(path)
            except OSError as exc:
                raise BundleError(f"{where}: not a readable HDF5 file ({exc})") from exc
            if n_file != n_model:
                raise BundleError(
                    f"{where}: holds {n_file} arrays but the architecture in the manifest has "
                    f"{n_model} weights"
                )
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    model.autoencoder.load_weights(path)
            except (ValueError, KeyError, OSError, UserWarning) as exc:
                raise BundleError(
                    f"{where}: weights do not match the architecture in the manifest ({exc})"
                ) from exc

    def model_probe(self, model: PtychoModels) -> np.ndarray:
        """The current probe ``(N, N)`` complex64; ones for a supervised model (no forward
        model; the bundle keeps the entry the contract lists)."""
        if model.forward_layer is None:
            n = model.model_config.N
            return np.ones((n, n), np.complex64)
        return model.probe.astype(np.complex64)

    def model_intensity_scale(self, model: PtychoModels) -> float:
        return model.intensity_scale


def save_bundle(
    path: str | Path,
    models: PtychoModels,
    training_config: TrainingConfig,
    *,
    normalization: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """:func:`ptycho_core.engine.save_bundle` for TensorFlow models."""
    return engine.save_bundle(
        TFBundleHooks(), path, models, training_config, normalization=normalization, extra=extra
    )


def load_bundle(path: str | Path) -> engine.LoadedBundle:
    """:func:`ptycho_core.engine.load_bundle` for TensorFlow bundles (``.model``: the rebuilt
    :class:`~ptycho_tf.model.PtychoModels`)."""
    return engine.load_bundle(TFBundleHooks(), path)
