"""The physics stages of the PyTorch model (``specs/model.md``): the shared suite
(:class:`ptycho_core.testing.PhysicsStagesConformance`) and the projection against core's."""

from __future__ import annotations

import numpy as np
import torch

from ptycho_core import physics as core_physics
from ptycho_core.testing import PhysicsStagesConformance
from ptycho_torch import physics
from ptycho_torch.workflows import HOOKS


class TestTorchPhysicsStages(PhysicsStagesConformance):
    backend_name = "pytorch"

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
    got = physics.data_projection(
        torch.from_numpy(obj), torch.from_numpy(amp), torch.from_numpy(illum), 0.05
    ).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
