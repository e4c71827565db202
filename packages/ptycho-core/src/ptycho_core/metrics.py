"""Reconstruction quality against a ground-truth object (``specs/data-contracts.md``).

Conventions: ``recon`` and ``truth`` are ``(H, W)`` complex arrays on the same grid (object
frame). Amplitudes are compared after scaling the reconstruction to the truth's mean; phases after
removing the best constant (optionally plane) offset, with the residual wrapped to ``(−π, π]``.
All statistics use the pixels of ``mask`` (default: every pixel).

scikit-image is imported lazily, only by :func:`ssim` and :func:`register_images` (extra
``ptycho-core[metrics]``), so importing this module is cheap.

Unusable inputs — images of different shapes, a mask that selects no pixel, no finite pixel to
score — raise :class:`~ptycho_core.errors.DataContractError` (a ``ValueError``), never an
``IndexError`` from an empty selection.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from ptycho_core.errors import DataContractError

__all__ = [
    "scale_amplitude",
    "align_phase",
    "wrap_phase",
    "ssim",
    "psnr",
    "psnr255",
    "mae",
    "frc",
    "largest_rectangle",
    "register_images",
    "evaluate",
]

logger = logging.getLogger(__name__)


def _mask(shape: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    m = np.asarray(mask, dtype=bool)
    if m.shape != shape:
        raise DataContractError(f"mask shape {m.shape} differs from image shape {shape}")
    if not m.any():
        raise DataContractError("mask selects no pixels (e.g. a coverage that is zero everywhere)")
    return m


def wrap_phase(phase: np.ndarray) -> np.ndarray:
    """Wrap radians to ``(−π, π]``."""
    return np.pi - np.mod(np.pi - np.asarray(phase, dtype=np.float64), 2 * np.pi)


def scale_amplitude(
    amp: np.ndarray, truth_amp: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """``amp · mean(truth_amp) / mean(amp)`` over ``mask``: float64, same shape (unitless)."""
    a = np.asarray(amp, dtype=np.float64)
    m = _mask(a.shape, mask)
    mean = a[m].mean()
    if mean == 0:
        logger.warning("reconstruction amplitude is zero on the mask; not rescaled")
        return a
    return a * (np.asarray(truth_amp, dtype=np.float64)[m].mean() / mean)


def align_phase(
    phase: np.ndarray,
    truth_phase: np.ndarray,
    mask: np.ndarray | None = None,
    remove_plane: bool = False,
) -> np.ndarray:
    """Remove the best constant (and optionally plane) phase offset relative to the truth.

    Returns ``truth + wrap(phase − truth − offset)`` (float64 radians, ``(H, W)``): the residual is
    wrapped, so the result lies within π of the truth pixel by pixel and a 2π jump never counts
    as an error. The constant is the circular mean of the difference; the plane's slopes come from
    the circular mean of neighbouring-pixel differences (robust to wrapping), then refined by least
    squares on the wrapped residual.
    """
    p = np.asarray(phase, dtype=np.float64)
    t = np.asarray(truth_phase, dtype=np.float64)
    m = _mask(p.shape, mask)
    d = wrap_phase(p - t)
    offset = np.zeros_like(d)
    grid = np.indices(d.shape, dtype=np.float64)  # (2, H, W): pixel row and column indices
    rows: np.ndarray = grid[0]
    cols: np.ndarray = grid[1]
    if remove_plane:
        z = np.exp(1j * d)
        gx = np.angle(np.sum((z[:, 1:] * np.conj(z[:, :-1]))[m[:, 1:] & m[:, :-1]]))
        gy = np.angle(np.sum((z[1:, :] * np.conj(z[:-1, :]))[m[1:, :] & m[:-1, :]]))
        offset = gx * cols + gy * rows
    offset = offset + np.angle(np.sum(np.exp(1j * (d - offset))[m]))
    if remove_plane:
        a = np.stack([cols[m], rows[m], np.ones(int(m.sum()))], axis=1)
        coef, *_ = np.linalg.lstsq(a, wrap_phase(d - offset)[m], rcond=None)
        offset = offset + coef[0] * cols + coef[1] * rows + coef[2]
    return t + wrap_phase(d - offset)


def _as_pair(image: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(image, dtype=np.float64)
    b = np.asarray(truth, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise DataContractError(
            f"expected two 2-D images of one shape, got {a.shape} and {b.shape}"
        )
    return a, b


def _range(truth: np.ndarray, m: np.ndarray) -> float:
    r = float(truth[m].max() - truth[m].min())
    return r if r > 0 else 1.0


def ssim(
    image: np.ndarray,
    truth: np.ndarray,
    data_range: float | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Structural similarity (scikit-image), averaged over ``mask``.

    ``data_range`` defaults to the truth's range on the mask (1 when flat). The window is 7 or
    the largest odd size that fits.
    """
    try:
        from skimage.metrics import structural_similarity
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ssim needs scikit-image: pip install 'ptycho-core[metrics]'") from exc
    a, b = _as_pair(image, truth)
    m = _mask(a.shape, mask)
    win = min(7, min(a.shape) - (1 - min(a.shape) % 2))
    if win < 3:
        raise DataContractError(
            f"images of shape {a.shape} are too small for SSIM (at least 3×3 pixels needed)"
        )
    dr = _range(b, m) if data_range is None else float(data_range)
    _, smap = structural_similarity(b, a, data_range=dr, win_size=win, full=True)
    return float(np.mean(smap[m]))


