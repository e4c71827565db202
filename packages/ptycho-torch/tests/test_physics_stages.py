"""The physics stages of the PyTorch model (``specs/model.md``): the shared suite
(:class:`ptycho_core.testing.PhysicsStagesConformance`)."""

from __future__ import annotations

import torch

from ptycho_core.testing import PhysicsStagesConformance
from ptycho_torch import physics
from ptycho_torch.workflows import HOOKS


class TestTorchPhysicsStages(PhysicsStagesConformance):
    backend_name = "pytorch"

    def hooks(self):
        return HOOKS

    def data_projection(self, obj, amplitude, illumination, alpha, softening):
        t = torch.from_numpy
        out = physics.data_projection(t(obj), t(amplitude), t(illumination), alpha, softening)
        return out.numpy()
