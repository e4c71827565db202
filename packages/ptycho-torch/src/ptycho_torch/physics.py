"""Differentiable torch counterparts of ``ptycho_core.physics`` (``specs/physics.md``,
``specs/model.md``).

Frames: images are indexed ``[..., row, col] = [..., y, x]``; shifts and positions are
``(x, y)`` in pixels (float), pixel centres at integer coordinates. Every function here is
tested against the NumPy oracle in :mod:`ptycho_core.physics` on identical inputs.

Phases are radians in ``(−π, π]`` (``torch.angle``, like ``numpy.angle``).

Bilinear interpolation is written as the separable "hat" kernel ``max(0, 1 − |u − v|)``, so an
integer shift is exact, zeros enter at the border, and the same code serves real and complex
tensors and gives gradients with respect to the image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "shift_matrix",
    "translate",
    "extract_patches",
    "place_patches",
    "disk_mask",
    "center_mask",
    "gaussian_kernel1d",
    "gaussian_smooth",
    "illuminate",
    "forward_model",
    "poisson_nll",
    "merge_canvas_size",
    "merge_weight",
    "object_big_merge",
]


def shift_matrix(
    size: int, shift: torch.Tensor, out_size: int | None = None, start: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """1-D bilinear resampling operator ``T[..., i, j] = max(0, 1 − |j − (i + start − shift)|)``.

    ``(T @ v)[i]`` is ``v`` sampled (bilinear, zero outside ``[0, size)``) at ``i + start − shift``.
    ``shift``/``start``: ``(...)`` float tensors (pixels). Returns ``(..., out_size, size)``,
    dtype of ``shift``.
    """
    out_size = size if out_size is None else out_size
    dev, dt = shift.device, shift.dtype
    i = torch.arange(out_size, device=dev, dtype=dt)
    j = torch.arange(size, device=dev, dtype=dt)
    src = i + (torch.as_tensor(start, device=dev, dtype=dt) - shift)[..., None]  # (..., out)
    return torch.clamp(1.0 - (j - src[..., :, None]).abs(), min=0.0)


def _apply_separable(img: torch.Tensor, ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
    """``ty @ img @ tx^T`` with real operators, for real or complex ``img``."""
    if img.is_complex():
        ty = ty.to(img.dtype)
        tx = tx.to(img.dtype)
    return ty @ img @ tx.transpose(-1, -2)


def translate(img: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move image content by ``+shift = (t_x, t_y)`` pixels (bilinear, zeros enter at the border).

    img: ``(..., H, W)`` real or complex; shift: ``(..., 2)`` float ``(t_x, t_y)``, broadcast over
    the leading axes. ``out[y, x] = img(y − t_y, x − t_x)``. Same shape and dtype as ``img``.
    """
    real_dt = img.real.dtype if img.is_complex() else img.dtype
    shift = shift.to(device=img.device, dtype=real_dt)
    h, w = img.shape[-2:]
    ty = shift_matrix(h, shift[..., 1])
    tx = shift_matrix(w, shift[..., 0])
    return _apply_separable(img, ty, tx)