def psnr(
    image: np.ndarray,
    truth: np.ndarray,
    data_range: float | None = None,
    mask: np.ndarray | None = None,
) -> float:
    """Standard PSNR in dB: ``10·log10(data_range² / MSE)``; ``data_range`` defaults to the
    truth's range on the mask. ``inf`` for identical images."""
    a, b = _as_pair(image, truth)
    m = _mask(a.shape, mask)
    dr = _range(b, m) if data_range is None else float(data_range)
    mse = float(np.mean((a[m] - b[m]) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(dr * dr / mse)


def psnr255(image: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The reference implementation's PSNR (OpenCV ``cv2.PSNR`` default): peak fixed at 255 on
    the raw values, ``20·log10(255 / RMSE)``. Only for comparison with published numbers; it is
    not scale-invariant."""
    return psnr(image, truth, data_range=255.0, mask=mask)


def mae(image: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute error over ``mask`` (units of the inputs)."""
    a, b = _as_pair(image, truth)
    m = _mask(a.shape, mask)
    return float(np.mean(np.abs(a[m] - b[m])))


def _crossing(freqs: np.ndarray, curve: np.ndarray, threshold: float) -> float | None:
    if curve[0] < threshold:  # below from the first ring (e.g. an image without signal)
        return float(freqs[0])
    below = np.nonzero(curve[1:] < threshold)[0]
    if below.size == 0:
        return None
    k = int(below[0]) + 1
    c0, c1 = float(curve[k - 1]), float(curve[k])
    frac = 0.0 if c0 == c1 else (c0 - threshold) / (c0 - c1)
    return float(freqs[k - 1] + frac * (freqs[k] - freqs[k - 1]))


def largest_rectangle(mask: np.ndarray) -> tuple[slice, slice]:
    """The largest axis-aligned rectangle of ``True`` pixels in a 2-D ``mask`` (by area; the
    first found on ties), as ``(rows, cols)`` slices; empty slices when no pixel is set.

    Row by row, ``heights[j]`` counts the consecutive set pixels ending at this row in column
    ``j``; the largest rectangle under that histogram is found with a monotone stack, O(H·W).
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 2:
        raise DataContractError(f"expected a 2-D mask, got shape {m.shape}")
    h, w = m.shape
    heights = np.zeros(w + 1, np.int64)  # sentinel column of height 0 flushes the stack
    best, box = 0, (slice(0, 0), slice(0, 0))
    for i in range(h):
        heights[:w] = np.where(m[i], heights[:w] + 1, 0)
        stack: list[int] = []
        for j in range(w + 1):
            while stack and heights[stack[-1]] >= heights[j]:
                top = stack.pop()
                left = stack[-1] + 1 if stack else 0
                area = int(heights[top]) * (j - left)
                if area > best:
                    best = area
                    box = (slice(i - int(heights[top]) + 1, i + 1), slice(left, j))
            stack.append(j)
    return box


def frc(image: np.ndarray, truth: np.ndarray, apodize: bool = True) -> dict[str, Any]:
    """Fourier ring correlation of two ``(H, W)`` images (real or complex).

    Rings are one frequency sample wide (``1/min(H, W)`` cycles/pixel) up to Nyquist (0.5).
    ``apodize`` multiplies both images by a separable Hann window first (reduces edge effects).
    Returns ``freqs`` (cycles/pixel), ``curve`` (lists of floats) and ``crossing_0p5`` /
    ``crossing_1_7``: the first frequency (linearly interpolated) where the curve falls below
    0.5 / (1/7), or ``None`` when it never does.
    """
    a = np.asarray(image)
    b = np.asarray(truth)
    if a.shape != b.shape or a.ndim != 2:
        raise DataContractError(
            f"expected two 2-D images of one shape, got {a.shape} and {b.shape}"
        )
    h, w = a.shape
    if apodize:
        win = np.outer(np.hanning(h), np.hanning(w))
        a, b = a * win, b * win
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    n = min(h, w)
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")
    ring = np.rint(np.hypot(fx, fy) * n).astype(np.int64).ravel()
    nrings = n // 2 + 1
    keep = ring < nrings
    ring = ring[keep]
    cross = np.bincount(ring, (fa * np.conj(fb)).real.ravel()[keep], minlength=nrings)
    pa = np.bincount(ring, (np.abs(fa) ** 2).ravel()[keep], minlength=nrings)
    pb = np.bincount(ring, (np.abs(fb) ** 2).ravel()[keep], minlength=nrings)
    denom = np.sqrt(pa * pb)
    curve = np.divide(cross, denom, out=np.zeros(nrings), where=denom > 0)
    freqs = np.arange(nrings) / n
    return {
        "freqs": freqs.tolist(),
        "curve": curve.tolist(),
        "crossing_0p5": _crossing(freqs, curve, 0.5),
        "crossing_1_7": _crossing(freqs, curve, 1 / 7),
    }


def _phase_correlation_shift(img: np.ndarray, ref: np.ndarray, upsample_factor: int) -> np.ndarray:
    """``(dy, dx)`` that moves ``img`` onto ``ref`` (phase cross-correlation of the two as
    given, Hann-windowed); zero when ``img`` carries no signal (a constant)."""
    try:
        from skimage.registration import phase_cross_correlation
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            "register_images needs scikit-image: pip install 'ptycho-core[metrics]'"
        ) from exc
    if not np.any(np.abs(img) > 0) or not np.any(np.abs(ref) > 0):
        return np.zeros(2)
    win = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    shift, _, _ = phase_cross_correlation(
        ref * win, img * win, upsample_factor=upsample_factor, normalization=None
    )
    return np.asarray(shift, dtype=np.float64)


def _shifted(img: np.ndarray, shift: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    if np.iscomplexobj(img):
        return ndimage.shift(img.real, shift, order=3, mode="nearest") + 1j * ndimage.shift(
            img.imag, shift, order=3, mode="nearest"
        )
    return ndimage.shift(img.astype(np.float64), shift, order=3, mode="nearest")


def register_images(
    image: np.ndarray, truth: np.ndarray, upsample_factor: int = 20
) -> tuple[np.ndarray, tuple[float, float]]:
    """Sub-pixel registration of ``image`` onto ``truth`` (phase cross-correlation).

    Returns the shifted image (same dtype kind, cubic interpolation, edges repeated) and the
    applied shift ``(dx, dy)`` in pixels (content moved by ``+d``).
    """
    img = np.asarray(image)
    ref = np.asarray(truth)
    if img.shape != ref.shape or img.ndim != 2:
        raise DataContractError(
            f"expected two 2-D images of one shape, got {img.shape} and {ref.shape}"
        )
    # Mean removed for the estimate only: the DC term otherwise dominates the cross-correlation
    # of non-periodic objects (the Hann window takes care of the image edges).
    shift = _phase_correlation_shift(img - img.mean(), ref - ref.mean(), upsample_factor)
    return _shifted(img, shift), (float(shift[1]), float(shift[0]))


def _register_in_mask(
    recon: np.ndarray, truth: np.ndarray, m: np.ndarray
) -> tuple[np.ndarray, tuple[float, float], np.ndarray]:
    """Register ``recon`` onto ``truth`` using the scored pixels ``m`` only; returns the moved
    recon, the shift ``(dx, dy)`` and the pixels still scored.

    Both images enter the estimate with their mean over ``m`` removed and zero elsewhere, so
    the mask's own edge (a step of the mean value, common to both) does not pull the estimate;
    a constant reconstruction has nothing to register and stays where it is. Before the move,
    unscored pixels take the value of the nearest scored one (so the cubic interpolation does
    not pull in zeros); after it, pixels whose value came from outside ``m`` are not scored.
    """
    from scipy import ndimage

    img = np.where(m, recon - recon[m].mean(), 0)
    ref = np.where(m, truth - truth[m].mean(), 0)
    shift = _phase_correlation_shift(img, ref, 20)
    if not shift.any():
        return recon, (0.0, 0.0), m
    nearest = ndimage.distance_transform_edt(~m, return_distances=False, return_indices=True)
    filled = recon[tuple(nearest)]
    moved_mask = ndimage.shift(m.astype(np.float64), shift, order=1, mode="constant") > 0.999
    kept = m & moved_mask
    if not kept.any():
        raise DataContractError(
            f"registration moved the reconstruction by ({shift[1]:.1f}, {shift[0]:.1f}) px, "
            "off every scored pixel; score it without registration"
        )
    return _shifted(filled, shift), (float(shift[1]), float(shift[0])), kept


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


#: FRC needs a few rings: a scored region whose largest inner rectangle is thinner gets none.
FRC_MIN_SIDE = 16
_FRC_RECT_GRID = 512


def _frc_in_mask(image: np.ndarray, truth: np.ndarray, m: np.ndarray) -> dict[str, Any]:
    """FRC on the largest rectangle inside the scored pixels, its means removed.

    Zeroing the pixels outside an irregular mask would give both images the mask's edges,
    which correlate at every frequency (a flat object would "resolve" up to Nyquist), so only a
    fully scored rectangle is used; ``region`` gives it as ``[row0, row1, col0, col1]`` in the
    scored bounding box. Thinner than :data:`FRC_MIN_SIDE` → empty curve, crossings ``None``.
    """
    f = -(-max(m.shape) // _FRC_RECT_GRID)  # exact up to 512 px; coarser blocks above that
    if f > 1:  # a block counts when all its pixels are scored, so the rectangle stays inside
        h, w = -(-m.shape[0] // f) * f, -(-m.shape[1] // f) * f
        padded = np.zeros((h, w), bool)
        padded[: m.shape[0], : m.shape[1]] = m
        blocks = np.asarray(padded.reshape(h // f, f, w // f, f).all(axis=(1, 3)))
        r, c = largest_rectangle(blocks)
        rows, cols = slice(r.start * f, r.stop * f), slice(c.start * f, c.stop * f)
    else:
        rows, cols = largest_rectangle(m)
    region = [rows.start, rows.stop, cols.start, cols.stop]
    if min(rows.stop - rows.start, cols.stop - cols.start) < FRC_MIN_SIDE:
        return {
            "freqs": [],
            "curve": [],
            "crossing_0p5": None,
            "crossing_1_7": None,
            "region": region,
        }
    a, b = image[rows, cols], truth[rows, cols]
    out = frc(a - a.mean(), b - b.mean())
    out["region"] = region
    return out


def evaluate(
    recon: np.ndarray,
    truth: np.ndarray,
    mask: np.ndarray | None = None,
    register: bool = False,
    remove_plane: bool = False,
) -> dict[str, Any]:
    """Score a complex reconstruction against the complex truth, both ``(H, W)`` on one grid.

    ``mask`` (bool ``(H, W)``) selects the covered region (e.g. ``StitchResult.covered``);
    statistics use its pixels, SSIM its bounding box (outside-mask pixels set to the truth, so
    they do not count as errors), FRC the largest rectangle inside it (:func:`_frc_in_mask`).
    Returns a JSON-safe dict: ``ssim_amp``, ``ssim_phase``, ``psnr_amp``, ``psnr_phase``
    (standard, truth range), ``psnr255_amp``, ``psnr255_phase`` (reference variant),
    ``mae_amp``, ``mae_phase`` (radians), ``frc`` (of the aligned complex objects),
    ``shift_xy`` (registration shift or ``None``), ``n_pixels``, ``remove_plane``.
    Infinite PSNRs (identical images) are reported as ``None``.
    """
    r = np.asarray(recon)
    t = np.asarray(truth)
    if r.shape != t.shape or r.ndim != 2 or r.size == 0:
        raise DataContractError(
            f"recon and truth must be non-empty 2-D arrays of one shape, got {r.shape} "
            f"and {t.shape}"
        )
    m = _mask(t.shape, mask) & np.isfinite(r) & np.isfinite(t)
    if not m.any():
        raise DataContractError(
            "no pixel to evaluate: the mask selects only NaN or infinite recon/truth values"
        )
    r = np.where(m, r, 0)
    shift_xy = None
    if register:
        r, shift_xy, m = _register_in_mask(r, t, m)
    rows, cols = np.nonzero(m)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    r, t, m = r[box], t[box], m[box]

    t_amp, t_phase = np.abs(t).astype(np.float64), np.angle(t).astype(np.float64)
    amp = np.where(m, scale_amplitude(np.abs(r), t_amp, m), t_amp)
    phase = np.where(m, align_phase(np.angle(r), t_phase, m, remove_plane), t_phase)

    def to_unit(p: np.ndarray) -> np.ndarray:  # phase → [0, 1]
        return (p + np.pi) / (2 * np.pi)

    aligned = amp * np.exp(1j * phase)
    truth_c = t_amp * np.exp(1j * t_phase)
    result: dict[str, Any] = {
        "ssim_amp": ssim(amp, t_amp, mask=m),
        "ssim_phase": ssim(to_unit(phase), to_unit(t_phase), data_range=1.0, mask=m),
        "psnr_amp": _finite_or_none(psnr(amp, t_amp, mask=m)),
        "psnr_phase": _finite_or_none(psnr(phase, t_phase, mask=m)),
        "psnr255_amp": _finite_or_none(psnr255(amp, t_amp, mask=m)),
        "psnr255_phase": _finite_or_none(psnr255(phase, t_phase, mask=m)),
        "mae_amp": mae(amp, t_amp, mask=m),
        "mae_phase": mae(phase, t_phase, mask=m),
        "frc": _frc_in_mask(aligned, truth_c, m),
        "shift_xy": None if shift_xy is None else [shift_xy[0], shift_xy[1]],
        "n_pixels": int(m.sum()),
        "remove_plane": bool(remove_plane),
    }
    return result
