"""Adaptation on a new scan with the TensorFlow backend: the shared suite
(:class:`ptycho_core.testing.AdaptationConformance`, ``specs/training.md`` "Adaptation")."""

from __future__ import annotations

import numpy as np

from ptycho_core.testing import AdaptationConformance
from ptycho_tf.losses import loss_terms
from ptycho_tf.workflows import TFHooks


class TestTensorFlowAdaptation(AdaptationConformance):
    backend_name = "tensorflow"

    def hooks(self):
        return TFHooks()

    def physics_loss(self, model, grouped, spec) -> float:
        x = grouped.channels_last().astype(np.float32)
        off = np.asarray(grouped.offsets, np.float32)
        out = model.autoencoder({"x": x, "offsets": off}, training=False)
        return float(loss_terms(out, x, None, spec)["loss"])
