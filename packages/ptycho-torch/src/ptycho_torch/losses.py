"""Training losses (``specs/model.md``): Poisson NLL, amplitude MAE, optional real-space term;
supervised MAE.

All terms are means over every element of the batch (scalar float32 tensors). ``x_scaled`` is the
measured amplitude in model units, ``s·X_norm`` ``(B, C, N, N)``; its square is the photon count
compared with the predicted intensity.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptycho_core.training import LossSpec
from ptycho_torch.model import ModelOutput
from ptycho_torch.physics import poisson_nll

__all__ = ["PtychoLoss", "wrapped_phase_difference"]


def wrapped_phase_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a − b`` (radians, real tensors of one shape) wrapped into ``(−π, π]``.

    ``π − ((π − d) mod 2π)`` lies in ``(−π, π]``; a difference of exactly ``±π`` maps to ``+π``,
    the same convention as ``torch.angle`` / ``numpy.angle`` (``specs/physics.md``). Rounding
    can leave ``−π`` for differences just above ``−π``; those are folded to ``+π``.
    """
    w = math.pi - torch.remainder(math.pi - (a - b), 2 * math.pi)
    return torch.where(w <= -math.pi, w + 2 * math.pi, w)


class PtychoLoss(nn.Module):
    """The loss of a :class:`ptycho_core.training.LossSpec` (``specs/training.md``); returns a
    dict of scalar float32 tensors.

    Physics-informed: ``loss = nll_weight·NLL + mae_weight·MAE + realspace_weight·RS`` with
    ``NLL = mean(I_pred − (s·X)²·log(I_pred + eps))``, ``MAE = mean|A_pred − s·X|`` and
    ``RS = mean|O_pred − Y|`` (complex modulus). Keys: ``loss`` and ``spec.components``
    (``nll``, ``mae`` (+ ``realspace``)).

    Supervised: ``loss = mean| |O| − |Y| | + mean|wrap(arg O − arg Y)|``. Keys: ``loss``,
    ``amp_mae``, ``phase_mae``. ``spec = None`` means ``LossSpec()`` (the defaults: amplitude
    MAE only).
    """

    def __init__(self, spec: LossSpec | None = None) -> None:
        super().__init__()
        self.spec = spec if spec is not None else LossSpec()

    def forward(
        self, out: ModelOutput, x_scaled: torch.Tensor, y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``out``: the model's outputs ``(B, C, N, N)``; ``x_scaled``: measured amplitude
        ``s·α·X`` ``(B, C, N, N)`` float32; ``y``: ground-truth patches ``(B, C, N, N)``
        complex64, required when ``spec.needs_ground_truth`` (else a ``DataContractError``)."""
        spec = self.spec
        spec.check_ground_truth(y is not None, "training batch")
        if spec.supervised:
            assert y is not None  # checked above
            amp_mae = torch.mean(torch.abs(out.obj.abs() - y.abs()))
            phase_mae = torch.mean(
                torch.abs(wrapped_phase_difference(torch.angle(out.obj), torch.angle(y)))
            )
            return {"loss": amp_mae + phase_mae, "amp_mae": amp_mae, "phase_mae": phase_mae}
        nll = poisson_nll(out.intensity, x_scaled * x_scaled, spec.eps)
        mae = torch.mean(torch.abs(out.amplitude - x_scaled))
        terms = {"nll": nll, "mae": mae}
        loss = spec.nll_weight * nll + spec.mae_weight * mae
        if spec.realspace_weight > 0:
            assert y is not None  # checked above
            rs = torch.mean(torch.abs(out.obj - y))
            terms["realspace"] = rs
            loss = loss + spec.realspace_weight * rs
        return {"loss": loss, **terms}
