"""Procedural objects, probes, scans and the Poisson simulator (``specs/simulation.md``).

Nothing is downloaded: objects are random lines smoothed at several scales (amplitude) and a
Gaussian random field (phase). All randomness comes from ``numpy.random.default_rng(seed)``;
the global NumPy RNG is never used, so one seed gives one scan.

Frames and units as in :mod:`ptycho_core.physics`: objects ``(H, W)`` indexed ``[y, x]``,
positions ``(M, 2)`` ``(x, y)`` in object pixels, diffraction amplitude in photon units
(``sqrt(counts)``), zero frequency at ``(N/2, N/2)``.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from ptycho_core import physics
from ptycho_core.__about__ import __version__
from ptycho_core.io import ScanData

__all__ = [
    "lines_object",
    "grf_phase",
    "procedural_object",
    "default_probe",
    "beamline_probe",
    "realistic_object",
    "SCENARIOS",
    "random_scan",
    "raster_scan",
    "patch_inside",
    "simulate",
    "simulate_scan",
    "held_out_halves",
]

logger = logging.getLogger(__name__)

#: Built-in scenes: ``realistic`` (:func:`realistic_object`, :func:`beamline_probe`) and
#: ``procedural`` (:func:`procedural_object`, :func:`default_probe`: an easy case, kept for tests).
SCENARIOS: tuple[str, ...] = ("realistic", "procedural")

# Patterns per simulation chunk: small chunks keep temporaries in cache (~8 MiB at N=64).
_SIM_CHUNK = 256


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def lines_object(
    size: int | tuple[int, int],
    seed: int | None = None,
    n_lines: int | None = None,
    scales: tuple[float, ...] = (0.7, 1.5, 3.0),
) -> np.ndarray:
    """Random straight lines, smoothed at several scales, normalised to ``[0, 1]``.

    Parameters
    ----------
    size : int or (H, W) in pixels
    seed : seed of ``numpy.random.default_rng``
    n_lines : number of line segments (default ``~ (H + W) / 4``)
    scales : Gaussian smoothing sigmas (pixels); the result is the mean of the smoothed images,
        so the object has detail from ~1 px to several px.

    Returns
    -------
    (H, W) float32 in ``[0, 1]``.
    """
    h, w = _shape(size)
    rng = np.random.default_rng(seed)
    n = max(4, (h + w) // 4) if n_lines is None else int(n_lines)
    canvas = np.zeros(h * w, dtype=np.float64)
    # segments of random length/orientation, rasterised by dense sampling (0.5 px steps)
    start = rng.uniform((0, 0), (w, h), size=(n, 2))
    length = rng.uniform(0.1, 0.6, size=n) * max(h, w)
    angle = rng.uniform(0, np.pi, size=n)
    weight = rng.uniform(0.3, 1.0, size=n)
    steps = np.arange(0, int(np.ceil(2 * length.max())) + 1) * 0.5
    t = np.minimum(steps[None, :], length[:, None])
    x = np.rint(start[:, :1] + t * np.cos(angle)[:, None]).astype(np.int64)
    y = np.rint(start[:, 1:] + t * np.sin(angle)[:, None]).astype(np.int64)
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    # each segment marks a pixel once (clipped samples repeat the end point; unique per line)
    flat = np.where(inside, y * w + x, -1)
    for i in range(n):
        ids = np.unique(flat[i][flat[i] >= 0])
        canvas[ids] = np.maximum(canvas[ids], weight[i])
    img = canvas.reshape(h, w)
    out = np.mean([ndimage.gaussian_filter(img, s, mode="constant") for s in scales], axis=0)
    out -= out.min()
    peak = out.max()
    return (out / peak if peak > 0 else out).astype(np.float32)


def grf_phase(
    size: int | tuple[int, int],
    seed: int | None = None,
    correlation_px: float = 12.0,
    max_phase: float = 1.0,
) -> np.ndarray:
    """Gaussian random field (Gaussian power spectrum), zero mean, scaled to ``±max_phase``.

    ``correlation_px`` is the real-space Gaussian correlation length in pixels. Returns
    (H, W) float32 radians with ``max |phase| == max_phase``.
    """
    h, w = _shape(size)
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(h, w))
    ky = sp_fft.fftfreq(h)[:, None]
    kx = sp_fft.fftfreq(w)[None, :]
    filt = np.exp(-2 * (np.pi * correlation_px) ** 2 * (kx**2 + ky**2))
    field = sp_fft.ifft2(sp_fft.fft2(noise) * filt).real
    field -= field.mean()
    peak = np.abs(field).max()
    return (max_phase * field / peak if peak > 0 else field).astype(np.float32)


def procedural_object(
    size: int | tuple[int, int],
    seed: int | None = None,
    amp_range: tuple[float, float] = (0.5, 1.0),
    max_phase: float = 1.0,
) -> np.ndarray:
    """Complex test object: absorbing lines, GRF phase within ``±max_phase`` rad.

    The amplitude is a transmission: ``hi`` on the open background, down to ``lo`` on the lines
    (``amp = hi − (hi − lo)·lines``). Bright lines on a dark background would make the object's
    RMS amplitude far below its peak; since the data normalisation (``specs/physics.md``) fixes the
    RMS of the object the network must produce, such a peak would land above 1, out of reach of the
    default sigmoid amplitude head (see specs/simulation.md).

    Returns (H, W) complex64.
    """
    ss = np.random.SeedSequence(seed)
    s_amp, s_phase = (int(c.generate_state(1)[0]) for c in ss.spawn(2))
    lo, hi = amp_range
    amp = hi - (hi - lo) * lines_object(size, s_amp)
    phase = grf_phase(size, s_phase, max_phase=max_phase)
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def default_probe(
    N: int,
    defocus: float = 0.0,
    radius_frac: float = 0.17,
    blur_px: float | None = None,
) -> np.ndarray:
    """Disk probe of radius ``radius_frac·N`` centred at ``(N/2, N/2)``, Gaussian-blurred.

    ``blur_px`` (default ``N/32``) is the Gaussian sigma of the edge blur in pixels; ``defocus``
    adds the quadratic phase ``defocus · (r / radius)²`` (radians at the disk edge). The peak
    amplitude is 1. Returns (N, N) complex64.
    """
    if N <= 0 or N % 2:
        raise ValueError(f"N must be a positive even integer, got {N}")
    r0 = radius_frac * N
    sigma = N / 32 if blur_px is None else float(blur_px)
    yy, xx = np.mgrid[0:N, 0:N] - N / 2
    r2 = (xx**2 + yy**2) / r0**2
    amp = (r2 <= 1.0).astype(np.float64)
    if sigma > 0:
        amp = ndimage.gaussian_filter(amp, sigma, mode="constant")
    amp /= amp.max()
    return (amp * np.exp(1j * defocus * r2)).astype(np.complex64)


def beamline_probe(
    N: int,
    spot_frac: float = 0.35,
    pupil_frac: float = 0.2,
    stop_frac: float = 0.45,
    edge_px: float = 0.7,
) -> np.ndarray:
    """A zone-plate probe propagated out of focus, like a beamline's (``specs/simulation.md``).

    The pupil, in the detector (far-field) plane, is an annulus of outer radius
    ``pupil_frac·N`` pixels with a central stop of ``stop_frac`` times that radius, its edges
    softened by a Gaussian of ``edge_px`` pixels. Defocus is the quadratic pupil phase
    ``a·(ρ/ρ_max)²`` with ``a = π·pupil_frac·spot_frac·N`` rad, which makes the geometric
    out-of-focus spot a ring of radius ``spot_frac·N`` pixels in the sample plane. The probe is the
    inverse FFT of that pupil: rings, side lobes and a curved phase. With the defaults, 38–43 %
    of its energy lies outside the central ``N/2`` square (N = 32, 64, 128) and under 2 % in the
    outermost 2-pixel frame. Peak amplitude 1. Returns ``(N, N) complex64``.
    """
    if N <= 0 or N % 2:
        raise ValueError(f"N must be a positive even integer, got {N}")
    if not (0 < stop_frac < 1 and 0 < pupil_frac < 0.5 and spot_frac > 0):
        raise ValueError(
            f"need 0 < stop_frac < 1, 0 < pupil_frac < 0.5 and spot_frac > 0; got "
            f"stop_frac={stop_frac}, pupil_frac={pupil_frac}, spot_frac={spot_frac}"
        )
    k = (np.arange(N) - N // 2).astype(np.float64)
    rho = np.hypot(k[:, None], k[None, :]) / (pupil_frac * N)
    pupil = ((rho <= 1.0) & (rho >= stop_frac)).astype(np.float64)
    if edge_px > 0:
        pupil = ndimage.gaussian_filter(pupil, edge_px)
    defocus = np.pi * pupil_frac * spot_frac * N
    field = pupil * np.exp(1j * defocus * rho**2)
    probe = sp_fft.fftshift(sp_fft.ifft2(sp_fft.ifftshift(field)))
    return (probe / np.abs(probe).max()).astype(np.complex64)


def _unit_field(shape: tuple[int, int], corr_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to ``[0, 1]`` (float64)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), corr_px, mode="wrap")
    f -= f.min()
    peak = f.max()
    return f / peak if peak > 0 else f


def _shapes(shape: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random ellipses, bars and rings of random levels in ``[0.3, 1]`` on 0, later ones
    on top (sharp edges: the inside test is exact, then a 0.6 px blur)."""
    h, w = shape
    size = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros(shape)
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(size / 30, size / 8, size=2)
        th = rng.uniform(0, np.pi)
        kind = int(rng.integers(3))
        u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
        v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
        if kind == 0:
            inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        elif kind == 1:
            inside = (np.abs(u) <= a) & (np.abs(v) <= 0.6 * b)
        else:
            r = np.hypot(u, v) / a
            inside = (r <= 1) & (r >= 0.6)
        out = np.where(inside, rng.uniform(0.3, 1.0), out)
    return ndimage.gaussian_filter(out, 0.6)


