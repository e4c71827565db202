"""Physics of the refinement solver (``specs/refinement.md``): its kernels against the
reference physics, monotone misfit, the true object as a fixed point (noise-free) and a stable
point within noise (Poisson), position correction, probe refinement, frames."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ptycho_core import _refine_ops as ops
from ptycho_core import metrics, physics
from ptycho_core.errors import ConfigError, DataContractError
from ptycho_core.refine import IterationInfo, RefineOptions, prepare_refinement, refine
from ptycho_core.simulation import simulate_scan

N = 32


def _scan(nphotons: float = 1e7, m: int = 100, seed: int = 0):
    return simulate_scan(N=N, n_positions=m, nphotons=nphotons, seed=seed)


def _noise_free(scan) -> np.ndarray:
    """Expected amplitudes of ``scan`` (photon units), no noise."""
    patches = physics.extract_patches(scan.object, scan.positions, N)
    scale = np.sqrt(scan.metadata["intensity_factor"])
    return (physics.forward_model(patches, scan.probe) * scale).astype(np.float32)


def _blurred(obj: np.ndarray, sigma: float) -> np.ndarray:
    return (
        ndimage.gaussian_filter(obj.real, sigma) + 1j * ndimage.gaussian_filter(obj.imag, sigma)
    ).astype(np.complex64)


def _lit(result, shape) -> np.ndarray:
    """Pixels of the object frame ``shape`` with at least 10 % of the peak illumination."""
    lit = np.zeros(shape, bool)
    x0, y0 = result.canvas_origin
    h, w = result.illumination.shape
    ys, xs = slice(max(0, y0), min(shape[0], y0 + h)), slice(max(0, x0), min(shape[1], x0 + w))
    ill = result.illumination[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    lit[ys, xs] = ill > 0.1 * result.illumination.max()
    return lit


def _rel_dev(obj: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    return float(
        np.sqrt(np.mean(np.abs(obj - truth)[mask] ** 2) / np.mean(np.abs(truth[mask]) ** 2))
    )


# ----------------------------------------------------------------------------- kernels
def test_kernels_match_the_reference_physics():
    rng = np.random.default_rng(0)
    canvas = (rng.normal(size=(90, 80)) + 1j * rng.normal(size=(90, 80))).astype(np.complex64)
    pos = np.stack(
        [rng.uniform(N / 2, 80 - N / 2 - 1.01, 70), rng.uniform(N / 2, 90 - N / 2 - 1.01, 70)], 1
    )
    np.testing.assert_allclose(
        ops.extract(canvas, pos, N), physics.extract_patches(canvas, pos, N), rtol=0, atol=1e-5
    )
    q = (rng.normal(size=(70, N, N)) + 1j * rng.normal(size=(70, N, N))).astype(np.complex64)
    acc = np.zeros(canvas.shape, np.complex64)
    ops.scatter(acc, q, pos)
    ref = physics.place_patches(q, pos, canvas.shape)
    np.testing.assert_allclose(acc, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    # |F ψ| is the forward model's amplitude; F is unitary
    probe = _scan(m=4).probe
    far = ops.propagate(ops.extract(canvas, pos, N) * probe, ops.checkerboard(N))
    np.testing.assert_allclose(
        np.abs(far),
        physics.forward_model(physics.extract_patches(canvas, pos, N), probe),
        rtol=1e-4,
        atol=1e-4,
    )
    back = ops.back_propagate(far.copy(), ops.checkerboard(N))
    np.testing.assert_allclose(back, ops.extract(canvas, pos, N) * probe, atol=1e-4)


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_residual_is_the_misfit_gradient(noise):
    """``R`` points along the misfit's gradient: a small step ``Ψ − tR`` lowers the misfit by
    ``≈ 2t·c·Σ|R|²`` (c = 1 Gaussian; Poisson's Newton scaling gives c ∈ (0, 2])."""
    rng = np.random.default_rng(1)
    far = (rng.normal(size=(3, 8, 8)) + 1j * rng.normal(size=(3, 8, 8))).astype(np.complex64) * 5
    amp = np.abs(far) * rng.uniform(0.5, 1.5, far.shape).astype(np.float32)
    r, f0 = ops.residual(far, amp, noise)
    t = 1e-3
    f1 = ops.residual(far - t * r, amp, noise)[1]
    assert f1 < f0
    if noise == "gaussian":
        assert (f0 - f1) == pytest.approx(2 * t * np.sum(np.abs(r) ** 2), rel=0.02)


def test_step_lengths_are_the_clipped_least_squares_solution():
    """``(α_O, α_P)`` minimise ``‖χ − α_O u − α_P v‖²`` (a real least-squares problem on the
    stacked real and imaginary parts, solved by ``lstsq``), clipped to ``[0, 4]``."""
    rng = np.random.default_rng(2)

    def cplx() -> np.ndarray:
        return (rng.normal(size=(5, 8, 8)) + 1j * rng.normal(size=(5, 8, 8))).astype(np.complex64)

    def real(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a.real.ravel(), a.imag.ravel()]).astype(np.float64)

    u, v = cplx(), cplx()
    for a_true in ((0.7, 1.9), (2.5, 0.3)):
        chi = a_true[0] * u + a_true[1] * v + 0.05 * cplx()
        want = np.linalg.lstsq(np.stack([real(u), real(v)], 1), real(chi), rcond=None)[0]
        assert ops.step_lengths(chi, u, v) == pytest.approx(tuple(want), rel=1e-4)
        a_obj, a_probe = ops.step_lengths(chi, u, None)
        assert a_probe == 0.0
        assert a_obj == pytest.approx(real(u) @ real(chi) / (real(u) @ real(u)), rel=1e-5)
    assert ops.step_lengths(-u, u, None) == (0.0, 0.0)  # a negative step is clipped to 0
    assert ops.step_lengths(9 * u, u, None)[0] == 4.0


