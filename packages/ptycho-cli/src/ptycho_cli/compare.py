"""Put a reconstruction on the ground truth's grid and score it (``ptycho evaluate``, demo).

A reconstruction canvas is in the object frame with its pixel ``(0, 0)`` at ``origin = (x0, y0)``
object pixels (``specs/training.md``). It is embedded in an array of the truth's shape; the scored
region is where the canvas has coverage. Scoring itself is :func:`ptycho_core.metrics.evaluate`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptycho_core.errors import DataContractError

__all__ = ["Comparison", "embed_in_truth_frame", "compare_to_truth"]

logger = logging.getLogger(__name__)


def embed_in_truth_frame(
    recon: np.ndarray,
    coverage: np.ndarray,
    origin: Any,
    truth_shape: tuple[int, int],
    names: tuple[str, str] = ("the reconstruction", "the ground truth"),
) -> tuple[np.ndarray, np.ndarray]:
    """``(recon_on_truth_grid complex (H,W), covered bool (H,W))``.

    The origin is rounded to whole pixels (stitching canvases start on whole pixels; a
    fractional origin is logged). Parts of the canvas outside the truth are dropped. A canvas
    with no covered pixel on the truth is a :class:`~ptycho_core.errors.DataContractError`
    naming ``names`` (recon, truth).
    """
    h, w = truth_shape
    if np.shape(recon) != np.shape(coverage) or np.ndim(recon) != 2:
        raise DataContractError(
            f"{names[0]}: keys 'object' {np.shape(recon)} and 'coverage' {np.shape(coverage)}: "
            "expected two 2-D arrays of one shape"
        )
    xy = np.asarray(origin, np.float64).reshape(-1)
    if xy.size != 2 or not np.isfinite(xy).all():
        raise DataContractError(f"{names[0]}: key 'origin': expected finite (x0, y0), got {xy}")
    x0, y0 = float(xy[0]), float(xy[1])
    ix, iy = int(round(x0)), int(round(y0))
    if abs(ix - x0) > 1e-6 or abs(iy - y0) > 1e-6:
        logger.warning(
            "reconstruction origin (%g, %g) is not on whole pixels; rounded to (%d, %d)",
            x0,
            y0,
            ix,
            iy,
        )
    out = np.zeros((h, w), np.complex64)
    cov = np.zeros((h, w), np.float32)
    rh, rw = recon.shape
    # overlap of [iy, iy+rh) x [ix, ix+rw) with [0, h) x [0, w)
    ty0, ty1 = max(iy, 0), min(iy + rh, h)
    tx0, tx1 = max(ix, 0), min(ix + rw, w)
    if ty1 <= ty0 or tx1 <= tx0:
        raise DataContractError(
            f"{names[0]}: the reconstruction (origin ({x0:g}, {y0:g}), shape {recon.shape}) "
            f"does not overlap the ground-truth object of {names[1]} (shape {truth_shape})"
        )
    out[ty0:ty1, tx0:tx1] = recon[ty0 - iy : ty1 - iy, tx0 - ix : tx1 - ix]
    cov[ty0:ty1, tx0:tx1] = coverage[ty0 - iy : ty1 - iy, tx0 - ix : tx1 - ix]
    covered = cov > 0
    if not covered.any():
        raise DataContractError(
            f"{names[0]}: key 'coverage': no reconstructed pixel lies on the ground-truth "
            f"object of {names[1]} (shape {truth_shape}); nothing to score"
        )
    return out, covered


@dataclass
class Comparison:
    """A scored reconstruction on the truth grid, cropped to the scored region's bounding box.

    ``truth`` and ``recon`` (complex, same shape; ``recon`` amplitude-scaled and phase-aligned
    for display), ``mask`` (bool, scored pixels), ``origin`` (x0, y0) of the crop in object
    pixels, and ``metrics`` (the :func:`ptycho_core.metrics.evaluate` dict).
    """

    truth: np.ndarray
    recon: np.ndarray
    mask: np.ndarray
    origin: tuple[float, float]
    metrics: dict[str, Any]


def _display_aligned(
    recon: np.ndarray, truth: np.ndarray, mask: np.ndarray, remove_plane: bool
) -> np.ndarray:
    """Recon with amplitude scaled to the truth's mean and the best constant (or plane) phase
    removed, as the metrics do (for display only)."""
    from ptycho_core.metrics import align_phase, scale_amplitude

    amp = scale_amplitude(np.abs(recon), np.abs(truth), mask)
    phase = align_phase(np.angle(recon), np.angle(truth), mask, remove_plane)
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def compare_to_truth(
    recon: np.ndarray,
    coverage: np.ndarray,
    origin: Any,
    truth: np.ndarray,
    *,
    register: bool = False,
    remove_plane: bool = False,
    margin: int = 0,
    names: tuple[str, str] = ("the reconstruction", "the ground truth"),
) -> Comparison:
    """Score ``recon`` against ``truth`` on the covered region (optionally eroded by ``margin``
    pixels >= 0, to leave out the poorly constrained rim; when fewer than 64 pixels would remain
    the margin is not applied and a warning is logged). ``names`` (recon, truth) label errors."""
    from ptycho_core.metrics import evaluate

    if isinstance(margin, bool) or int(margin) != margin or margin < 0:
        raise ValueError(f"margin = {margin!r} is invalid; allowed: an integer >= 0 (pixels)")
    truth = np.asarray(truth)
    full, covered = embed_in_truth_frame(
        np.asarray(recon), np.asarray(coverage), origin, truth.shape, names
    )
    if margin > 0:
        from scipy.ndimage import binary_erosion

        eroded = binary_erosion(covered, iterations=int(margin))
        if eroded.sum() >= 64:
            covered = eroded
        else:
            logger.warning(
                "a margin of %d px leaves %d of %d covered pixels; scoring without the margin",
                margin,
                int(eroded.sum()),
                int(covered.sum()),
            )
    rows = np.flatnonzero(covered.any(axis=1))
    cols = np.flatnonzero(covered.any(axis=0))
    sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    t, r, k = truth[sl], full[sl], covered[sl]
    metrics = evaluate(r, t, mask=k, register=register, remove_plane=remove_plane)
    shown = _display_aligned(r, t, k, remove_plane)
    return Comparison(
        truth=t, recon=shown, mask=k, origin=(float(cols[0]), float(rows[0])), metrics=dict(metrics)
    )
