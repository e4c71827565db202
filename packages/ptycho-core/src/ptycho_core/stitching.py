"""Stitching object patches into one object in the object frame (``specs/training.md``).

The central ``crop × crop`` square of each ``N × N`` patch at scan position ``p = (x, y)`` is
placed on the canvas with sub-pixel bilinear weights: crop pixel ``(a, b)`` sits at object
coordinates ``(p_y − crop/2 + a, p_x − crop/2 + b)``, the same convention as
:func:`ptycho_core.physics.extract_patches` with patch size ``crop``. Values and placement
weights are scatter-added (the adjoint of extraction), and the object is their ratio where the
summed weight is positive; uncovered pixels are 0 and ``coverage`` reports the summed weights.
Because every canvas value is a weighted average of patch values, nothing is amplified at the
edge of the covered region.

Canvas frame: canvas pixel ``[r, c]`` is object pixel ``[y0 + r, x0 + c]`` where
``origin = (x0, y0)`` (integers, object pixels). With ``object_shape`` the canvas *is* the
object frame (origin ``(0, 0)``), so the result lines up with ``objectGuess``; otherwise the
canvas is the bounding box of what the patches touch.

Memory is bounded by the canvas and one chunk of patches, never by the number of patches.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ptycho_core import physics

__all__ = ["default_stitch_crop", "Stitcher", "StitchResult", "stitch"]

logger = logging.getLogger(__name__)


def default_stitch_crop(N: int) -> int:
    """The even integer nearest ``20·N/64`` (at least 2, at most ``N``); N=64 → 20, N=128 → 40."""
    return int(min(N, max(2, 2 * round(10 * N / 64))))


@dataclass(frozen=True)
class StitchResult:
    """A stitched object.

    Attributes
    ----------
    object : (H, W) complex64, 0 where uncovered
    coverage : (H, W) float32, summed bilinear placement weights (≈ number of crops covering)
    origin : (x0, y0) ints, object-pixel coordinates of canvas pixel ``[0, 0]``
    """

    object: np.ndarray
    coverage: np.ndarray
    origin: tuple[int, int]

    @property
    def amplitude(self) -> np.ndarray:
        """(H, W) float32 ``|object|``."""
        return np.abs(self.object)

    @property
    def phase(self) -> np.ndarray:
        """(H, W) float32 ``angle(object)`` in radians (0 where uncovered)."""
        return np.angle(self.object).astype(np.float32)

    @property
    def covered(self) -> np.ndarray:
        """(H, W) bool, pixels that received any weight."""
        return self.coverage > 0


class Stitcher:
    """Accumulate patches chunk by chunk; :meth:`result` gives the stitched object.

    Parameters
    ----------
    N : patch size (even)
    crop : central square kept from each patch (even, ``0 < crop <= N``; default
        :func:`default_stitch_crop`)
    object_shape : (H, W) of the object frame; the canvas is that frame, origin ``(0, 0)``
    positions : (M, 2) ``(x, y)`` of all patches to come; used (when no ``object_shape``) for
        the bounding-box canvas. One of the two is required.
    """

    def __init__(
        self,
        N: int,
        crop: int | None = None,
        *,
        object_shape: tuple[int, int] | None = None,
        positions: np.ndarray | None = None,
    ) -> None:
        if N <= 0 or N % 2:
            raise ValueError(f"N must be a positive even integer, got {N}")
        crop = default_stitch_crop(N) if crop is None else int(crop)
        if crop <= 0 or crop % 2 or crop > N:
            raise ValueError(f"crop must be an even integer with 0 < crop <= N = {N}, got {crop}")
        self.N, self.crop = int(N), crop
        if object_shape is not None:
            h, w = (int(v) for v in object_shape)
            self.origin = (0, 0)
        elif positions is not None:
            pos = _check_positions(positions)
            if len(pos) == 0:
                raise ValueError("positions is empty: no bounding box for the canvas")
            half = crop / 2
            x0 = math.floor(pos[:, 0].min() - half)
            y0 = math.floor(pos[:, 1].min() - half)
            # bilinear placement touches up to floor(p - crop/2) + crop (inclusive)
            x1 = math.floor(pos[:, 0].max() - half) + crop
            y1 = math.floor(pos[:, 1].max() - half) + crop
            self.origin = (x0, y0)
            h, w = y1 - y0 + 1, x1 - x0 + 1
        else:
            raise ValueError("Stitcher needs object_shape or positions to define the canvas")
        self.shape = (h, w)
        pad = crop + 1
        self._pad = pad
        self._num = np.zeros((h + 2 * pad, w + 2 * pad), dtype=np.complex128)
        self._wt = np.zeros((h + 2 * pad, w + 2 * pad), dtype=np.float64)
        self._ones: np.ndarray | None = None
        self.n_added = 0

    def add(self, patches: np.ndarray, positions: np.ndarray) -> None:
        """Accumulate ``patches (B, N, N)`` complex at ``positions (B, 2)`` ``(x, y)``."""
        patches = np.asarray(patches)
        pos = _check_positions(positions)
        if patches.ndim != 3 or patches.shape[1:] != (self.N, self.N):
            raise ValueError(
                f"patches must have shape (B, {self.N}, {self.N}), got {patches.shape}"
            )
        if patches.shape[0] != pos.shape[0]:
            raise ValueError(f"{patches.shape[0]} patches but {pos.shape[0]} positions")
        b = patches.shape[0]
        if b == 0:
            return
        lo = (self.N - self.crop) // 2
        core = patches[:, lo : lo + self.crop, lo : lo + self.crop]
        if not np.iscomplexobj(core):
            core = core.astype(np.complex64)
        local = pos - np.asarray(self.origin, dtype=np.float64)
        if self._ones is None or self._ones.shape[0] < b:
            self._ones = np.ones((b, self.crop, self.crop), dtype=np.float32)
        physics._scatter(core, local, self._num, self._pad)
        physics._scatter(self._ones[:b], local, self._wt, self._pad)
        self.n_added += b

    @property
    def accumulators(self) -> tuple[np.ndarray, np.ndarray]:
        """The running sums, writable: ``Σ placed values`` (complex128) and ``Σ placed weights``
        (float64), padded canvases of one shape. Stitching is a sum, so stitchers over disjoint
        patch sets combine by adding these (multi-device inference, ``specs/training.md``)."""
        return self._num, self._wt

    def result(self) -> StitchResult:
        """The stitched object: ``Σ placed values / Σ placed weights`` where weights > 0."""
        p = self._pad
        h, w = self.shape
        num = self._num[p : p + h, p : p + w]
        wt = self._wt[p : p + h, p : p + w]
        # weights are sums of products of bilinear fractions: treat round-off as uncovered
        covered = wt > 1e-9
        obj = np.zeros((h, w), dtype=np.complex64)
        np.divide(num, wt, out=obj, where=covered, casting="unsafe")
        coverage = np.where(covered, wt, 0.0).astype(np.float32)
        logger.debug(
            "stitched %d patches onto %dx%d canvas, %.1f%% covered",
            self.n_added,
            h,
            w,
            100 * covered.mean() if covered.size else 0.0,
        )
        return StitchResult(object=obj, coverage=coverage, origin=self.origin)


def _check_positions(positions: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must have shape (M, 2) (x, y), got {pos.shape}")
    if pos.size and not np.all(np.isfinite(pos)):
        raise ValueError("positions must be finite")
    return pos


def stitch(
    patches: np.ndarray,
    positions: np.ndarray,
    N: int | None = None,
    crop: int | None = None,
    object_shape: tuple[int, int] | None = None,
    chunk: int = 4096,
) -> StitchResult:
    """Stitch ``patches (M, N, N)`` complex at ``positions (M, 2)`` in ``chunk``-sized pieces.

    ``N`` defaults to the patch size; see :class:`Stitcher` for ``crop`` and ``object_shape``
    (without it the canvas is the bounding box of the positions, origin recorded).
    """
    patches = np.asarray(patches)
    n = patches.shape[-1] if N is None else int(N)
    pos = _check_positions(positions)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    st = Stitcher(
        n, crop, object_shape=object_shape, positions=pos if object_shape is None else None
    )
    for s in range(0, len(pos), chunk):
        st.add(patches[s : s + chunk], pos[s : s + chunk])
    return st.result()