def _corner_windows(
    positions: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer window origins and fractional parts for patches of size ``n`` at ``positions``.

    Returns ``x0, y0`` (M,) long (top-left source pixel of the ``(n+1)×(n+1)`` window) and
    ``fx, fy`` (M,) float fractional offsets.
    """
    sx = positions[..., 0] - n / 2
    sy = positions[..., 1] - n / 2
    x0 = torch.floor(sx)
    y0 = torch.floor(sy)
    return x0.long(), y0.long(), sx - x0, sy - y0


def _bilinear_weights(
    fx: torch.Tensor, fy: torch.Tensor, n: int, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    fx = fx.to(dtype)[:, None, None]
    fy = fy.to(dtype)[:, None, None]
    return (1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx


def extract_patches(obj: torch.Tensor, positions: torch.Tensor, n: int) -> torch.Tensor:
    """Cut ``(M, n, n)`` patches from ``obj (H, W)`` at ``positions (M, 2)`` ``(x, y)``.

    ``patch[i, j] = O(p_y − n/2 + i, p_x − n/2 + j)``, bilinear for fractional positions, zero
    outside the object. Real or complex ``obj``; the result has its dtype.
    """
    h, w = obj.shape
    real_dt = obj.real.dtype if obj.is_complex() else obj.dtype
    positions = positions.to(device=obj.device, dtype=torch.float64)
    x0, y0, fx, fy = _corner_windows(positions, n)
    pad = n + 2
    padded = F.pad(obj, (pad, pad, pad, pad))
    ar = torch.arange(n + 1, device=obj.device)
    rows = (y0[:, None] + ar + pad).clamp(0, h + 2 * pad - 1)
    cols = (x0[:, None] + ar + pad).clamp(0, w + 2 * pad - 1)
    # Windows that fall entirely outside the padded frame are clamped onto the zero border.
    win = padded[rows[:, :, None], cols[:, None, :]]  # (M, n+1, n+1)
    w00, w01, w10, w11 = _bilinear_weights(fx, fy, n, real_dt)
    return (
        w00 * win[:, :-1, :-1]
        + w01 * win[:, :-1, 1:]
        + w10 * win[:, 1:, :-1]
        + w11 * win[:, 1:, 1:]
    )


def place_patches(
    patches: torch.Tensor, positions: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """Scatter-add ``patches (M, n, n)`` onto an ``(H, W)`` canvas: the adjoint of extraction.

    ``<extract_patches(c, p, n), q> == <c, place_patches(q, p, c.shape)>`` to float tolerance.
    """
    m, n, _ = patches.shape
    h, w = shape
    real_dt = patches.real.dtype if patches.is_complex() else patches.dtype
    positions = positions.to(device=patches.device, dtype=torch.float64)
    x0, y0, fx, fy = _corner_windows(positions, n)
    w00, w01, w10, w11 = _bilinear_weights(fx, fy, n, real_dt)
    win = torch.zeros((m, n + 1, n + 1), dtype=patches.dtype, device=patches.device)
    win[:, :-1, :-1] += w00 * patches
    win[:, :-1, 1:] += w01 * patches
    win[:, 1:, :-1] += w10 * patches
    win[:, 1:, 1:] += w11 * patches
    ar = torch.arange(n + 1, device=patches.device)
    rows = y0[:, None] + ar  # (M, n+1)
    cols = x0[:, None] + ar
    rr = rows[:, :, None].expand(m, n + 1, n + 1)
    cc = cols[:, None, :].expand(m, n + 1, n + 1)
    keep = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    flat = torch.zeros(h * w, dtype=patches.dtype, device=patches.device)
    flat = flat.index_add(0, (rr * w + cc)[keep], win[keep])
    return flat.reshape(h, w)


def disk_mask(
    n: int, radius: float | None = None, *, dtype: torch.dtype = torch.float32, device=None
) -> torch.Tensor:
    """``(n, n)`` disk of radius ``n/4`` (default) centred at ``((n−1)/2, (n−1)/2)``; 1 inside."""
    radius = n / 4 if radius is None else radius
    c = (n - 1) / 2
    ax = torch.arange(n, dtype=torch.float64, device=device) - c
    r2 = ax[:, None] ** 2 + ax[None, :] ** 2
    return (r2 <= radius**2).to(dtype)


def center_mask(n: int, *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """``(n, n)`` mask (``dtype``), 1 on rows and columns ``[n//4, n//4 + n//2)`` (the central
    ``n/2`` square), 0 elsewhere, as :func:`ptycho_core.physics.center_mask`."""
    m = torch.zeros((n, n), dtype=dtype, device=device)
    m[n // 4 : n // 4 + n // 2, n // 4 : n // 4 + n // 2] = 1
    return m


def gaussian_kernel1d(
    sigma: float, *, dtype: torch.dtype = torch.float64, device=None
) -> torch.Tensor:
    """Normalised 1-D Gaussian, radius ``int(4·sigma + 0.5)`` (scipy.ndimage's default
    truncation)."""
    radius = int(4.0 * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_smooth(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``img (..., H, W)`` (real or complex), zero padding outside.

    Written as two banded matrices so it is exact, differentiable and batched.
    """
    if sigma <= 0:
        return img
    real_dt = img.real.dtype if img.is_complex() else img.dtype
    k = gaussian_kernel1d(sigma, dtype=real_dt, device=img.device)
    r = (k.numel() - 1) // 2

    def band(size: int) -> torch.Tensor:
        i = torch.arange(size, device=img.device)
        d = i[None, :] - i[:, None] + r  # index into k
        ok = (d >= 0) & (d <= 2 * r)
        return torch.where(
            ok, k[d.clamp(0, 2 * r)], torch.zeros((), dtype=real_dt, device=img.device)
        )

    h, w = img.shape[-2:]
    return _apply_separable(img, band(h), band(w))


def illuminate(
    probe: torch.Tensor, gaussian_smoothing_sigma: float = 0.0, probe_mask: bool = False
) -> torch.Tensor:
    """The illumination actually used by the forward model: optional Gaussian blur, then disk mask.

    probe: ``(N, N)`` complex (already normalised). Returns ``(N, N)`` complex.
    """
    p = gaussian_smooth(probe, gaussian_smoothing_sigma)
    if probe_mask:
        p = p * disk_mask(p.shape[-1], dtype=p.real.dtype, device=p.device)
    return p


def forward_model(
    obj_patches: torch.Tensor,
    probe: torch.Tensor,
    gaussian_smoothing_sigma: float = 0.0,
    probe_mask: bool = False,
) -> torch.Tensor:
    """Far-field amplitude ``|fftshift(fft2(illuminate(P) · O))| / N`` (``specs/physics.md``).

    obj_patches: ``(..., N, N)`` complex; probe ``(N, N)`` complex. Returns ``(..., N, N)`` real,
    DC at ``(N/2, N/2)``; ``Σ A² = Σ |ψ|²`` (Parseval).
    """
    n = obj_patches.shape[-1]
    psi = illuminate(probe, gaussian_smoothing_sigma, probe_mask) * obj_patches
    far = torch.fft.fftshift(torch.fft.fft2(psi), dim=(-2, -1))
    return far.abs() / n


def data_projection(
    obj_patches: torch.Tensor,
    amplitude: torch.Tensor,
    illumination: torch.Tensor,
    regularization: float,
    softening: float,
) -> torch.Tensor:
    """One data projection (``specs/model.md``, "Physics stages";
    :func:`ptycho_core.physics.data_projection`): the far field of ``illumination · O`` moves
    to the measured ``amplitude`` ``A`` (normalised units), ``Ψ·(A + ε)/(|Ψ| + ε)``, keeping
    its phase; the object moves by ``Ī·(ψ' − ψ) / (|I|² + α·max|I|²)``. ``(..., N, N)``
    complex → the same; differentiable."""
    n = obj_patches.shape[-1]
    psi = illumination * obj_patches
    far = torch.fft.fftshift(torch.fft.fft2(psi), dim=(-2, -1)) / n
    modulus = torch.sqrt(far.real * far.real + far.imag * far.imag + 1e-12)
    far = far * ((amplitude + softening) / (modulus + softening))
    psi_new = torch.fft.ifft2(torch.fft.ifftshift(far, dim=(-2, -1))) * n
    w = illumination.real * illumination.real + illumination.imag * illumination.imag
    return obj_patches + illumination.conj() * (psi_new - psi) / (w + regularization * w.max())


def poisson_nll(
    pred_intensity: torch.Tensor, observed_counts: torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """``mean(I_pred − I_obs · log(I_pred + eps))`` (scalar tensor; counts in photons)."""
    return torch.mean(pred_intensity - observed_counts * torch.log(pred_intensity + eps))


def merge_canvas_size(n: int, offsets: torch.Tensor) -> int:
    """Canvas side in pixels, ``n + 2·ceil(max|offset|)`` over the whole batch, rounded up to
    even (``specs/model.md``; :func:`ptycho_core.physics.merge_canvas_size`). Python int."""
    if offsets.numel() == 0:
        return n
    m = int(math.ceil(float(offsets.detach().abs().max())))
    side = n + 2 * m
    return side + (side % 2)


def merge_weight(
    probe: torch.Tensor, gaussian_smoothing_sigma: float = 0.0, probe_mask: bool = False
) -> torch.Tensor:
    """Merge weight of ``merge_weights='probe'``: ``|I(P)|² / max|I(P)|²`` (``specs/model.md``).

    probe: ``(N, N)`` complex (any scale). ``I`` is :func:`illuminate` (the forward model's
    illumination). Returns ``(N, N)`` real (the probe's real dtype), peak 1, as
    :func:`ptycho_core.physics.merge_weight`. Differentiable; the model detaches the probe first.
    """
    w = illuminate(probe, gaussian_smoothing_sigma, probe_mask).abs() ** 2
    return w / torch.clamp(w.max(), min=torch.finfo(w.dtype).tiny)


def object_big_merge(
    patches: torch.Tensor, offsets: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample overlap merge and re-extraction (``specs/model.md`` ``object_big``, ADR-002).

    patches: ``(B, C, N, N)`` complex object patches, ``N`` even; offsets: ``(B, C, 2)``
    ``(dx, dy)`` pixels relative to the group centre; weight: ``(N, N)`` real ``>= 0`` (or
    broadcasting to ``(B, C, N, N)``), e.g. :func:`merge_weight` of the probe, ``None`` for the
    centre ``N/2`` square mask (legacy ``merge_weights='centre'``). Each sample's channels are
    placed on that sample's own canvas (side from :func:`merge_canvas_size`; no clipping),
    averaged with the weight map translated like its patch as weights (numerator and
    denominator use the same weights, denominator floored at 1e-3), and re-extracted at their
    offsets. Returns ``(B, C, N, N)`` complex. Tested against the NumPy oracle
    :func:`ptycho_core.physics.object_big_merge`.
    """
    b, c, n, _ = patches.shape
    if n % 2:
        raise ValueError(f"patch size N must be even, got {n}")
    real_dt = patches.real.dtype
    offsets = offsets.to(device=patches.device, dtype=real_dt)
    if weight is None:
        w = center_mask(n, dtype=real_dt, device=patches.device)
    else:
        w = weight.to(device=patches.device, dtype=real_dt)
    if not bool(torch.any(offsets != 0)):
        # All offsets zero: the translations are identities and the merge is the weighted
        # average over channels (exactly what the general path computes, without the canvas).
        wsum = torch.broadcast_to(w, (b, c, n, n)).sum(dim=1, keepdim=True)
        merged = (patches * w).sum(dim=1, keepdim=True) / torch.clamp(wsum, min=1e-3)
        merged = torch.where(wsum > 0, merged, torch.zeros_like(merged))
        return merged.expand(b, c, n, n)
    side = merge_canvas_size(n, offsets)
    p = (side - n) // 2
    # Canvas coordinates: the patch centre (n/2) sits at side/2; pads are symmetric.
    pad_patch = F.pad(patches * w, (p, p, p, p))
    pad_w = F.pad(w, (p, p, p, p))
    ty = shift_matrix(side, offsets[..., 1])  # (B, C, side, side)
    tx = shift_matrix(side, offsets[..., 0])
    num = _apply_separable(pad_patch, ty, tx).sum(dim=1)  # (B, side, side)
    den = (ty @ pad_w @ tx.transpose(-1, -2)).sum(dim=1)
    merged = num / torch.clamp(den, min=1e-3)
    merged = torch.where(den > 0, merged, torch.zeros_like(merged))
    # Re-extract channel c: translate by -offset_c and crop the central n×n. Only the cropped
    # rows/columns are needed, so the operators are built directly for the crop window.
    ey = shift_matrix(side, -offsets[..., 1], out_size=n, start=float(p))  # (B, C, n, side)
    ex = shift_matrix(side, -offsets[..., 0], out_size=n, start=float(p))
    return _apply_separable(merged[:, None], ey, ex)
