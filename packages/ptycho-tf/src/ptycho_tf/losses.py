"""Training losses (``specs/model.md``) in TensorFlow, TF layout ``(B, N, N, C)``.

All terms are means over every element of the batch (scalar float32 tensors). ``x_scaled`` is the
measured amplitude in model units, ``s·α·X`` (photon-count amplitude); its square is the observed
photon count compared with the predicted intensity.

Physics-informed: ``loss = nll_weight·NLL + mae_weight·MAE + realspace_weight·RS`` with
``NLL = mean(I_pred − x²·log(I_pred + eps))``, ``MAE = mean|A_pred − x|`` and
``RS = mean|O_pred − Y|`` (complex modulus; needs ground-truth patches ``Y``).
Supervised: ``loss = mean||O| − |Y|| + mean|wrap(arg O − arg Y)|`` (``amp_mae``, ``phase_mae``).
The same definitions as the PyTorch backend, so histories are comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

from ptycho_tf.physics import poisson_nll

__all__ = ["LossWeights", "loss_terms", "wrapped_phase_difference"]


@dataclass(frozen=True)
class LossWeights:
    """Loss configuration: weights (>= 0), ``supervised`` switch and the NLL's ``eps``."""

    nll_weight: float = 1.0
    mae_weight: float = 0.0
    realspace_weight: float = 0.0
    supervised: bool = False
    eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.eps < 1e-12:
            raise ValueError(f"eps={self.eps!r} must be >= 1e-12")

    @property
    def needs_ground_truth(self) -> bool:
        """True when the loss reads ground-truth patches ``Y``."""
        return self.supervised or self.realspace_weight > 0

    @property
    def components(self) -> tuple[str, ...]:
        """Names of the logged components (besides the total ``loss``)."""
        if self.supervised:
            return ("amp_mae", "phase_mae")
        return ("nll", "mae", "realspace") if self.realspace_weight > 0 else ("nll", "mae")

    @classmethod
    def from_training_config(cls, config) -> LossWeights:
        return cls(
            config.nll_weight,
            config.mae_weight,
            config.realspace_weight,
            supervised=config.model.model_type == "supervised",
        )


def wrapped_phase_difference(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """``a − b`` wrapped into ``[−π, π)`` (radians)."""
    return tf.math.floormod(a - b + math.pi, 2 * math.pi) - math.pi


def loss_terms(
    outputs, x_scaled: tf.Tensor, y: tf.Tensor | None, weights: LossWeights
) -> dict[str, tf.Tensor]:
    """The total ``loss`` and its components for one batch.

    outputs: ``[obj complex64, amplitude float32, intensity float32]`` each ``(B, N, N, C)``;
    x_scaled: ``(B, N, N, C)`` float32 ``s·α·X``; y: ground-truth patches ``(B, N, N, C)``
    complex64 or None (required when :attr:`LossWeights.needs_ground_truth`).
    """
    obj, amp, intensity = outputs
    if weights.needs_ground_truth and y is None:
        what = (
            "model_type='supervised'"
            if weights.supervised
            else f"realspace_weight={weights.realspace_weight}"
        )
        raise ValueError(
            f"{what} needs ground-truth patches (Y in the data, or objectGuess to cut them from)"
        )
    if weights.supervised:
        y = tf.cast(y, tf.complex64)
        amp_mae = tf.reduce_mean(tf.abs(tf.abs(obj) - tf.abs(y)))
        phase_mae = tf.reduce_mean(
            tf.abs(wrapped_phase_difference(tf.math.angle(obj), tf.math.angle(y)))
        )
        return {"loss": amp_mae + phase_mae, "amp_mae": amp_mae, "phase_mae": phase_mae}
    x_scaled = tf.cast(x_scaled, tf.float32)
    nll = poisson_nll(intensity, tf.square(x_scaled), weights.eps)
    mae = tf.reduce_mean(tf.abs(amp - x_scaled))
    terms = {"nll": nll, "mae": mae}
    loss = weights.nll_weight * nll + weights.mae_weight * mae
    if weights.realspace_weight > 0:
        rs = tf.reduce_mean(tf.abs(obj - tf.cast(y, tf.complex64)))
        terms["realspace"] = rs
        loss = loss + weights.realspace_weight * rs
    return {"loss": loss, **terms}