def test_position_steps_solve_the_linearised_problem():
    """Per pattern, ``(dx, dy)`` minimise ``‖χ + dx·∂ψ/∂x + dy·∂ψ/∂y‖²`` (``lstsq``), capped."""
    rng = np.random.default_rng(3)
    shape = (4, 8, 8)
    gx, gy, noise = (
        (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
        for _ in range(3)
    )
    shift = rng.uniform(-0.4, 0.4, (4, 2))
    chi = -(shift[:, 0, None, None] * gx + shift[:, 1, None, None] * gy) + 0.01 * noise
    got = ops.position_steps(chi, gx, gy, cap=0.5)
    for m in range(4):
        a = np.stack([np.concatenate([g[m].real.ravel(), g[m].imag.ravel()]) for g in (gx, gy)])
        b = -np.concatenate([chi[m].real.ravel(), chi[m].imag.ravel()])
        np.testing.assert_allclose(got[m], np.linalg.lstsq(a.T, b, rcond=None)[0], rtol=1e-4)
    np.testing.assert_allclose(got, shift, atol=0.02)
    assert np.all(np.abs(ops.position_steps(chi * 10, gx, gy, cap=0.5)) <= 0.5)


# ----------------------------------------------------------------------------- monotone misfit
@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_full_batch_misfit_never_increases(noise):
    """Full batch, fixed step β = 1: for the Gaussian model the step is a majorise–minimise
    step, so the misfit never rises and no step is undone; Poisson too on this scan."""
    scan = _scan()
    start = _blurred(scan.object, 2.0) * 3.0
    r = refine(
        start,
        scan.diffraction,
        scan.positions,
        scan.probe,
        options=RefineOptions(iterations=8, noise=noise, batch_size=scan.M),
    )
    assert np.all(np.diff(r.misfit) <= 1e-9 * r.misfit[0])
    assert r.rejected_steps == 0
    assert r.misfit[-1] < 0.2 * r.misfit[0]
    assert r.final_misfit == pytest.approx(r.misfit[-1])


def test_full_batch_is_the_same_in_any_chunking():
    scan = _scan(m=60)
    start = _blurred(scan.object, 2.0)
    results = [
        refine(
            start,
            scan.diffraction,
            scan.positions,
            scan.probe,
            options=RefineOptions(iterations=3, batch_size=scan.M, chunk=c),
        )
        for c in (7, 256)
    ]
    np.testing.assert_allclose(results[0].misfit, results[1].misfit, rtol=1e-5)
    np.testing.assert_allclose(results[0].object, results[1].object, atol=1e-4)


def test_mini_batch_misfit_decreases_over_a_window_of_two():
    """Mini-batches (the default): the misfit of iteration k+2 is below that of iteration k."""
    scan = _scan()
    start = _blurred(scan.object, 2.0) * 0.5
    r = refine(
        start, scan.diffraction, scan.positions, scan.probe, options=RefineOptions(iterations=8)
    )
    assert np.all(r.misfit[2:] < r.misfit[:-2])
    assert r.final_misfit < 0.05 * r.misfit[0]


# ----------------------------------------------------------------------------- fixed points
def test_true_object_and_noise_free_data_stay_put():
    """From the truth with exact data nothing moves (rel. deviation < 1e-4) and the fitted
    scale is the simulator's photon factor."""
    scan = _scan()
    r = refine(
        scan.object,
        _noise_free(scan),
        scan.positions,
        scan.probe,
        options=RefineOptions(iterations=10),
    )
    lit = _lit(r, scan.object.shape)
    assert _rel_dev(r.object, scan.object, lit) < 1e-4
    assert r.probe_scale == pytest.approx(np.sqrt(scan.metadata["intensity_factor"]), rel=1e-5)
    assert abs(r.final_misfit) < 1e-3


def test_true_object_with_poisson_data_stays_within_noise():
    """From the truth with Poisson data the full-batch ML estimate fits at least as well as
    the truth, and its deviation from the truth scales like the noise, 1/sqrt(photons):
    100× more photons give ~10× less deviation (accepted 5–20×)."""
    devs = []
    for nphotons in (1e5, 1e7):
        scan = _scan(nphotons=nphotons)
        r = refine(
            scan.object,
            scan.diffraction,
            scan.positions,
            scan.probe,
            options=RefineOptions(iterations=10, batch_size=scan.M),
        )
        assert r.final_misfit <= r.misfit[0]
        devs.append(_rel_dev(r.object, scan.object, _lit(r, scan.object.shape)))
    assert devs[0] < 0.1
    assert 5 < devs[0] / devs[1] < 20
    # the default mini-batches stay within noise too (1e7 photons: 10^4 counts/pixel)
    r = refine(
        scan.object,
        scan.diffraction,
        scan.positions,
        scan.probe,
        options=RefineOptions(iterations=10),
    )
    assert _rel_dev(r.object, scan.object, _lit(r, scan.object.shape)) < 3 * devs[1]


# ----------------------------------------------------------------------------- positions, probe
def test_known_subpixel_position_errors_are_corrected():
    """Four positions off by 0.6 px (in four directions, so the mean error is zero) come back
    to within 0.15 px with positions refined; the others stay within 0.1 px."""
    scan = _scan(nphotons=1e8)
    wrong = scan.positions.copy()
    moved = [10, 30, 50, 70]
    wrong[moved] += np.array([[0.6, 0.0], [-0.6, 0.0], [0.0, 0.6], [0.0, -0.6]])
    r = refine(
        scan.object,
        scan.diffraction,
        wrong,
        scan.probe,
        options=RefineOptions(iterations=12, positions="refine", positions_start=1),
    )
    err = np.linalg.norm(r.positions - scan.positions, axis=1)
    assert np.all(err[moved] < 0.15), err[moved]
    others = np.setdiff1d(np.arange(scan.M), moved)
    assert np.all(err[others] < 0.1)
    fixed = refine(
        scan.object, scan.diffraction, wrong, scan.probe, options=RefineOptions(iterations=12)
    )
    assert r.final_misfit < 0.5 * fixed.final_misfit


def test_probe_refinement_fixes_a_wrong_probe():
    scan = _scan(nphotons=1e8)
    yy, xx = np.mgrid[0:N, 0:N] - N / 2
    wrong = (scan.probe * np.exp(0.5j * (xx**2 + yy**2) / (N / 4) ** 2)).astype(np.complex64)
    start = _blurred(scan.object, 1.0)
    kw = dict(iterations=12)
    fixed = refine(start, scan.diffraction, scan.positions, wrong, options=RefineOptions(**kw))
    refined = refine(
        start, scan.diffraction, scan.positions, wrong, options=RefineOptions(probe="refine", **kw)
    )
    assert refined.final_misfit < 0.5 * fixed.final_misfit
    assert not np.allclose(refined.probe, fixed.probe)


# ----------------------------------------------------------------------------- quality, frames
def test_blurred_start_improves_ssim():
    scan = _scan()
    start = _blurred(scan.object, 2.0) * 2.0
    r = refine(
        start, scan.diffraction, scan.positions, scan.probe, options=RefineOptions(iterations=10)
    )
    mask = _lit(r, scan.object.shape)
    before = metrics.evaluate(start, scan.object, mask)
    after = metrics.evaluate(r.object, scan.object, mask)
    assert after["ssim_amp"] > before["ssim_amp"] + 0.1
    assert after["ssim_phase"] > before["ssim_phase"] + 0.05
    assert after["ssim_amp"] > 0.9 and after["ssim_phase"] > 0.95


def test_result_keeps_the_input_frame():
    """A stitched canvas (origin offset, partly uncovered) comes back in its own frame; pixels
    outside the working canvas are untouched, uncovered lit pixels are filled and refined."""
    scan = _scan(m=60)
    x0, y0 = 5, 7
    sub = scan.object[y0 : y0 + 80, x0 : x0 + 90].copy()
    coverage = np.ones(sub.shape, np.float32)
    coverage[:, :10] = 0
    sub[:, :10] = 0
    seen = []
    r = refine(
        sub,
        scan.diffraction,
        scan.positions,
        scan.probe,
        origin=(x0, y0),
        coverage=coverage,
        options=RefineOptions(iterations=2),
        progress=lambda info: seen.append(info),
    )
    assert r.object.shape == sub.shape and r.origin == (x0, y0)
    assert [i.iteration for i in seen] == [0, 1, 2] and isinstance(seen[0], IterationInfo)
    assert seen[-1].canvas().shape == r.canvas.shape
    assert np.all(np.diff([i.seconds for i in seen]) >= 0)
    np.testing.assert_allclose(r.positions, scan.positions)
    lit = r.object[:, :10] != 0
    assert lit.any()
    assert r.misfit.shape == r.seconds.shape == (3,)


def test_bad_options_and_inputs_are_refused():
    with pytest.raises(ConfigError, match="noise"):
        RefineOptions(noise="laplace")
    with pytest.raises(ConfigError, match="batch_size"):
        RefineOptions(batch_size=0)
    with pytest.raises(ConfigError, match="probe"):
        RefineOptions(probe="yes")
    scan = _scan(m=8)
    with pytest.raises(DataContractError, match="origin"):
        prepare_refinement(
            scan.object, scan.diffraction, scan.positions, scan.probe, origin=(0.5, 0)
        )
    with pytest.raises(DataContractError, match="positions"):
        prepare_refinement(scan.object, scan.diffraction, scan.positions[:3], scan.probe)
    with pytest.raises(DataContractError, match="no signal"):
        zeros = np.zeros((400, 400), np.complex64)  # covers the whole working canvas
        prepare_refinement(zeros, scan.diffraction, scan.positions, scan.probe, origin=(-100, -100))
