"""Metrics (``specs/data-contracts.md``): properties with expected values computed independently
of the code."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from ptycho_core import metrics
from ptycho_core.metrics import (
    align_phase,
    evaluate,
    frc,
    largest_rectangle,
    mae,
    psnr,
    psnr255,
    register_images,
    scale_amplitude,
    ssim,
)

H = W = 64


def _smooth(seed, sigma=3.0, shape=(H, W)):
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma)
    return (field - field.min()) / (field.max() - field.min())


def _object(seed=0, sigma=3.0):
    amp = 0.5 + 0.5 * _smooth(seed, sigma)
    phase = 2.0 * (_smooth(seed + 100, sigma) - 0.5)  # within ±1 rad
    return amp * np.exp(1j * phase)


def test_identical_images_score_perfectly():
    obj = _object()
    r = evaluate(obj, obj)
    assert r["ssim_amp"] == pytest.approx(1.0) and r["ssim_phase"] == pytest.approx(1.0)
    assert r["psnr_amp"] is None and r["psnr_phase"] is None  # infinite, reported as null
    assert r["mae_amp"] == pytest.approx(0, abs=1e-12) and r["mae_phase"] == pytest.approx(
        0, abs=1e-12
    )
    assert np.allclose(r["frc"]["curve"], 1.0)
    assert r["frc"]["crossing_0p5"] is None and r["frc"]["crossing_1_7"] is None
    json.dumps(r, allow_nan=False)  # strict JSON


def test_psnr_values_by_hand():
    truth = np.zeros((4, 4))
    truth[0, 0] = 2.0  # range 2
    image = truth + 0.1  # MSE 0.01
    assert psnr(image, truth) == pytest.approx(10 * math.log10(4 / 0.01))
    assert psnr255(image, truth) == pytest.approx(20 * math.log10(255 / 0.1))
    assert psnr(truth, truth) == math.inf
    assert mae(image, truth) == pytest.approx(0.1)


def test_amplitude_scale_is_removed():
    obj = _object(1)
    r = evaluate(3.7 * obj, obj)
    assert r["mae_amp"] < 1e-12 and r["ssim_amp"] == pytest.approx(1.0)
    amp = np.abs(obj)
    np.testing.assert_allclose(scale_amplitude(0.25 * amp, amp), amp)


def test_constant_phase_offset_removed_across_wrap():
    obj = _object(2)
    shifted = obj * np.exp(1j * 2.9)  # pushes many pixels across ±π
    np.testing.assert_allclose(
        align_phase(np.angle(shifted), np.angle(obj)), np.angle(obj), atol=1e-9
    )
    r = evaluate(shifted, obj)
    assert r["mae_phase"] < 1e-9 and r["ssim_phase"] == pytest.approx(1.0)


def test_phase_plane_removed_only_when_asked():
    obj = _object(3)
    rows, cols = np.indices((H, W))
    ramp = 0.3 * cols - 0.2 * rows + 1.0  # wraps several times over the image
    tilted = obj * np.exp(1j * ramp)
    np.testing.assert_allclose(
        align_phase(np.angle(tilted), np.angle(obj), remove_plane=True), np.angle(obj), atol=1e-8
    )
    assert evaluate(tilted, obj, remove_plane=True)["mae_phase"] < 1e-8
    assert evaluate(tilted, obj)["mae_phase"] > 0.5


def test_mask_restricts_statistics():
    obj = _object(4)
    bad = obj.copy()
    bad[:, W // 2 :] = 0  # garbage outside the mask
    mask = np.zeros((H, W), bool)
    mask[:, : W // 2] = True
    r = evaluate(bad, obj, mask=mask)
    assert r["n_pixels"] == H * W // 2
    assert r["mae_amp"] < 1e-12 and r["ssim_amp"] == pytest.approx(1.0)
    assert evaluate(bad, obj)["mae_amp"] > 0.1


def test_ssim_decreases_monotonically_with_noise():
    truth = _smooth(5)
    rng = np.random.default_rng(6)
    noise = rng.normal(size=truth.shape)
    scores = [ssim(truth + s * noise, truth) for s in (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)]
    assert scores[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores


def test_frc_of_independent_noise_crosses_early():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(128, 128)), rng.normal(size=(128, 128))
    out = frc(a, b)
    assert out["freqs"][0] == 0 and out["freqs"][-1] == pytest.approx(0.5)
    assert len(out["freqs"]) == len(out["curve"]) == 65
    assert out["crossing_0p5"] is not None and out["crossing_0p5"] < 0.05
    assert out["crossing_1_7"] is not None and out["crossing_1_7"] < 0.1
    assert abs(np.mean(out["curve"][5:])) < 0.05


def test_frc_of_noisy_copy_crosses_later_than_noise():
    truth = _smooth(8, sigma=1.5, shape=(128, 128))
    noisy = truth + 0.05 * np.random.default_rng(9).normal(size=truth.shape)
    out = frc(noisy, truth)
    assert out["curve"][1] > 0.9
    assert out["crossing_0p5"] is not None and 0.05 < out["crossing_0p5"] < 0.5


def _brute_force_largest_rectangle_area(m: np.ndarray) -> int:
    best = 0
    h, w = m.shape
    for r0 in range(h):
        for r1 in range(r0 + 1, h + 1):
            for c0 in range(w):
                for c1 in range(c0 + 1, w + 1):
                    if (r1 - r0) * (c1 - c0) > best and m[r0:r1, c0:c1].all():
                        best = (r1 - r0) * (c1 - c0)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_largest_rectangle_matches_brute_force(seed):
    m = np.random.default_rng(seed).random((7, 9)) < 0.75
    rows, cols = largest_rectangle(m)
    assert m[rows, cols].all()
    area = (rows.stop - rows.start) * (cols.stop - cols.start)
    assert area == _brute_force_largest_rectangle_area(m)


def test_largest_rectangle_of_an_empty_mask_is_empty():
    rows, cols = largest_rectangle(np.zeros((4, 5), bool))
    assert rows.stop - rows.start == 0 or cols.stop - cols.start == 0


def test_frc_of_a_flat_object_on_an_irregular_mask_does_not_resolve():
    # a flat reconstruction carries no information at any frequency; with the mask's edges in
    # both images (zeros outside) the FRC would stay above 0.5 up to Nyquist
    truth = _object(3, sigma=1.0)
    mask = np.zeros(truth.shape, bool)
    mask[4:60, 4:40] = True
    mask[30:60, 4:60] = True  # an L shape
    flat = evaluate(np.ones_like(truth), truth, mask=mask)["frc"]
    same = evaluate(truth, truth, mask=mask)["frc"]
    assert flat["crossing_0p5"] is not None and flat["crossing_0p5"] < 0.1
    assert same["crossing_0p5"] is None  # identical images correlate up to Nyquist
    r0, r1, c0, c1 = flat["region"]
    assert mask[r0 + 4 : r1 + 4, c0 + 4 : c1 + 4].all()  # region is in the scored bounding box


def test_frc_region_of_a_large_mask_stays_inside_it():
    # above 512 px the rectangle is searched on blocks; it must still hold only scored pixels
    truth = _object(5, sigma=2.0)
    big = np.tile(truth, (11, 11))[:700, :650]
    mask = np.zeros(big.shape, bool)
    mask[3:690, 5:400] = True
    mask[200:697, 5:640] = True
    out = evaluate(big, big, mask=mask)["frc"]
    r0, r1, c0, c1 = out["region"]
    sub = mask[3:697, 5:640]  # the scored bounding box
    assert sub[r0:r1, c0:c1].all()
    assert (r1 - r0) * (c1 - c0) >= 0.9 * 497 * 635  # close to the best (497 x 635)


def test_frc_is_empty_when_the_scored_region_is_too_thin():
    truth = _object(4)
    mask = np.zeros(truth.shape, bool)
    mask[10:50, 20 : 20 + metrics.FRC_MIN_SIDE - 1] = True
    out = evaluate(truth, truth, mask=mask)["frc"]
    assert out["curve"] == [] and out["crossing_0p5"] is None


def test_registration_recovers_known_subpixel_shift():
    obj = _object(10, sigma=1.5)
    true_shift = (2.4, -1.6)  # (dx, dy) content moved by +d
    moved = ndimage.shift(
        obj.real, (true_shift[1], true_shift[0]), order=3, mode="nearest"
    ) + 1j * ndimage.shift(obj.imag, (true_shift[1], true_shift[0]), order=3, mode="nearest")
    back, applied = register_images(moved, obj)
    assert applied[0] == pytest.approx(-2.4, abs=0.1) and applied[1] == pytest.approx(1.6, abs=0.1)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(back - obj)[inner].max() < 0.05
    plain = evaluate(moved, obj)
    reg = evaluate(moved, obj, register=True)
    assert reg["shift_xy"] == pytest.approx([-2.4, 1.6], abs=0.1)
    assert reg["ssim_amp"] > plain["ssim_amp"] + 0.05 and reg["mae_phase"] < plain["mae_phase"]


def _realistic_and_a_half_mask():
    from ptycho_core.simulation import realistic_object

    obj = realistic_object(256, seed=0)
    mask = np.zeros(obj.shape, bool)
    mask[20:236, 130:240] = True  # a held-out half, as the quality benchmark scores
    return obj, mask


def test_a_flat_reconstruction_is_not_moved_by_registration():
    # the mask's edge used to dominate the estimate: a flat object was "registered" by about
    # 11 px onto this scene, pulling unscored zeros into the scored region (a floor too low)
    obj, mask = _realistic_and_a_half_mask()
    flat = np.ones_like(obj)
    reg = evaluate(flat, obj, mask=mask, register=True)
    plain = evaluate(flat, obj, mask=mask)
    assert reg["shift_xy"] == [0.0, 0.0]
    assert reg["ssim_amp"] == pytest.approx(plain["ssim_amp"])
    assert reg["ssim_phase"] == pytest.approx(plain["ssim_phase"])


def test_registration_inside_a_mask_finds_the_shift_and_drops_pulled_in_pixels():
    obj, mask = _realistic_and_a_half_mask()
    dy, dx = 1.5, -2.0
    moved = ndimage.shift(obj.real, (dy, dx), order=3) + 1j * ndimage.shift(
        obj.imag, (dy, dx), order=3
    )
    moved = np.where(mask, moved, 0)  # the reconstruction exists on the scored region only
    out = evaluate(moved, obj, mask=mask, register=True)
    assert out["shift_xy"] == pytest.approx([-dx, -dy], abs=0.15)
    assert out["ssim_amp"] > 0.99 and out["ssim_phase"] > 0.99
    # the pixels whose value would come from outside the mask are not scored
    assert mask.sum() - 4 * 216 <= out["n_pixels"] < mask.sum()


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="no pixels"):
        evaluate(np.ones((8, 8)), np.ones((8, 8)), mask=np.zeros((8, 8), bool))


def test_skimage_is_imported_lazily():
    import subprocess
    import sys

    code = "import sys, ptycho_core.metrics; print('skimage' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert metrics.__all__
