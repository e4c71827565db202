"""Backend parity (issue 13, ``specs/training.md`` "Backend parity"): one set of weights, two
frameworks, the same numbers. Each backend runs in its own child process (``worker.py``); this
process imports neither framework and compares their files.

Fast lane: one representative case (N = 32, gridsize 2, ``object_big``, the default ``'fourier'``
generator) converted torch → tf → torch, plus one tf → torch case of the ``'cnn'`` generator
without ``pad_object``. Slow lane: the full grid (both generators × gridsize 1, 2 × N = 32, 64,
128 × variants) and the training run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from ptycho_core.architecture import PROJECTION_STEPS

_spec = importlib.util.spec_from_file_location(
    "ptycho_parity_harness", Path(__file__).with_name("harness.py")
)
assert _spec is not None and _spec.loader is not None
harness = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = harness
_spec.loader.exec_module(harness)

#: Gradient tolerances (L2, relative): all conv weights together, and the worst tensor (a
#: one-element head bias sums cancelling terms), each tensor at its own scale or at 1e-3 of the
#: whole gradient's, whichever is larger (``harness.TENSOR_FLOOR``). Each backend's float32
#: gradient is itself up to ~5e-4 from the float64 one (N = 32, gridsize 1: the NLL sums
#: cancelling terms); the torch.polar sign error this test found was ~5e-2 overall and O(1)
#: per tensor.
#: 5e-3 overall: on an AMD EPYC box N = 128, gridsize 2 measured 2.27e-3 (the stages' softened
#: projections amplify float32 rounding; 8.4e-4 where it was set); the torch.polar bug: 10x that.
GRAD_RTOL = 5e-3
GRAD_TENSOR_RTOL = 0.02
#: Loss curves: the largest per-step difference as a fraction of the curve's total decrease, per
#: generator. Adam's first steps move every weight by about ±lr whatever the gradient's size, so
#: rounding-level gradients of either sign are amplified; the 'fourier' generator is more exposed
#: (its lift's FFT differs between the frameworks' FFT libraries). Measured on this case: torch
#: against itself with only the memory format changed (channels_last on/off) differs by 0.36 %
#: (cnn) and 1.3 % (fourier) of the decrease; torch against TensorFlow by 0.2 % and 3.1 %.
CURVE_TOL = {"cnn": 0.02, "fourier": 0.05}
SSIM_TOL = 0.02


def _check(case: dict) -> None:
    name = case["model_config"]
    assert case["patch_rel"] <= harness.INFERENCE_RTOL, name
    assert case["object_rel"] <= harness.INFERENCE_RTOL, name
    assert case["loss_rel"]["nll"] <= harness.LOSS_RTOL, name
    assert case["loss_rel"]["mae"] <= harness.LOSS_RTOL, name
    assert case["grad_names"], name
    assert case["grad_rel"] <= GRAD_RTOL, name
    assert case["grad_tensor_rel"] <= GRAD_TENSOR_RTOL, name


@pytest.fixture(scope="module")
def torch_first(tmp_path_factory):
    folder = tmp_path_factory.mktemp("parity_torch_first")
    cfg = {"N": 32, "gridsize": 2, "n_filters_scale": 1}
    return harness.inference_cases([cfg], folder, stitch=True, round_trip=True)[0]


def test_torch_bundle_converted_to_tf_predicts_the_same_patches_and_losses(torch_first):
    _check(torch_first)


def test_round_trip_torch_tf_torch_gives_bit_identical_weights(torch_first):
    assert torch_first["round_trip_equal"]


def test_tf_bundle_converted_to_torch_predicts_the_same_patches(tmp_path):
    cfg = {"N": 32, "gridsize": 1, "n_filters_scale": 1, "pad_object": False, "generator": "cnn"}
    (case,) = harness.inference_cases([cfg], tmp_path, source="tensorflow", stitch=True)
    _check(case)


def _grid() -> list[dict]:
    """The slow-lane grid. Its gridsize-2 cases infer with the three projections per stage the
    stages train with: 20 (the inference default) repeat the same operations and amplify the
    frameworks' float32 rounding, to 1.1e-4 of a stitched object at N = 64 (the bound is 1e-4).
    The fast-lane case checks the default count."""
    out = []
    for n in (32, 64, 128):
        for g in (1, 2):
            for variant in (
                {},
                {"object_big": False},
                {"probe_big": False},
                {"pad_object": False},
                {"merge_weights": "centre", "amp_activation": "swish"},
            ):
                if g == 1 and "object_big" in variant:
                    continue  # object_big changes nothing at gridsize 1
                for generator in ("cnn", "fourier"):
                    if generator == "fourier" and (
                        "pad_object" in variant or "probe_big" in variant
                    ):
                        continue  # they shape the cnn generator only
                    out.append(
                        {
                            "N": n,
                            "gridsize": g,
                            "n_filters_scale": 1,
                            "generator": generator,
                            "inference_projection_steps": PROJECTION_STEPS,
                        }
                        | variant
                    )
    return out


@pytest.mark.slow
def test_full_grid_converted_both_ways(tmp_path):
    grid = _grid()
    half = len(grid) // 2
    cases = harness.inference_cases(grid[:half], tmp_path / "t", stitch=True)
    cases += harness.inference_cases(grid[half:], tmp_path / "f", source="tensorflow", stitch=True)
    for case in cases:
        _check(case)


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["fourier", "cnn"])
def test_training_from_the_same_start_gives_the_same_curve_and_ssim(tmp_path, generator):
    r = harness.training_case(tmp_path, steps=50, generator=generator)
    pt, tf = r["pytorch"]["curve"], r["tensorflow"]["curve"]
    assert len(pt) == len(tf) == 50
    assert abs(pt[0] - tf[0]) <= harness.LOSS_RTOL * abs(pt[0])  # the same initial network
    decrease = pt[0] - pt.min()
    assert decrease > 0
    assert float(abs(pt - tf).max()) <= CURVE_TOL[generator] * decrease
    for i in range(2):
        assert abs(r["pytorch"]["ssim"][i] - r["tensorflow"]["ssim"][i]) <= SSIM_TOL
