"""NumPy reference physics (``specs/physics.md``): the oracle the TF and torch ops are tested
against.

Frames and units
----------------
* Object arrays are indexed ``[row, col] = [y, x]``; pixel centres sit at integer coordinates.
* Scan positions are ``(x, y)`` in object pixels (float).
* A patch of even size ``N`` at position ``p`` samples ``patch[i, j] = O(p_y - N/2 + i,
  p_x - N/2 + j)`` with bilinear interpolation; samples outside the object are zero.
* :func:`translate` moves content by ``+t = (t_x, t_y)``: ``out(y, x) = img(y - t_y, x - t_x)``.
* :func:`place_patches` is the exact adjoint of :func:`extract_patches`.
* Diffraction patterns carry the zero frequency at index ``(N/2, N/2)`` (fftshift convention),
  amplitude ``A = |fftshift(fft2(psi))| / N`` so that ``sum A**2 == sum |psi|**2`` (Parseval).
* Phases are radians in ``(−π, π]``, the range of :func:`numpy.angle` (the one wrap convention
  of the project; :func:`ptycho_core.metrics.wrap_phase` maps into it).
* :func:`object_big_merge` is the oracle of the backends' ``object_big`` merge
  (``specs/model.md``); its arrays use the torch layout ``(B, C, N, N)``. :func:`merge_weight`
  is its default per-pixel weight, the illumination intensity normalised to peak 1.

Bilinear sampling of a whole patch at a point ``p`` splits ``p`` into an integer part
``k = floor(p)`` and a fraction ``f = p - k`` that is the same for every pixel of the patch, so
extraction gathers an ``(N+1) x (N+1)`` integer block and blends its four shifted views with the
weights ``(1-fy)(1-fx), (1-fy)fx, fy(1-fx), fy fx``. Placement applies the transpose of exactly
that linear map (blend into the block, then scatter-add with :func:`numpy.bincount`).
All operations are vectorised over patches; large batches are processed in chunks.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

__all__ = [
    "translate",
    "extract_patches",
    "place_patches",
    "disk_mask",
    "center_mask",
    "normalize_probe",
    "gaussian_kernel1d",
    "illuminate",
    "forward_model",
    "poisson_nll",
    "poisson_sample",
    "diffraction_norm_factor",
    "estimate_nphotons",
    "intensity_scale",
    "merge_canvas_size",
    "merge_weight",
    "object_big_merge",
    "data_projection",
]

logger = logging.getLogger(__name__)

# Gathered block elements handled at once: small chunks keep temporaries in cache (measured
# ~10x faster than one huge chunk) and bound temporary memory.
_CHUNK_ELEMS = 1 << 18
# Scatter chunks are larger: each bincount call costs O(canvas) on top of O(chunk).
_SCATTER_ELEMS = 1 << 21
# Forward-model FFT chunk (complex64 elements).
_FFT_ELEMS = 1 << 20


# ----------------------------------------------------------------------------- bilinear core
def _as_float(a: np.ndarray) -> np.ndarray:
    """Arrays that are not float/complex (ints, bools) become float64."""
    a = np.asarray(a)
    return a if a.dtype.kind in "fc" else a.astype(np.float64)


def _split(coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer part (int64) and fraction in [0, 1) of float coordinates."""
    c = np.asarray(coord, dtype=np.float64)
    k = np.floor(c)
    return k.astype(np.int64), c - k


