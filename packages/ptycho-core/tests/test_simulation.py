"""Simulation (``specs/simulation.md``): determinism, photon budget, Poisson statistics, frames."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_core import physics as ph
from ptycho_core import simulation as sim
from ptycho_core.io import ScanData


@pytest.fixture(scope="module")
def small_scan():
    return sim.simulate_scan(N=32, n_positions=300, nphotons=1e5, seed=3)


def test_simulate_scan_returns_contract(small_scan):
    s = small_scan
    assert isinstance(s, ScanData)
    assert s.diffraction.shape == (300, 32, 32) and s.diffraction.dtype == np.float32
    assert s.Y.shape == (300, 32, 32) and s.Y.dtype == np.complex64
    assert s.probe.shape == (32, 32)
    assert s.metadata["nphotons"] == 1e5
    assert "creator" in s.metadata
    assert np.all(s.diffraction >= 0)


def test_seeded_determinism():
    a = sim.simulate_scan(N=32, n_positions=64, nphotons=1e4, seed=7)
    b = sim.simulate_scan(N=32, n_positions=64, nphotons=1e4, seed=7, workers=1)
    c = sim.simulate_scan(N=32, n_positions=64, nphotons=1e4, seed=8)
    np.testing.assert_array_equal(a.diffraction, b.diffraction)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.object, b.object)
    assert not np.array_equal(a.diffraction, c.diffraction)
    assert not np.array_equal(a.object, c.object)


def test_noise_independent_of_worker_count():
    obj = sim.procedural_object(96, 0)
    pos = sim.random_scan(600, obj.shape, 16, seed=1)  # > 2 chunks
    probe = sim.default_probe(16)
    a = sim.simulate(obj, probe, pos, 1e4, seed=5, workers=1)
    b = sim.simulate(obj, probe, pos, 1e4, seed=5, workers=3)
    np.testing.assert_array_equal(a.diffraction, b.diffraction)


def test_counts_are_integers_and_budget(small_scan):
    counts = small_scan.diffraction.astype(np.float64) ** 2
    # amplitude = sqrt(integer counts): squares are integers up to float32 rounding
    assert np.max(np.abs(counts - np.rint(counts))) < 0.05
    totals = np.rint(counts).sum(axis=(1, 2))
    # E[mean total] = nphotons; the Poisson s.d. of the mean total is sqrt(nphotons / M)
    # (the expected totals vary by pattern, but the scale makes their mean exactly nphotons)
    assert abs(totals.mean() - 1e5) < 5 * np.sqrt(1e5 / 300)


def test_noise_free_limit_matches_forward_model(small_scan):
    # expected intensity = c · forward_model² with c fixed by the photon budget;
    # at very high dose, counts / c -> forward_model² (relative noise ~ 1/sqrt(counts))
    s = small_scan
    hi = sim.simulate(s.object, s.probe, s.positions[:20], nphotons=1e12, seed=1)
    a = ph.forward_model(s.Y[:20], s.probe).astype(np.float64)
    c = 1e12 / np.mean(np.sum(a**2, axis=(1, 2)))
    expected = np.sqrt(c) * a
    strong = expected > 1e3  # >1e6 counts: relative amplitude noise < 1e-3
    rel = np.abs(hi.diffraction[strong] - expected[strong]) / expected[strong]
    assert strong.sum() > 1000
    assert rel.max() < 5e-3
    # and the pattern energy equals the exit-wave energy times c (Parseval)
    psi_energy = np.sum(np.abs(s.probe * s.Y[:20]) ** 2, axis=(1, 2))
    np.testing.assert_allclose(np.sum(expected**2, axis=(1, 2)), c * psi_energy, rtol=1e-4)


def test_poisson_variance(small_scan):
    # repeat one pattern many times: per-pixel count variance ~ mean
    s = small_scan
    pos = np.repeat(s.positions[:1], 400, axis=0)
    rep = sim.simulate(s.object, s.probe, pos, 1e5, seed=2)
    k = rep.diffraction.astype(np.float64) ** 2
    mean, var = k.mean(axis=0), k.var(axis=0, ddof=1)
    sel = mean > 20
    assert sel.sum() > 10
    ratio = var[sel].sum() / mean[sel].sum()
    assert ratio == pytest.approx(1.0, abs=0.1)


def test_Y_are_patches_of_the_object(small_scan):
    s = small_scan
    np.testing.assert_array_equal(s.Y, ph.extract_patches(s.object, s.positions, 32))


def test_positions_keep_patches_inside():
    shape = (150, 130)
    n = 32
    for pos in (
        sim.random_scan(2000, shape, n, seed=0),
        sim.raster_scan(shape, n, step=7.3),
        sim.raster_scan(shape, n),
    ):
        x0 = pos[:, 0] - n / 2
        y0 = pos[:, 1] - n / 2
        assert np.all(x0 >= 0) and np.all(y0 >= 0)
        # last sample used by bilinear interpolation: floor(x0) + N (when fractional)
        assert np.all(np.floor(x0) + n - 1 + (x0 % 1 > 0) <= shape[1] - 1)
        assert np.all(np.floor(y0) + n - 1 + (y0 % 1 > 0) <= shape[0] - 1)
        # patch mass equals the object's on those pixels: nothing was cut by the border
        obj = np.ones(shape)
        assert np.allclose(ph.extract_patches(obj, pos, n), 1.0)
    r = sim.raster_scan(shape, n, step=8)
    assert r[0].tolist() == [16.0, 16.0] and np.allclose(np.diff(r[:3, 0]), 8)
    with pytest.raises(ValueError):
        sim.random_scan(5, (20, 20), 32)


def test_procedural_object_ranges():
    obj = sim.procedural_object((80, 100), seed=1)
    assert obj.shape == (80, 100) and obj.dtype == np.complex64
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.min() >= 0.5 - 1e-6 and amp.max() <= 1.0 + 1e-6
    assert amp.std() > 0.02  # has structure
    assert np.abs(phase).max() <= 1.0 + 1e-6 and phase.std() > 0.05
    lines = sim.lines_object(64, seed=2)
    assert lines.min() == 0 and lines.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(lines, sim.lines_object(64, seed=2))


def test_grf_phase_correlation_length():
    # a longer correlation length gives a smoother field
    a = sim.grf_phase(128, seed=0, correlation_px=3.0)
    b = sim.grf_phase(128, seed=0, correlation_px=12.0)
    assert np.abs(a).max() == pytest.approx(1.0)

    def rough(f):
        return np.abs(np.diff(f, axis=1)).mean() / f.std()

    assert rough(b) < rough(a) / 2


def test_default_probe():
    n = 64
    p = sim.default_probe(n)
    assert p.shape == (n, n) and p.dtype == np.complex64
    amp = np.abs(p)
    assert amp.max() == pytest.approx(1.0)
    # half-maximum radius ~ 0.17 N, centred at (N/2, N/2)
    yy, xx = np.mgrid[0:n, 0:n]
    r_half = np.sqrt((amp >= 0.5).sum() / np.pi)
    assert r_half == pytest.approx(0.17 * n, rel=0.08)
    assert (xx * amp).sum() / amp.sum() == pytest.approx(n / 2, abs=1e-6)
    assert np.allclose(np.angle(p[amp > 0.01]), 0)
    d = sim.default_probe(n, defocus=2.0)
    np.testing.assert_allclose(np.abs(d), amp, atol=1e-6)
    assert np.angle(d[n // 2, n // 2]) == pytest.approx(0.0)
    r = 0.17 * n / 2  # half the disk radius: phase = defocus * (1/2)^2
    assert np.angle(d[n // 2, n // 2 + int(r)]) == pytest.approx(
        2.0 * (int(r) / (0.17 * n)) ** 2, rel=1e-5
    )


def test_held_out_halves_split_at_the_median_x():
    scan = sim.simulate_scan(N=32, n_positions=101, nphotons=1e6, seed=3)
    train, held = sim.held_out_halves(scan)
    assert train.M + held.M == scan.M and abs(train.M - held.M) <= 1
    assert train.positions[:, 0].max() < held.positions[:, 0].min()  # left trains, right held
    both = np.concatenate([train.positions, held.positions])
    np.testing.assert_array_equal(np.sort(both, axis=0), np.sort(scan.positions, axis=0))
