"""Adaptation on a new scan with the PyTorch backend: the shared suite
(:class:`ptycho_core.testing.AdaptationConformance`, ``specs/training.md`` "Adaptation")."""

from __future__ import annotations

import numpy as np
import torch

from ptycho_core.testing import AdaptationConformance
from ptycho_torch.losses import PtychoLoss
from ptycho_torch.workflows import HOOKS


class TestTorchAdaptation(AdaptationConformance):
    backend_name = "pytorch"

    def hooks(self):
        return HOOKS

    def physics_loss(self, model, grouped, spec) -> float:
        x = torch.from_numpy(np.ascontiguousarray(grouped.diffraction, np.float32))
        off = torch.from_numpy(np.ascontiguousarray(grouped.offsets, np.float32))
        model = model.cpu().eval()
        with torch.no_grad():
            return float(PtychoLoss(spec)(model(x, off), x)["loss"])