def _weights(f: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """``(1 - f, f)`` shaped ``(B, 1, 1)`` in the block's own dtype (avoids slow mixed-type
    loops)."""
    f = np.asarray(f, dtype=np.float64).reshape(-1, 1, 1)
    return (1.0 - f).astype(dtype), f.astype(dtype)


def _blend(block: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """Bilinear blend of ``block (B, h+1, w+1)`` into ``(B, h, w)`` with per-item fractions.

    ``out[b, i, j] = sum_{dy,dx in {0,1}} wy[dy] wx[dx] block[b, i+dy, j+dx]`` with
    ``wy = (1-fy, fy)``, ``wx = (1-fx, fx)`` (separable: rows first, then columns).
    """
    gy, fy = _weights(fy, block.dtype)
    gx, fx = _weights(fx, block.dtype)
    rows = block[:, :-1, :] * gy
    rows += block[:, 1:, :] * fy
    out = rows[:, :, :-1] * gx
    out += rows[:, :, 1:] * fx
    return out


def _blend_adjoint(patch: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """Transpose of :func:`_blend`: ``(B, h, w)`` → ``(B, h+1, w+1)``."""
    b, h, w = patch.shape
    gy, fy = _weights(fy, patch.dtype)
    gx, fx = _weights(fx, patch.dtype)
    cols = np.empty((b, h, w + 1), dtype=patch.dtype)
    cols[:, :, :-1] = patch * gx
    cols[:, :, -1] = 0
    cols[:, :, 1:] += patch * fx
    out = np.empty((b, h + 1, w + 1), dtype=patch.dtype)
    out[:, :-1, :] = cols * gy
    out[:, -1, :] = 0
    out[:, 1:, :] += cols * fy
    return out


def _padded_block_index(
    r0: np.ndarray, c0: np.ndarray, hb: int, wb: int, shape: tuple[int, int], pad: int
) -> np.ndarray:
    """Flat indices ``(B, hb, wb)`` into an array of ``shape`` zero-padded by ``pad >= hb, wb``.

    Block origins are clipped to ``[-pad, H]``: a block starting further out lies entirely
    outside the unpadded array, and so does its clipped version (it lands in the padding).
    """
    h, w = shape
    wp = w + 2 * pad
    r = np.clip(r0, -pad, h) + pad
    c = np.clip(c0, -pad, w) + pad
    rows = (r.reshape(-1, 1, 1) + np.arange(hb).reshape(1, -1, 1)) * wp
    return rows + (c.reshape(-1, 1, 1) + np.arange(wb).reshape(1, 1, -1))


def _block_index(
    r0: np.ndarray, c0: np.ndarray, hb: int, wb: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices ``(B, hb, wb)`` (clipped) and validity mask of blocks starting at
    ``(r0, c0)``."""
    h, w = shape
    rows = r0.reshape(-1, 1, 1) + np.arange(hb).reshape(1, -1, 1)
    cols = c0.reshape(-1, 1, 1) + np.arange(wb).reshape(1, 1, -1)
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = np.clip(rows, 0, h - 1) * w + np.clip(cols, 0, w - 1)
    return flat, valid


# ----------------------------------------------------------------------------- geometry ops
def translate(img: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Translate images by ``+shift`` (content moves by ``(t_x, t_y)``), bilinear, zeros enter.

    Parameters
    ----------
    img : (..., H, W) float or complex
    shift : (..., 2) float, ``(t_x, t_y)`` in pixels; broadcast against the leading axes of ``img``.

    Returns
    -------
    (..., H, W), same dtype as ``img``: ``out(y, x) = img(y - t_y, x - t_x)``.
    """
    img = _as_float(img)
    shift = np.asarray(shift, dtype=np.float64)
    if shift.shape[-1:] != (2,):
        raise ValueError(f"shift must have shape (..., 2) (t_x, t_y), got {shift.shape}")
    h, w = img.shape[-2:]
    lead = np.broadcast_shapes(img.shape[:-2], shift.shape[:-1])
    imgs = np.broadcast_to(img, lead + (h, w)).reshape(-1, h, w)
    shifts = np.broadcast_to(shift, lead + (2,)).reshape(-1, 2)
    b = imgs.shape[0]
    src = np.ascontiguousarray(imgs).ravel()
    out = np.empty((b, h, w), dtype=img.dtype)
    step = max(1, _CHUNK_ELEMS // ((h + 1) * (w + 1)))
    for s in range(0, b, step):
        e = min(b, s + step)
        ky, fy = _split(-shifts[s:e, 1])
        kx, fx = _split(-shifts[s:e, 0])
        flat, valid = _block_index(ky, kx, h + 1, w + 1, (h, w))
        flat += (np.arange(s, e) * (h * w)).reshape(-1, 1, 1)
        block = np.take(src, flat)
        block *= valid
        out[s:e] = _blend(block, fy, fx)
    return out.reshape(lead + (h, w))


def _check_patch_args(positions: np.ndarray, n: int) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must have shape (M, 2) (x, y), got {pos.shape}")
    if n <= 0 or n % 2:
        raise ValueError(f"patch size N must be a positive even integer, got {n}")
    return pos


def extract_patches(obj: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """Cut ``n×n`` patches out of an object at scan positions (bilinear, zero outside).

    Parameters
    ----------
    obj : (H, W) float or complex
    positions : (M, 2) float, ``(x, y)`` object pixels
    n : even patch size ``N``

    Returns
    -------
    (M, N, N), dtype of ``obj`` (float32/complex64 stay single precision):
    ``patch[i, j] = O(p_y - N/2 + i, p_x - N/2 + j)``.
    """
    obj = _as_float(obj)
    if obj.ndim != 2:
        raise ValueError(f"obj must be 2-D (H, W), got shape {obj.shape}")
    pos = _check_patch_args(positions, n)
    m = pos.shape[0]
    pad = n + 1
    src = np.pad(obj, pad).ravel()
    out = np.empty((m, n, n), dtype=obj.dtype)
    step = max(1, _CHUNK_ELEMS // ((n + 1) ** 2))
    for s in range(0, m, step):
        p = pos[s : s + step]
        ky, fy = _split(p[:, 1] - n / 2)
        kx, fx = _split(p[:, 0] - n / 2)
        flat = _padded_block_index(ky, kx, n + 1, n + 1, obj.shape, pad)
        out[s : s + step] = _blend(np.take(src, flat), fy, fx)
    return out


def _scatter(values: np.ndarray, positions: np.ndarray, out_padded: np.ndarray, pad: int) -> None:
    """Add the adjoint of bilinear extraction of ``values (B, n, n)`` at ``positions``.

    ``out_padded`` is the canvas zero-padded by ``pad >= n + 1`` on every side (float64 or
    complex128); contributions falling outside the unpadded canvas land in the padding.
    The blend runs in small cache-friendly sub-chunks; one bincount per call adds them up.
    """
    b, n = values.shape[0], values.shape[-1]
    hp, wp = out_padded.shape
    ky, fy = _split(positions[:, 1] - n / 2)
    kx, fx = _split(positions[:, 0] - n / 2)
    block = np.empty((b, n + 1, n + 1), dtype=values.dtype)
    sub = max(1, _CHUNK_ELEMS // ((n + 1) ** 2))
    for s in range(0, b, sub):
        block[s : s + sub] = _blend_adjoint(values[s : s + sub], fy[s : s + sub], fx[s : s + sub])
    flat = _padded_block_index(ky, kx, n + 1, n + 1, (hp - 2 * pad, wp - 2 * pad), pad).ravel()
    lo, hi = int(flat.min()), int(flat.max()) + 1
    flat -= lo  # bincount only over the span this chunk touches
    target = out_padded.reshape(-1)[lo:hi]
    block = block.reshape(-1)
    if np.iscomplexobj(block):
        target.real += np.bincount(flat, weights=block.real, minlength=hi - lo)
        target.imag += np.bincount(flat, weights=block.imag, minlength=hi - lo)
    else:
        target += np.bincount(flat, weights=block, minlength=hi - lo)


def place_patches(patches: np.ndarray, positions: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Scatter-add patches onto a zero canvas: the exact adjoint of :func:`extract_patches`.

    Parameters
    ----------
    patches : (M, N, N) float or complex
    positions : (M, 2) float, ``(x, y)`` object pixels
    shape : ``(H, W)`` of the canvas (object frame)

    Returns
    -------
    (H, W) float64 or complex128 (accumulated in double precision), such that
    ``vdot(extract_patches(c, p, N), q) == vdot(c, place_patches(q, p, c.shape))``.
    """
    patches = np.asarray(patches)
    if patches.ndim != 3 or patches.shape[1] != patches.shape[2]:
        raise ValueError(f"patches must have shape (M, N, N), got {patches.shape}")
    n = patches.shape[-1]
    pos = _check_patch_args(positions, n)
    if pos.shape[0] != patches.shape[0]:
        raise ValueError(f"{patches.shape[0]} patches but {pos.shape[0]} positions")
    h, w = (int(v) for v in shape)
    dtype = np.complex128 if np.iscomplexobj(patches) else np.float64
    pad = n + 1
    out = np.zeros((h + 2 * pad, w + 2 * pad), dtype=dtype)
    step = max(1, _SCATTER_ELEMS // ((n + 1) ** 2))
    for s in range(0, patches.shape[0], step):
        _scatter(_as_float(patches[s : s + step]), pos[s : s + step], out, pad)
    return out[pad : pad + h, pad : pad + w].copy()


# ----------------------------------------------------------------------------- probe
def disk_mask(n: int, radius: float | None = None) -> np.ndarray:
    """Disk of ``radius`` (default ``n/4``) pixels centred at ``((n-1)/2, (n-1)/2)``.

    Returns ``(n, n) float32`` with 1 where the pixel-centre distance ``<= radius``, else 0.
    """
    r = n / 4 if radius is None else float(radius)
    c = (n - 1) / 2
    yy, xx = np.mgrid[0:n, 0:n]
    return (((yy - c) ** 2 + (xx - c) ** 2) <= r * r).astype(np.float32)


def center_mask(n: int) -> np.ndarray:
    """The centre ``n/2`` square: ``(n, n) float64``, 1 on rows and columns
    ``[n//4, n//4 + n//2)`` (``[n/4, 3n/4)`` for ``n`` divisible by 4), 0 elsewhere.

    The weight of the ``object_big`` merge and the complement of the ``probe_big`` border
    (``specs/model.md``).
    """
    m = np.zeros((n, n), dtype=np.float64)
    q, h = n // 4, n // 2
    m[q : q + h, q : q + h] = 1.0
    return m


def normalize_probe(probe: np.ndarray, probe_scale: float = 4.0) -> np.ndarray:
    """``P̃ = P / (probe_scale · mean(|disk_mask(N) · P|))`` (mean over all ``N²`` pixels).

    ``probe``: (N, N) complex. Returns (N, N) complex64, so ``mean|M·P̃| = 1/probe_scale``.
    """
    p = np.asarray(probe)
    n = p.shape[-1]
    denom = probe_scale * float(np.mean(np.abs(disk_mask(n) * p)))
    if not np.isfinite(denom) or denom <= 0:
        raise ValueError("probe has no energy inside the N/4 disk; cannot normalise it")
    return (p / denom).astype(np.complex64)


def gaussian_kernel1d(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, radius ``int(4·sigma + 0.5)`` (float64, odd length)."""
    radius = int(4.0 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def illuminate(
    probe: np.ndarray, gaussian_smoothing_sigma: float = 0.0, probe_mask: bool = False
) -> np.ndarray:
    """The illumination actually applied to the object in the forward model (``specs/physics.md``).

    ``probe``: (N, N) complex (normally already normalised by :func:`normalize_probe`).
    With ``gaussian_smoothing_sigma > 0`` the probe (real and imaginary parts) is convolved with
    the separable kernel :func:`gaussian_kernel1d` using zero padding ("same" size); with
    ``probe_mask`` it is then multiplied by :func:`disk_mask`. Returns (N, N) complex64.
    """
    p = np.asarray(probe).astype(np.complex128)
    if gaussian_smoothing_sigma < 0:
        raise ValueError(f"gaussian_smoothing_sigma must be >= 0, got {gaussian_smoothing_sigma}")
    if gaussian_smoothing_sigma > 0:
        k = gaussian_kernel1d(gaussian_smoothing_sigma)
        for axis in (0, 1):
            p = ndimage.convolve1d(p.real, k, axis=axis, mode="constant") + 1j * ndimage.convolve1d(
                p.imag, k, axis=axis, mode="constant"
            )
    if probe_mask:
        p = p * disk_mask(p.shape[-1])
    return p.astype(np.complex64)


# ----------------------------------------------------------------------------- forward model
def forward_model(
    obj_patches: np.ndarray,
    probe: np.ndarray,
    gaussian_smoothing_sigma: float = 0.0,
    probe_mask: bool = False,
) -> np.ndarray:
    """Far-field amplitude ``A = |fftshift(fft2(illuminate(P) · O))| / N`` (``specs/physics.md``).

    Parameters
    ----------
    obj_patches : (..., N, N) complex object patches
    probe : (N, N) complex

    Returns
    -------
    (..., N, N) float32 amplitude, zero frequency at ``(N/2, N/2)``; ``sum A² = sum |psi|²``.
    """
    o = np.asarray(obj_patches)
    n = o.shape[-1]
    if n % 2:
        raise ValueError(f"patch size N must be even, got {n}")
    # For even N, fftshift(fft2(x)) == fft2(x · (-1)^(i+j)): fold the shift into the probe.
    p = illuminate(probe, gaussian_smoothing_sigma, probe_mask) * _checkerboard(n)
    lead = o.shape[:-2]
    flat = o.reshape(-1, n, n)
    out = np.empty(flat.shape, dtype=np.float32)
    step = max(1, _FFT_ELEMS // (n * n))
    for s in range(0, flat.shape[0], step):
        psi = flat[s : s + step].astype(np.complex64) * p
        f = sp_fft.fft2(psi, axes=(-2, -1), overwrite_x=True)
        np.abs(f, out=out[s : s + step])
    out *= np.float32(1.0 / n)
    return out.reshape(lead + (n, n))


def _checkerboard(n: int) -> np.ndarray:
    """``(-1)^(i+j)`` as (n, n) complex64."""
    i = np.arange(n)
    return np.where((i[:, None] + i[None, :]) % 2, -1.0, 1.0).astype(np.complex64)


def poisson_nll(
    pred_intensity: np.ndarray, observed_counts: np.ndarray, eps: float = 1e-12
) -> float:
    """Poisson negative log-likelihood (up to a data-only constant): ``mean(I − k·log(I + eps))``.

    Both arrays in photon counts (same shape, broadcastable). Returns a Python float.
    """
    i = np.asarray(pred_intensity, dtype=np.float64)
    k = np.asarray(observed_counts, dtype=np.float64)
    return float(np.mean(i - k * np.log(i + eps)))


def poisson_sample(intensity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photon counts ``~ Poisson(intensity)`` drawn from ``rng``; same shape, int64 counts."""
    lam = np.asarray(intensity, dtype=np.float64)
    if np.any(lam < 0) or not np.all(np.isfinite(lam)):
        raise ValueError("intensity must be finite and non-negative")
    return rng.poisson(lam)


# ----------------------------------------------------------------------------- scales
def estimate_nphotons(diffraction: np.ndarray) -> float:
    """Mean photon count per pattern, ``mean_m sum_hw X_m²``, for photon-unit amplitudes
    (M, N, N) (or one (N, N) pattern), any real dtype.

    Accumulates in float64 a chunk of patterns at a time, so the transient memory is a few MiB
    whatever M (never a float64 copy of the stack); the per-pattern sums, and so the result,
    are those of the whole-stack formula.
    """
    d = np.asarray(diffraction)
    if d.ndim < 2:
        raise ValueError(f"diffraction must be (M, N, N) or (N, N), got shape {d.shape}")
    stack = d.reshape(-1, *d.shape[-2:])
    step = max(1, _CHUNK_ELEMS // max(1, stack.shape[1] * stack.shape[2]))
    energies = np.empty(stack.shape[0], dtype=np.float64)
    for i in range(0, stack.shape[0], step):
        chunk = stack[i : i + step].astype(np.float64)
        energies[i : i + step] = np.sum(chunk * chunk, axis=(-2, -1))
    return float(np.mean(energies))


def diffraction_norm_factor(diffraction: np.ndarray) -> float:
    """``α = sqrt((N/2)² / mean_m sum_hw X_m²)``: makes the mean pattern energy ``(N/2)²``."""
    d = np.asarray(diffraction)
    n = d.shape[-1]
    energy = estimate_nphotons(d)
    if energy <= 0:
        raise ValueError("diffraction has zero energy; cannot normalise it")
    return float(np.sqrt((n / 2) ** 2 / energy))


def intensity_scale(nphotons: float, N: int) -> float:
    """``s = sqrt(nphotons) / (N/2)`` (``specs/physics.md``); ``nphotons`` = mean counts per
    pattern."""
    if not nphotons > 0:
        raise ValueError(f"nphotons must be > 0, got {nphotons}")
    return float(np.sqrt(nphotons) / (N / 2))


# ----------------------------------------------------------------------------- object_big merge
def merge_canvas_size(n: int, offsets: np.ndarray) -> int:
    """Side of the square ``object_big`` merge canvas (``specs/model.md``), in pixels.

    ``side = n + 2·ceil(max |offset|)`` (the max over every component of every offset, i.e.
    the whole batch), rounded up to an even number; ``offsets`` is any array of pixel offsets
    (normally ``(B, C, 2)``). Empty ``offsets`` count as zero. A translation by any of the
    offsets keeps a centred ``n×n`` patch inside the canvas, so the merge clips nothing.
    """
    off = np.asarray(offsets, dtype=np.float64)
    m = int(np.ceil(np.max(np.abs(off)))) if off.size else 0
    side = int(n) + 2 * m
    return side + side % 2


def merge_weight(
    probe: np.ndarray, gaussian_smoothing_sigma: float = 0.0, probe_mask: bool = False
) -> np.ndarray:
    """The ``object_big`` merge weight of ``merge_weights='probe'`` (``specs/model.md``).

    ``w = |I(P)|² / max |I(P)|²``: the intensity of the illumination the forward model applies
    (:func:`illuminate`, so smoothing and ``probe_mask`` count), normalised to peak 1. A pixel
    is weighted by how strongly the measured pattern constrains it. ``probe``: (N, N) complex
    (any scale; the normalisation removes it). Returns (N, N) float64 in ``[0, 1]``.
    """
    p = illuminate(probe, gaussian_smoothing_sigma, probe_mask)
    w = np.abs(p.astype(np.complex128)) ** 2
    peak = float(w.max())
    if not np.isfinite(peak) or peak <= 0:
        raise ValueError("probe has no finite, non-zero intensity; cannot weight the merge by it")
    return w / peak


def object_big_merge(
    patches: np.ndarray, offsets: np.ndarray, weight: np.ndarray | None = None
) -> np.ndarray:
    """Oracle of the backends' ``object_big`` merge and re-extraction (``specs/model.md``).

    Per sample ``b`` (samples never mix): each channel's patch times the weight map ``w``
    (``None``: the centre mask :func:`center_mask`, the legacy ``merge_weights='centre'``) is
    zero-padded to the canvas of :func:`merge_canvas_size` (patch centre ``n/2`` at canvas
    index ``side/2``) and translated by ``+offset_c`` with :func:`translate` (bilinear, content
    moves by ``+(dx, dy)``); the padded weights are translated the same way. With
    ``S = Σ_c translated patch·w`` and ``W = Σ_c translated w``,
    ``merged = S / max(W, 1e-3)`` where ``W > 0`` and 0 elsewhere. Channel ``c`` is
    re-extracted by translating ``merged`` by ``−offset_c`` and cropping the central ``n×n``.

    Parameters
    ----------
    patches : (B, C, N, N) complex (or real) object patches, torch layout; ``N`` even
    offsets : (B, C, 2) float, ``(dx, dy)`` pixels of each channel from its group centre
    weight : (N, N) real ``>= 0`` (or any shape broadcasting to ``(B, C, N, N)``), e.g.
        :func:`merge_weight` of the probe; ``None`` for the centre mask

    Returns
    -------
    (B, C, N, N) complex128 (float64 for real ``patches``).
    """
    x = np.asarray(patches)
    x = x.astype(np.complex128 if np.iscomplexobj(x) else np.float64)
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"patches must have shape (B, C, N, N), got {x.shape}")
    b, c, n, _ = x.shape
    if n % 2:
        raise ValueError(f"patch size N must be even, got {n}")
    off = np.asarray(offsets, dtype=np.float64)
    if off.shape != (b, c, 2):
        raise ValueError(f"offsets must have shape {(b, c, 2)} (dx, dy), got {off.shape}")
    w = center_mask(n) if weight is None else _check_weight(weight, x.shape)
    side = merge_canvas_size(n, off)
    p = (side - n) // 2
    pads = [(0, 0)] * (w.ndim - 2) + [(p, p), (p, p)]
    canvas = np.pad(x * w, ((0, 0), (0, 0), (p, p), (p, p)))
    num = translate(canvas, off).sum(axis=1)  # (B, side, side)
    den = translate(np.pad(w, pads), off).sum(axis=1)  # w broadcast over (B, C)
    merged = np.where(den > 0, num / np.maximum(den, 1e-3), 0)
    return translate(merged[:, None], -off)[..., p : p + n, p : p + n]


def _check_weight(weight: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The merge weight as float64, checked: real, finite, ``>= 0``, ``(..., N, N)``
    broadcasting to the patches' ``shape``."""
    w = np.asarray(weight)
    if w.dtype.kind not in "biuf":
        raise ValueError(f"weight must be a real array, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if w.ndim < 2 or w.shape[-2:] != shape[-2:]:
        raise ValueError(f"weight must have shape (..., {shape[-2]}, {shape[-1]}), got {w.shape}")
    try:
        np.broadcast_shapes(w.shape, shape)
    except ValueError as exc:
        raise ValueError(f"weight shape {w.shape} does not broadcast to {shape}") from exc
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weight must be finite and >= 0")
    return w


def data_projection(
    obj_patches: np.ndarray,
    amplitude: np.ndarray,
    illumination: np.ndarray,
    regularization: float,
    softening: float,
) -> np.ndarray:
    """One data projection of object patches (``specs/model.md``, "Physics stages").

    With ``ψ = I·O`` and ``Ψ = fftshift(fft2(ψ)) / N`` (the forward model), the far field moves
    to the measured ``amplitude`` ``A`` keeping its phase, ``Ψ' = Ψ·(A + ε)/(|Ψ| + ε)``
    (``|Ψ|`` as ``sqrt(|Ψ|² + 1e-12)``): exactly ``A`` where ``|Ψ| ≫ ε``, between ``|Ψ|`` and
    ``A`` always, and bounded where ``|Ψ| → 0`` (its phase is unknown there; ``Ψ/|Ψ|`` alone
    made gradients and the two backends' rounding blow up). The object moves by the exit-wave
    change ``O' = O + Ī·(ψ' − ψ) / (|I|² + α·max|I|²)``. An object whose forward model already
    gives ``amplitude`` is a fixed point.

    obj_patches: ``(..., N, N)`` complex; amplitude: the same shape, real, normalised units
    (what :func:`forward_model` returns); illumination: ``(N, N)`` complex,
    :func:`illuminate` of the probe; regularization: ``α > 0``; softening: ``ε ≥ 0`` (the models
    use ``ptycho_core.architecture.PROJECTION_REGULARIZATION`` / ``PROJECTION_SOFTENING``). Returns
    ``(..., N, N)`` complex64 (computed in complex128).
    """
    o = np.asarray(obj_patches, np.complex128)
    a = np.asarray(amplitude, np.float64)
    p = np.asarray(illumination, np.complex128)
    n = o.shape[-1]
    if a.shape != o.shape or p.shape != (n, n):
        raise ValueError(
            f"object {o.shape}, amplitude {a.shape} and illumination {p.shape} do not match"
        )
    if not regularization > 0:
        raise ValueError(f"regularization={regularization!r} must be > 0")
    if not softening >= 0:
        raise ValueError(f"softening={softening!r} must be >= 0")
    psi = p * o
    far = np.fft.fftshift(np.fft.fft2(psi), axes=(-2, -1)) / n
    far = far * ((a + softening) / (np.sqrt(far.real**2 + far.imag**2 + 1e-12) + softening))
    psi_new = np.fft.ifft2(np.fft.ifftshift(far, axes=(-2, -1))) * n
    w = np.abs(p) ** 2
    return (o + np.conj(p) * (psi_new - psi) / (w + regularization * w.max())).astype(np.complex64)
