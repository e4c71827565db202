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

from ptycho_torch.model import ModelOutput
from ptycho_torch.physics import poisson_nll

__all__ = ["PtychoLoss", "wrapped_phase_difference"]


def wrapped_phase_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a − b`` wrapped into ``(−π, π]`` (radians)."""
    d = a - b
    return torch.remainder(d + math.pi, 2 * math.pi) - math.pi


class PtychoLoss(nn.Module):
    """Weighted sum of the loss components; returns a dict of scalar tensors.

    Physics-informed (``supervised=False``): ``loss = nll_weight·NLL + mae_weight·MAE +
    realspace_weight·RS`` with ``NLL = mean(I_pred − (s·X)²·log(I_pred + eps))``,
    ``MAE = mean|A_pred − s·X|`` and ``RS = mean|O_pred − Y|`` (complex modulus, needs ground-truth
    patches ``Y``). Keys: ``loss``, ``nll``, ``mae`` (+ ``realspace``).

    Supervised: ``loss = mean| |O| − |Y| | + mean|wrap(arg O − arg Y)|``. Keys: ``loss``,
    ``amp_mae``, ``phase_mae``.
    """

    def __init__(
        self,
        nll_weight: float = 1.0,
        mae_weight: float = 0.0,
        realspace_weight: float = 0.0,
        *,
        supervised: bool = False,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if eps < 1e-12:
            raise ValueError(f"eps={eps!r} must be >= 1e-12")
        self.nll_weight, self.mae_weight, self.realspace_weight = (
            float(nll_weight),
            float(mae_weight),
            float(realspace_weight),
        )
        self.supervised, self.eps = bool(supervised), float(eps)

    @property
    def needs_ground_truth(self) -> bool:
        """True when the loss reads ground-truth patches ``Y``."""
        return self.supervised or self.realspace_weight > 0

    def forward(
        self, out: ModelOutput, x_scaled: torch.Tensor, y: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        if self.needs_ground_truth and y is None:
            what = (
                "model_type='supervised'"
                if self.supervised
                else f"realspace_weight={self.realspace_weight}"
            )
            raise ValueError(
                f"{what} needs ground-truth patches "
                "(Y in the data, or objectGuess to cut them from)"
            )
        if self.supervised:
            amp_mae = torch.mean(torch.abs(out.obj.abs() - y.abs()))
            phase_mae = torch.mean(
                torch.abs(wrapped_phase_difference(torch.angle(out.obj), torch.angle(y)))
            )
            return {"loss": amp_mae + phase_mae, "amp_mae": amp_mae, "phase_mae": phase_mae}
        nll = poisson_nll(out.intensity, x_scaled * x_scaled, self.eps)
        mae = torch.mean(torch.abs(out.amplitude - x_scaled))
        terms = {"nll": nll, "mae": mae}
        loss = self.nll_weight * nll + self.mae_weight * mae
        if self.realspace_weight > 0:
            rs = torch.mean(torch.abs(out.obj - y))
            terms["realspace"] = rs
            loss = loss + self.realspace_weight * rs
        return {"loss": loss, **terms}
