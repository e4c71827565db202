"""The physics stages of the TensorFlow model (``specs/model.md``): the shared suite
(:class:`ptycho_core.testing.PhysicsStagesConformance`), and the channels-last projection the
layers use against the generic one."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ptycho_core.testing import PhysicsStagesConformance
from ptycho_tf import physics
from ptycho_tf.workflows import HOOKS


class TestTfPhysicsStages(PhysicsStagesConformance):
    backend_name = "tensorflow"

    def hooks(self):
        return HOOKS

    def data_projection(self, obj, amplitude, illumination, alpha, softening):
        c = tf.constant
        out = physics.data_projection(c(obj), c(amplitude), c(illumination), alpha, softening)
        return out.numpy()


def test_channels_last_projection_is_the_generic_one_transposed():
    rng = np.random.default_rng(4)
    obj = (rng.random((2, 16, 16, 3)) * np.exp(1j * rng.random((2, 16, 16, 3)))).astype(
        np.complex64
    )
    amp = rng.uniform(0.1, 3.0, obj.shape).astype(np.float32)
    illum = (rng.random((16, 16)) + 0.1j).astype(np.complex64)
    cl = physics.data_projection_cl(
        tf.constant(obj), tf.constant(amp), tf.constant(illum), 0.05, 0.01
    )
    generic = physics.data_projection(
        tf.constant(obj.transpose(0, 3, 1, 2)),
        tf.constant(amp.transpose(0, 3, 1, 2)),
        tf.constant(illum),
        0.05,
        0.01,
    )
    np.testing.assert_allclose(cl.numpy(), generic.numpy().transpose(0, 2, 3, 1), atol=1e-6)
