"""The realistic scenario (``specs/simulation.md``): a wide beamline probe, an object with
amplitude and phase structure on which a flat object scores low, and probes read from files."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_core import metrics
from ptycho_core import simulation as sim
from ptycho_core.errors import DataContractError
from ptycho_core.io import read_probe, save_npz, scan_to_product, write_product


def _energy_outside_centre(probe: np.ndarray) -> float:
    n = probe.shape[0]
    e = np.abs(probe.astype(np.complex128)) ** 2
    return float(1 - e[n // 4 : 3 * n // 4, n // 4 : 3 * n // 4].sum() / e.sum())


@pytest.mark.parametrize("n", [32, 64, 128])
def test_beamline_probe_is_wide(n):
    p = sim.beamline_probe(n)
    assert p.shape == (n, n) and p.dtype == np.complex64
    assert np.isclose(np.abs(p).max(), 1.0)
    assert _energy_outside_centre(p) >= 0.25
    # little energy at the patch border: the probe is not cut off by the window
    e = np.abs(p) ** 2
    frame = e.sum() - e[2:-2, 2:-2].sum()
    assert frame / e.sum() < 0.03
    # phase curvature: the phase is not constant where the probe is bright
    bright = e > 0.1 * e.max()
    assert np.ptp(np.angle(p[bright])) > 1.0


def test_default_probe_is_compact_for_contrast():
    # the easy probe stays inside the centre: the realistic one is the hard case
    assert _energy_outside_centre(sim.default_probe(64)) < 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_realistic_object_ranges_and_flat_floor(seed):
    obj = sim.realistic_object((192, 160), seed)
    assert obj.shape == (192, 160) and obj.dtype == np.complex64
    amp, phase = np.abs(obj), np.angle(obj)
    assert amp.min() >= 0.1 - 1e-6 and amp.max() <= 1.0 + 1e-6
    assert np.ptp(amp) > 0.85
    assert np.ptp(phase) >= 2.0
    inner = np.zeros(obj.shape, bool)
    inner[16:-16, 16:-16] = True
    flat = metrics.evaluate(np.ones_like(obj), obj, mask=inner)
    assert flat["ssim_amp"] <= 0.45
    assert flat["ssim_phase"] <= 0.45


def test_realistic_object_is_seeded():
    a, b = sim.realistic_object(96, 4), sim.realistic_object(96, 4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sim.realistic_object(96, 5))


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="even"):
        sim.beamline_probe(33)
    with pytest.raises(ValueError, match="stop_frac"):
        sim.beamline_probe(32, stop_frac=1.5)
    with pytest.raises(ValueError, match="phase_span"):
        sim.realistic_object(64, phase_span=7.0)
    with pytest.raises(ValueError, match="scenario"):
        sim.simulate_scan(N=32, n_positions=8, scenario="easy")


def test_simulate_scan_scenarios_and_probe_override():
    real = sim.simulate_scan(N=32, n_positions=16, nphotons=1e6, seed=2)
    assert real.metadata["scenario"] == "realistic"
    np.testing.assert_array_equal(real.probe, sim.beamline_probe(32))
    easy = sim.simulate_scan(N=32, n_positions=16, nphotons=1e6, seed=2, scenario="procedural")
    np.testing.assert_array_equal(easy.probe, sim.default_probe(32))
    mine = np.ones((32, 32), np.complex64)
    custom = sim.simulate_scan(N=32, n_positions=16, nphotons=1e6, seed=2, probe=mine)
    np.testing.assert_array_equal(custom.probe, mine)
    np.testing.assert_array_equal(custom.object, real.object)
    with pytest.raises(ValueError, match=r"\(32, 32\)"):
        sim.simulate_scan(N=32, n_positions=16, probe=np.ones((16, 16)))


def test_read_probe_from_scan_and_product(tmp_path):
    scan = sim.simulate_scan(N=32, n_positions=16, nphotons=1e6, seed=1)
    npz = tmp_path / "scan.npz"
    save_npz(npz, scan)
    np.testing.assert_array_equal(read_probe(npz), scan.probe)
    h5 = tmp_path / "product.h5"
    write_product(h5, scan_to_product(scan, pixel_size_m=1e-8))
    np.testing.assert_allclose(read_probe(h5), scan.probe, rtol=1e-6)
    txt = tmp_path / "probe.txt"
    txt.write_text("hi")
    with pytest.raises(DataContractError, match="probe.txt"):
        read_probe(txt)
