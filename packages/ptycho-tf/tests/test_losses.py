"""The TensorFlow losses against core's definitions (``specs/model.md``, ``specs/training.md``)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from ptycho_core import physics as ref
from ptycho_core.errors import DataContractError
from ptycho_core.metrics import wrap_phase
from ptycho_core.training import LossSpec
from ptycho_tf.losses import loss_terms, wrapped_phase_difference


def test_wrapped_phase_difference_is_in_minus_pi_to_pi(rng):
    a = rng.uniform(-20, 20, 1000)
    b = rng.uniform(-20, 20, 1000)
    got = wrapped_phase_difference(tf.constant(a), tf.constant(b)).numpy()
    assert np.all(got > -math.pi) and np.all(got <= math.pi)
    np.testing.assert_allclose(got, wrap_phase(a - b), atol=1e-9)
    # the closed end is +π: a difference of exactly ±π (or 3π) maps to +π, never to −π
    a, b = np.array([math.pi, 0.0, 3 * math.pi]), np.array([0.0, math.pi, 0.0])  # float64
    ends = wrapped_phase_difference(tf.constant(a), tf.constant(b)).numpy()
    np.testing.assert_allclose(ends, [math.pi] * 3, rtol=1e-12)


def _outputs(rng, shape):
    obj = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    amp = rng.uniform(0.1, 3.0, shape).astype(np.float32)
    return obj, amp, amp**2


def test_physics_loss_matches_the_definition(rng):
    shape = (2, 32, 32, 1)
    obj, amp, inten = _outputs(rng, shape)
    x = rng.uniform(0.0, 3.0, shape).astype(np.float32)
    y = (obj + 0.1).astype(np.complex64)
    spec = LossSpec(nll_weight=0.7, mae_weight=0.2, realspace_weight=0.5)
    t = {k: float(v) for k, v in loss_terms([obj, amp, inten], x, y, spec).items()}
    assert set(t) == {"loss", *spec.components}
    nll = float(ref.poisson_nll(inten.astype(np.float64), x.astype(np.float64) ** 2))
    mae = float(np.mean(np.abs(amp - x)))
    rs = float(np.mean(np.abs(obj - y)))
    assert t["nll"] == pytest.approx(nll, rel=1e-5)
    assert t["mae"] == pytest.approx(mae, rel=1e-5) and t["realspace"] == pytest.approx(rs, 1e-5)
    assert t["loss"] == pytest.approx(0.7 * nll + 0.2 * mae + 0.5 * rs, rel=1e-5)


def test_supervised_loss_matches_the_definition(rng):
    shape = (2, 32, 32, 4)
    obj, amp, inten = _outputs(rng, shape)
    y = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    spec = LossSpec(supervised=True)
    t = {k: float(v) for k, v in loss_terms([obj, amp, inten], None, y, spec).items()}
    amp_mae = np.mean(np.abs(np.abs(obj) - np.abs(y)))
    phase_mae = np.mean(np.abs(wrap_phase(np.angle(obj) - np.angle(y))))
    assert t["amp_mae"] == pytest.approx(amp_mae, rel=1e-5)
    assert t["phase_mae"] == pytest.approx(phase_mae, rel=1e-5)
    assert t["loss"] == pytest.approx(amp_mae + phase_mae, rel=1e-5)


@pytest.mark.parametrize("spec", [LossSpec(supervised=True), LossSpec(realspace_weight=1.0)])
def test_missing_ground_truth_is_cores_error(rng, spec):
    obj, amp, inten = _outputs(rng, (1, 32, 32, 1))
    with pytest.raises(DataContractError, match="ground-truth"):
        loss_terms([obj, amp, inten], amp, None, spec)
