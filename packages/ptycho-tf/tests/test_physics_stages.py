"""The physics stages of the TensorFlow model (``specs/model.md``): the shared suite
(:class:`ptycho_core.testing.PhysicsStagesConformance`) and the projection against core's."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ptycho_core import physics as core_physics
from ptycho_core.testing import PhysicsStagesConformance
from ptycho_tf import physics
from ptycho_tf.workflows import HOOKS


class TestTfPhysicsStages(PhysicsStagesConformance):
    backend_name = "tensorflow"

    def hooks(self):
        return HOOKS


def test_data_projection_matches_core():
    rng = np.random.default_rng(3)
    obj = (rng.random((2, 3, 16, 16)) * np.exp(1j * rng.uniform(-3, 3, (2, 3, 16, 16)))).astype(
        np.complex64
    )
    amp = rng.uniform(0.1, 3.0, obj.shape).astype(np.float32)
    illum = (rng.random((16, 16)) * np.exp(1j * rng.random((16, 16)))).astype(np.complex64)
    want = core_physics.data_projection(obj, amp, illum, 0.05)
    got = physics.data_projection(tf.constant(obj), tf.constant(amp), tf.constant(illum), 0.05)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    cl = physics.data_projection_cl(
        tf.constant(obj.transpose(0, 2, 3, 1)),
        tf.constant(amp.transpose(0, 2, 3, 1)),
        tf.constant(illum),
        0.05,
    )
    np.testing.assert_allclose(
        cl.numpy().transpose(0, 3, 1, 2), want, rtol=1e-4, atol=1e-5 * np.abs(want).max()
    )
