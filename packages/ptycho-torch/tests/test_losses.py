"""The torch loss computes what ptycho_core.training.LossSpec describes (specs/training.md)."""

import math

import numpy as np
import pytest
import torch

from ptycho_core.errors import DataContractError
from ptycho_core.physics import poisson_nll
from ptycho_core.training import LossSpec
from ptycho_torch.losses import PtychoLoss, wrapped_phase_difference
from ptycho_torch.model import ModelOutput


def test_wrapped_phase_difference_is_in_half_open_interval():
    pi = math.pi
    d = torch.tensor(
        [0.0, pi, -pi, 3 * pi, -3 * pi, 2 * pi, 0.5, -0.5, 7.0, -7.0, -1e-9, pi + 1e-7]
    )
    w = wrapped_phase_difference(d, torch.zeros_like(d)).double()
    assert torch.all(w > -pi) and torch.all(w <= pi + 1e-6)
    # the same angle modulo 2π
    np.testing.assert_allclose(np.cos(w.numpy()), np.cos(d.double().numpy()), atol=1e-6)
    np.testing.assert_allclose(np.sin(w.numpy()), np.sin(d.double().numpy()), atol=1e-6)
    assert w[1] == pytest.approx(pi) and w[2] == pytest.approx(pi)  # ±π → +π


def _outputs(seed=0, shape=(2, 1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    amp = torch.rand(shape, generator=g) + 0.1
    obj = torch.polar(torch.rand(shape, generator=g), (torch.rand(shape, generator=g) - 0.5) * 6)
    x = torch.rand(shape, generator=g) * 3
    y = torch.polar(torch.rand(shape, generator=g), (torch.rand(shape, generator=g) - 0.5) * 6)
    return ModelOutput(obj, amp, amp * amp), x, y


def test_physics_terms_follow_the_spec_weights():
    out, x, y = _outputs()
    spec = LossSpec(nll_weight=0.7, mae_weight=0.2, realspace_weight=0.5)
    terms = PtychoLoss(spec)(out, x, y)
    assert set(terms) == {"loss", *spec.components}
    nll = poisson_nll(out.intensity.numpy().astype(np.float64), (x * x).numpy().astype(np.float64))
    mae = np.mean(np.abs(out.amplitude.numpy() - x.numpy()))
    rs = np.mean(np.abs(out.obj.numpy() - y.numpy()))
    assert float(terms["nll"]) == pytest.approx(nll, rel=1e-5)
    assert float(terms["mae"]) == pytest.approx(mae, rel=1e-5)
    assert float(terms["realspace"]) == pytest.approx(rs, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(0.7 * nll + 0.2 * mae + 0.5 * rs, rel=1e-5)


def test_supervised_terms():
    out, x, y = _outputs(1)
    spec = LossSpec(supervised=True)
    terms = PtychoLoss(spec)(out, x, y)
    assert set(terms) == {"loss", *spec.components}
    a, b = out.obj.numpy(), y.numpy()
    amp = np.mean(np.abs(np.abs(a) - np.abs(b)))
    phase = np.mean(np.abs(np.angle(a * np.conj(b))))  # the wrapped difference, independently
    assert float(terms["amp_mae"]) == pytest.approx(amp, rel=1e-5)
    assert float(terms["phase_mae"]) == pytest.approx(phase, rel=1e-4)


@pytest.mark.parametrize("spec", [LossSpec(supervised=True), LossSpec(realspace_weight=1.0)])
def test_missing_ground_truth_is_reported_by_the_spec(spec):
    out, x, _ = _outputs()
    with pytest.raises(DataContractError, match="'Y'"):
        PtychoLoss(spec)(out, x, None)
    assert set(PtychoLoss()(out, x, None)) == {"loss", "nll", "mae"}  # default: NLL only