def realistic_object(
    size: int | tuple[int, int],
    seed: int | None = None,
    amp_range: tuple[float, float] = (0.1, 1.0),
    phase_span: float = 4.5,
) -> np.ndarray:
    """A test object with amplitude *and* phase structure at several scales.

    Both maps mix smooth regions (Gaussian random fields, correlation ``size/10`` and
    ``size/7``), sharp-edged features (random ellipses, bars and rings, shared by amplitude and
    phase as a thickness would be) and fine textures (correlation 1.2–1.5 px, stronger in some
    regions in amplitude and in the others in phase). The amplitude spans ``amp_range``
    (transmission: 1 is open), the phase spans ``phase_span`` radians centred on 0. A flat
    object scores amplitude and phase SSIM ≤ 0.45 against it (``specs/simulation.md``).
    Returns ``(H, W) complex64``.
    """
    shape = _shape(size)
    lo, hi = (float(v) for v in amp_range)
    if not (0 <= lo < hi) or not 0 < phase_span < 2 * np.pi:
        raise ValueError(
            f"need 0 <= amp_range[0] < amp_range[1] and 0 < phase_span < 2π; got "
            f"amp_range={amp_range}, phase_span={phase_span}"
        )
    rng = np.random.default_rng(seed)
    side = min(shape)
    features = _shapes(shape, max(6, shape[0] * shape[1] // 1500), rng)
    tex_where = ndimage.gaussian_filter(
        (_unit_field(shape, side / 14, rng) > 0.6).astype(np.float64), 1.0
    )
    tex_w = 0.5 + 0.5 * tex_where
    t_amp = (
        0.3 * _unit_field(shape, side / 10, rng)
        + 0.4 * features
        + 0.5 * _unit_field(shape, 1.2, rng) * tex_w
    )
    t_phase = (
        0.35 * _unit_field(shape, side / 7, rng)
        + 0.35 * features
        + 0.6 * _unit_field(shape, 1.5, rng) * (1.5 - tex_w)
    )
    t_amp = (t_amp - t_amp.min()) / np.ptp(t_amp)
    t_phase = (t_phase - t_phase.min()) / np.ptp(t_phase)
    amp = hi - (hi - lo) * t_amp
    phase = phase_span * (t_phase - 0.5)
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def _position_limits(object_shape: tuple[int, int], N: int) -> tuple[float, float, float, float]:
    """``(xmin, xmax, ymin, ymax)`` such that a bilinear N×N patch lies inside the object."""
    h, w = object_shape
    lo = N / 2
    xmax, ymax = w - N / 2 - 1, h - N / 2 - 1
    if xmax < lo or ymax < lo:
        raise ValueError(
            f"object {object_shape} is too small for patches of N = {N} "
            f"(needs at least {N + 1} pixels per side)"
        )
    return lo, xmax, lo, ymax


def patch_inside(positions: np.ndarray, object_shape: tuple[int, int], N: int) -> np.ndarray:
    """(M,) bool: the bilinear N×N patch at each ``(x, y)`` uses only pixels inside the object."""
    p = np.asarray(positions, dtype=np.float64)
    h, w = object_shape
    x0 = p[:, 0] - N / 2
    y0 = p[:, 1] - N / 2
    return (x0 >= 0) & (y0 >= 0) & (np.ceil(x0) + N - 1 <= w - 1) & (np.ceil(y0) + N - 1 <= h - 1)


def random_scan(
    n: int, object_shape: int | tuple[int, int], N: int, seed: int | None = None
) -> np.ndarray:
    """``n`` uniform random positions ``(M, 2) float64 (x, y)`` keeping every patch inside."""
    xmin, xmax, ymin, ymax = _position_limits(_shape(object_shape), N)
    rng = np.random.default_rng(seed)
    return rng.uniform((xmin, ymin), (xmax, ymax), size=(int(n), 2))


def raster_scan(
    object_shape: int | tuple[int, int], N: int, step: float | None = None
) -> np.ndarray:
    """Row-major raster ``(M, 2) float64 (x, y)`` with spacing ``step`` px (default ``N/4``),
    starting at ``(N/2, N/2)``, keeping every patch inside the object."""
    shape = _shape(object_shape)
    step = N / 4 if step is None else float(step)
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    h, w = shape
    xs = np.arange(N / 2, w - N / 2 + 1e-9, step)
    ys = np.arange(N / 2, h - N / 2 + 1e-9, step)
    gx, gy = np.meshgrid(xs, ys)
    pos = np.stack([gx.ravel(), gy.ravel()], axis=1)
    pos = pos[patch_inside(pos, shape, N)]
    if len(pos) == 0:
        raise ValueError(f"object {shape} is too small for patches of N = {N}")
    return pos


def _workers(workers: int | None) -> int:
    if workers is None:
        return max(1, min(4, os.cpu_count() or 1))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return int(workers)


def simulate(
    obj: np.ndarray,
    probe: np.ndarray,
    positions: np.ndarray,
    nphotons: float,
    seed: int | None = None,
    *,
    workers: int | None = None,
) -> ScanData:
    """Simulate a ptychographic scan with Poisson noise (``specs/simulation.md``).

    Exit waves ``psi_m = P · O_{p_m}`` (patches by :func:`physics.extract_patches`), intensities
    ``|fftshift fft2 psi_m|² / N²`` scaled by one factor so that the *expected* total count per
    pattern, averaged over patterns, equals ``nphotons``; counts ~ Poisson; stored as amplitudes
    ``sqrt(counts)``.

    Randomness: ``numpy.random.default_rng(seed).spawn(k)`` gives one generator per chunk of
    256 patterns, so the result depends only on ``seed`` and the inputs, never on ``workers``
    (chunks run in a thread pool; NumPy's Poisson sampler and the FFT release the GIL).

    Parameters
    ----------
    obj : (H, W) complex object (defines the frame)
    probe : (N, N) complex probe (used as given; the scale is set by ``nphotons``)
    positions : (M, 2) float ``(x, y)`` object pixels
    nphotons : mean photon count per pattern (> 0)
    seed : seed of the noise generator
    workers : threads (default ``min(4, cpu_count)``)

    Returns
    -------
    ScanData with ``diffraction (M, N, N) float32`` photon-unit amplitude, ``Y`` the true patches
    (complex64), ``object = obj``, ``probe = probe``, ``metadata`` holding ``nphotons``, ``seed``,
    the probe-to-photon ``intensity_factor`` and the creator.
    """
    obj = np.asarray(obj).astype(np.complex64)
    probe = np.asarray(probe).astype(np.complex64)
    pos = np.asarray(positions, dtype=np.float64)
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
        raise ValueError(f"probe must be (N, N), got {probe.shape}")
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0:
        raise ValueError(f"positions must be (M, 2) with M >= 1, got {pos.shape}")
    if not nphotons > 0:
        raise ValueError(f"nphotons must be > 0, got {nphotons}")
    n = probe.shape[0]
    m = pos.shape[0]
    outside = ~patch_inside(pos, obj.shape, n)
    if outside.any():
        logger.warning("%d of %d patches extend beyond the object (zeros there)", outside.sum(), m)

    starts = range(0, m, _SIM_CHUNK)
    y = np.empty((m, n, n), dtype=np.complex64)
    diff = np.empty((m, n, n), dtype=np.float32)
    p2 = (np.abs(probe) ** 2).astype(np.float32)

    def cut(s: int) -> float:
        sl = slice(s, s + _SIM_CHUNK)
        y[sl] = physics.extract_patches(obj, pos[sl], n)
        # Parseval: exit-wave energy == noise-free pattern energy
        return float(np.sum(np.square(np.abs(y[sl])) * p2, dtype=np.float64))

    rngs = np.random.default_rng(seed).spawn(len(starts))
    with ThreadPoolExecutor(_workers(workers)) as pool:
        mean_energy = sum(pool.map(cut, starts)) / m
        if mean_energy <= 0:
            raise ValueError("the exit waves carry no energy (probe or object is zero)")
        factor = float(nphotons) / mean_energy
        amp_scale = np.float32(math.sqrt(factor))

        def measure(k: int) -> None:
            sl = slice(starts[k], starts[k] + _SIM_CHUNK)
            a = physics.forward_model(y[sl], probe)
            a *= amp_scale
            counts = rngs[k].poisson(np.square(a, dtype=np.float64))
            np.sqrt(counts, out=diff[sl], dtype=np.float32, casting="unsafe")

        list(pool.map(measure, range(len(starts))))
    meta = {
        "nphotons": float(nphotons),
        "seed": seed,
        "intensity_factor": factor,
        "units": "diffraction: sqrt(photon counts); positions: object pixels",
        "creator": "ptycho_core.simulation",
        "creator_version": __version__,
    }
    logger.info("simulated %d patterns N=%d, nphotons=%.3g", m, n, nphotons)
    return ScanData(
        diffraction=diff,
        xcoords=pos[:, 0].copy(),
        ycoords=pos[:, 1].copy(),
        probe=probe,
        object=obj,
        Y=y,
        metadata=meta,
    )


def simulate_scan(
    N: int = 64,
    n_positions: int = 512,
    nphotons: float = 1e9,
    seed: int = 0,
    object_size: int | tuple[int, int] | None = None,
    scan: str = "random",
    defocus: float = 0.0,
    workers: int | None = None,
    *,
    scenario: str = "realistic",
    probe: np.ndarray | None = None,
) -> ScanData:
    """One-call scan: a built-in scene (``scenario``), random or raster positions.

    ``scenario='realistic'`` (default): :func:`realistic_object` and :func:`beamline_probe`;
    ``'procedural'``: :func:`procedural_object` and :func:`default_probe` (with ``defocus``).
    ``probe`` (``(N, N)`` complex) replaces the scenario's probe, e.g. one read from a file.
    ``object_size`` defaults to ``max(2N, N + 8·ceil(sqrt(n_positions)))`` (even), which gives
    a mean spacing of ~8 px between random positions. ``scan='raster'`` picks the step that
    gives about ``n_positions`` positions. Returns :class:`ScanData` (see :func:`simulate`).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    if object_size is None:
        side = max(2 * N, N + 8 * math.ceil(math.sqrt(n_positions)))
        object_size = side + side % 2
    shape = _shape(object_size)
    ss = np.random.SeedSequence(seed)
    s_obj, s_scan, s_noise = (int(c.generate_state(1)[0]) for c in ss.spawn(3))
    if scenario == "realistic":
        obj = realistic_object(shape, s_obj)
        default = beamline_probe(N)
    else:
        obj = procedural_object(shape, s_obj)
        default = default_probe(N, defocus=defocus)
    if probe is None:
        probe = default
    else:
        probe = np.asarray(probe)
        if probe.shape != (N, N):
            raise ValueError(f"probe must have shape ({N}, {N}) for N = {N}, got {probe.shape}")
    if scan == "random":
        pos = random_scan(n_positions, shape, N, s_scan)
    elif scan == "raster":
        xmin, xmax, ymin, ymax = _position_limits(shape, N)
        span = math.sqrt(max(xmax - xmin, 1) * max(ymax - ymin, 1))
        step = span / max(math.sqrt(n_positions) - 1, 1)
        pos = raster_scan(shape, N, step)
    else:
        raise ValueError(f"scan must be 'random' or 'raster', got {scan!r}")
    out = simulate(obj, probe, pos, nphotons, s_noise, workers=workers)
    out.metadata.update({"simulate_scan_seed": seed, "scan": scan, "scenario": scenario})
    return out


def held_out_halves(scan: ScanData) -> tuple[ScanData, ScanData]:
    """The held-out protocol of the quality benchmark and check (``specs/simulation.md``):
    positions with ``x`` below the median train, the others (the right half of the field of
    view) are reconstructed. Returns ``(train, held_out)``."""
    x = scan.positions[:, 0]
    mid = float(np.median(x))
    return scan.subset(np.flatnonzero(x < mid)), scan.subset(np.flatnonzero(x >= mid))
