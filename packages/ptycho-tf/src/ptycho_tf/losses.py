"""Training losses (``specs/model.md``) in TensorFlow, TF layout ``(B, N, N, C)``.

All terms are means over every element of the batch (scalar float32 tensors). ``x_scaled`` is the
measured amplitude in model units, ``s·α·X`` (photon-count amplitude); its square is the observed
photon count compared with the predicted intensity.

Physics-informed: ``loss = nll_weight·NLL + mae_weight·MAE + realspace_weight·RS`` with
``NLL = mean(I_pred − x²·log(I_pred + eps))``, ``MAE = mean|A_pred − x|`` and
``RS = mean|O_pred − Y|`` (complex modulus; needs ground-truth patches ``Y``).
Supervised: ``loss = mean||O| − |Y|| + mean|wrap(arg O − arg Y)|`` (``amp_mae``, ``phase_mae``).
The weights, the component names and the ground-truth rule are core's
:class:`~ptycho_core.training.LossSpec` (``specs/training.md``); the same definitions as the
PyTorch backend, so histories are comparable.
"""

from __future__ import annotations

import math

import tensorflow as tf

from ptycho_core.training import LossSpec
from ptycho_tf.physics import poisson_nll

__all__ = ["loss_terms", "wrapped_phase_difference"]


def wrapped_phase_difference(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """``a − b`` (radians) wrapped into ``(−π, π]``: ``π − ((π − (a − b)) mod 2π)``.

    The same interval as ``np.angle`` and :func:`ptycho_core.metrics.wrap_phase`
    (``specs/physics.md``): a difference of exactly ``±π`` maps to ``+π``. The supervised loss
    uses ``|wrap(·)|``, which does not depend on which end is closed.
    """
    return math.pi - tf.math.floormod(math.pi - (a - b), 2 * math.pi)


def loss_terms(
    outputs, x_scaled: tf.Tensor, y: tf.Tensor | None, spec: LossSpec
) -> dict[str, tf.Tensor]:
    """The total ``loss`` and its components (:attr:`LossSpec.components`) for one batch.

    outputs: ``[obj complex64, amplitude float32, intensity float32]`` each ``(B, N, N, C)``;
    x_scaled: ``(B, N, N, C)`` float32 ``s·α·X``; y: ground-truth patches ``(B, N, N, C)``
    complex64 or None (required when :attr:`LossSpec.needs_ground_truth`).
    """
    obj, amp, intensity = outputs
    spec.check_ground_truth(y is not None, "ptycho_tf.losses.loss_terms")
    if spec.supervised:
        y = tf.cast(y, tf.complex64)
        amp_mae = tf.reduce_mean(tf.abs(tf.abs(obj) - tf.abs(y)))
        phase_mae = tf.reduce_mean(
            tf.abs(wrapped_phase_difference(tf.math.angle(obj), tf.math.angle(y)))
        )
        return {"loss": amp_mae + phase_mae, "amp_mae": amp_mae, "phase_mae": phase_mae}
    x_scaled = tf.cast(x_scaled, tf.float32)
    nll = poisson_nll(intensity, tf.square(x_scaled), spec.eps)
    mae = tf.reduce_mean(tf.abs(amp - x_scaled))
    terms = {"nll": nll, "mae": mae}
    loss = spec.nll_weight * nll + spec.mae_weight * mae
    if spec.realspace_weight > 0:
        rs = tf.reduce_mean(tf.abs(obj - tf.cast(y, tf.complex64)))
        terms["realspace"] = rs
        loss = loss + spec.realspace_weight * rs
    return {"loss": loss, **terms}
