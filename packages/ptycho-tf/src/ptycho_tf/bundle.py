"""TensorFlow model bundles (``specs/data-contracts.md``): the archive and its checks are
:mod:`ptycho_core.engine`'s; :class:`TFBundleHooks` adds what is TensorFlow's — a
:class:`~ptycho_tf.model.PtychoModels` to ``model.weights.h5`` bytes (the autoencoder's Keras
weights file) and back, strictly, its probe and its intensity scale. No pickles.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import keras
import numpy as np

from ptycho_core import engine
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


@contextlib.contextmanager
def _weights_file() -> Iterator[Path]:
    """A ``.weights.h5`` path in a private temp folder (Keras reads and writes files only)."""
    with tempfile.TemporaryDirectory(prefix="ptycho_tf_") as tmp:
        yield Path(tmp) / WEIGHTS_ENTRY


def keras_weights_bytes(model: keras.Model) -> bytes:
    """A Keras model's ``.weights.h5`` file as bytes."""
    with _weights_file() as path:
        model.save_weights(path)
        return path.read_bytes()


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
        the arrays (HDF5 paths and shapes) the model's own weights file holds
        (:func:`ptycho_core.engine.h5_state_mismatch`); Keras' "skipping" warnings (which would
        leave freshly initialised layers) are errors. Any mismatch is a :class:`BundleError`
        naming ``where``."""
        # Keras stores arrays by layer path: compare with the file this model itself writes
        own = keras_weights_bytes(model.autoencoder)
        mismatch = engine.h5_state_mismatch(own, data, where)
        if mismatch:
            raise engine.weights_mismatch_error(where, mismatch)
        with _weights_file() as path:
            path.write_bytes(data)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    model.autoencoder.load_weights(path)
            except (ValueError, KeyError, OSError, UserWarning) as exc:
                raise engine.weights_mismatch_error(where, exc) from exc

    def model_probe(self, model: PtychoModels) -> np.ndarray:
        """The current probe ``(N, N)`` complex64; ones for a supervised model (no forward
        model; the bundle keeps the entry the contract lists)."""
        if model.forward_layer is None:
            n = model.model_config.N
            return np.ones((n, n), np.complex64)
        return model.probe.astype(np.complex64)

    def model_intensity_scale(self, model: PtychoModels) -> float:
        return model.intensity_scale


#: ``save_bundle(path, models, training_config, *, normalization, extra=None) -> Path``:
#: :func:`ptycho_core.engine.save_bundle` for a :class:`~ptycho_tf.model.PtychoModels`.
save_bundle = partial(engine.save_bundle, TFBundleHooks())
#: ``load_bundle(path) -> LoadedBundle``: :func:`ptycho_core.engine.load_bundle` for TensorFlow
#: bundles (``.model``: the rebuilt :class:`~ptycho_tf.model.PtychoModels`).
load_bundle = partial(engine.load_bundle, TFBundleHooks())
