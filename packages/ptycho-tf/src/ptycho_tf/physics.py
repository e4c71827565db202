"""Differentiable TensorFlow counterparts of :mod:`ptycho_core.physics` (``specs/physics.md``,
``specs/model.md``).

Frames: images are indexed ``[..., row, col] = [..., y, x]``; shifts and positions are ``(x, y)``
in pixels (float), pixel centres at integer coordinates. ONE sign convention everywhere:
:func:`translate` moves content by ``+t``. Every function with a core counterpart is tested
against the NumPy oracle on identical inputs (``tests/test_physics.py``).

Layouts: the generic functions here take the image axes *last* (``(..., H, W)``, like the
oracle); their names and arguments are those of :mod:`ptycho_torch.physics` (``object_big_merge``
takes ``(B, C, N, N)`` in both). The model-facing helpers with ``_cl`` in their name take TF's
channels-last layout ``(B, N, N, C)`` and transpose internally.

Phases are radians in ``(−π, π]`` (``tf.math.angle``, like ``numpy.angle``).

Bilinear translation is a pair of separable 1-D "hat" operators
``T[i, j] = max(0, 1 − |j − (i + start − shift)|)`` applied as matrix products, so an integer
shift is exact, zeros enter at the border, complex images need no special casing and gradients
flow to the image and the shift. Patch extraction / placement from a large object use gathers and
a segment sum (memory ``M·(N+1)²``, independent of the object size).
"""

from __future__ import annotations

import tensorflow as tf

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
    "forward_model_cl",
    "poisson_nll",
    "merge_canvas_size",
    "merge_weight",
    "object_big_merge",
    "object_big_merge_cl",
    "translate_channels_cl",
]


def _real_dtype(x: tf.Tensor) -> tf.DType:
    return x.dtype.real_dtype if x.dtype.is_complex else x.dtype


def shift_matrix(size, shift: tf.Tensor, out_size=None, start=0.0) -> tf.Tensor:
    """1-D bilinear resampling operator ``T[..., i, j] = max(0, 1 − |j − (i + start − shift)|)``.

    ``(T @ v)[i]`` is ``v`` sampled at ``i + start − shift`` (bilinear, 0 outside ``[0, size)``).
    size, out_size: ints or scalar int tensors (pixels); shift: ``(...)`` float tensor (pixels);
    start: float or scalar tensor. Returns ``(..., out_size, size)`` of ``shift``'s dtype.
    """
    out_size = size if out_size is None else out_size
    dt = shift.dtype
    i = tf.cast(tf.range(out_size), dt)
    j = tf.cast(tf.range(size), dt)
    src = i + (tf.cast(start, dt) - shift)[..., None]  # (..., out)
    return tf.nn.relu(1.0 - tf.abs(j - src[..., :, None]))


def _matmul(a: tf.Tensor, b: tf.Tensor, transpose_b: bool = False) -> tf.Tensor:
    """``a @ b`` (``a @ bᵀ`` with ``transpose_b``), the batch axes broadcast explicitly first.

    TF 2.21's oneDNN CPU batch matmul mishandles broadcasting it does itself when the left
    operand's batch has a size-1 axis (``(B, 1, n, n) @ (n, n)`` returns garbage or segfaults;
    tensorflow/tensorflow#117700, #123109), so both operands get the full batch shape here.
    """
    if a.shape.rank == 2 and b.shape.rank == 2:
        return tf.matmul(a, b, transpose_b=transpose_b)
    static = tf.broadcast_static_shape(a.shape[:-2], b.shape[:-2])
    if static.is_fully_defined():
        batch = static.as_list()
    else:
        batch = tf.broadcast_dynamic_shape(tf.shape(a)[:-2], tf.shape(b)[:-2])

    def full(t: tf.Tensor) -> tf.Tensor:
        if static.is_fully_defined() and t.shape[:-2].as_list() == batch:
            return t
        out = tf.broadcast_to(t, tf.concat([batch, tf.shape(t)[-2:]], 0))
        out.set_shape(static.concatenate(t.shape[-2:]))
        return out

    return tf.matmul(full(a), full(b), transpose_b=transpose_b)


def _apply_separable(img: tf.Tensor, ty: tf.Tensor, tx: tf.Tensor) -> tf.Tensor:
    """``ty @ img @ txᵀ`` for real or complex ``img`` with real operators."""
    if img.dtype.is_complex:
        ty = tf.cast(ty, img.dtype)
        tx = tf.cast(tx, img.dtype)
    return _matmul(_matmul(ty, img), tx, transpose_b=True)


def translate(img: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """Move content of ``img (..., H, W)`` by ``+shift (..., 2) = (t_x, t_y)`` pixels.

    ``out[y, x] = img(y − t_y, x − t_x)``, bilinear, zeros enter at the border. ``shift``
    broadcasts over the leading axes. Real or complex; same shape and dtype as ``img``.
    """
    img = tf.convert_to_tensor(img)
    shift = tf.cast(shift, _real_dtype(img))
    h, w = tf.shape(img)[-2], tf.shape(img)[-1]
    ty = shift_matrix(h, shift[..., 1])
    tx = shift_matrix(w, shift[..., 0])
    return _apply_separable(img, ty, tx)


def _windows(positions: tf.Tensor, n: int):
    """Top-left integer corner ``(x0, y0)`` (int64) and fractions ``(fx, fy)`` (float64) of the
    ``(n+1)×(n+1)`` source windows of patches centred on ``positions (M, 2)``."""
    p = tf.cast(positions, tf.float64)
    s = p - n / 2
    f0 = tf.floor(s)
    frac = s - f0
    c0 = tf.cast(f0, tf.int64)
    return c0[:, 0], c0[:, 1], frac[:, 0], frac[:, 1]


def _corner_weights(fx, fy, dtype):
    fx = tf.cast(fx, dtype)[:, None, None]
    fy = tf.cast(fy, dtype)[:, None, None]
    return (1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx


def _window_index(x0, y0, n: int, h, w):
    """Flat indices ``(M, n+1, n+1)`` into an ``(h, w)`` image and the in-bounds mask."""
    ar = tf.range(n + 1, dtype=tf.int64)
    rows = (y0[:, None] + ar)[:, :, None]
    cols = (x0[:, None] + ar)[:, None, :]
    h = tf.cast(h, tf.int64)
    w = tf.cast(w, tf.int64)
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    flat = tf.clip_by_value(rows, 0, h - 1) * w + tf.clip_by_value(cols, 0, w - 1)
    return flat, valid


def extract_patches(obj: tf.Tensor, positions: tf.Tensor, n: int) -> tf.Tensor:
    """Cut ``(M, n, n)`` patches from ``obj (H, W)`` at ``positions (M, 2)`` ``(x, y)`` pixels.

    ``patch[i, j] = O(p_y − n/2 + i, p_x − n/2 + j)``, bilinear, zero outside the object.
    Real or complex ``obj``; the result has its dtype.
    """
    obj = tf.convert_to_tensor(obj)
    h, w = tf.shape(obj)[0], tf.shape(obj)[1]
    x0, y0, fx, fy = _windows(positions, n)
    flat, valid = _window_index(x0, y0, n, h, w)
    win = tf.gather(tf.reshape(obj, [-1]), flat)
    win = win * tf.cast(valid, obj.dtype)
    w00, w01, w10, w11 = _corner_weights(fx, fy, _real_dtype(obj))
    if obj.dtype.is_complex:
        w00, w01, w10, w11 = (tf.cast(t, obj.dtype) for t in (w00, w01, w10, w11))
    return (
        w00 * win[:, :-1, :-1]
        + w01 * win[:, :-1, 1:]
        + w10 * win[:, 1:, :-1]
        + w11 * win[:, 1:, 1:]
    )


def place_patches(patches: tf.Tensor, positions: tf.Tensor, shape) -> tf.Tensor:
    """Scatter-add ``patches (M, n, n)`` onto an ``(H, W)`` canvas: the adjoint of
    :func:`extract_patches` (``<extract(c), q> == <c, place(q)>``). Real or complex."""
    patches = tf.convert_to_tensor(patches)
    n = int(patches.shape[-1])
    h, w = int(shape[0]), int(shape[1])
    x0, y0, fx, fy = _windows(positions, n)
    w00, w01, w10, w11 = _corner_weights(fx, fy, _real_dtype(patches))
    if patches.dtype.is_complex:
        w00, w01, w10, w11 = (tf.cast(t, patches.dtype) for t in (w00, w01, w10, w11))
    win = (
        tf.pad(w00 * patches, [[0, 0], [0, 1], [0, 1]])
        + tf.pad(w01 * patches, [[0, 0], [0, 1], [1, 0]])
        + tf.pad(w10 * patches, [[0, 0], [1, 0], [0, 1]])
        + tf.pad(w11 * patches, [[0, 0], [1, 0], [1, 0]])
    )
    flat, valid = _window_index(x0, y0, n, h, w)
    seg = tf.where(valid, flat, tf.cast(h * w, tf.int64))  # out-of-bounds → a dropped bucket
    out = tf.math.unsorted_segment_sum(tf.reshape(win, [-1]), tf.reshape(seg, [-1]), h * w + 1)
    return tf.reshape(out[:-1], (h, w))


def disk_mask(n: int, radius: float | None = None, *, dtype=tf.float32) -> tf.Tensor:
    """``(n, n)`` disk, radius ``n/4`` by default, centred at ``((n−1)/2, (n−1)/2)``; 1 inside
    (``r² <= radius²``), 0 outside."""
    radius = n / 4 if radius is None else float(radius)
    ax = tf.range(n, dtype=tf.float64) - (n - 1) / 2
    r2 = ax[:, None] ** 2 + ax[None, :] ** 2
    return tf.cast(r2 <= radius * radius, dtype)


def center_mask(n: int, *, dtype=tf.float32) -> tf.Tensor:
    """``(n, n)`` mask (``dtype``), 1 on rows and columns ``[n//4, n//4 + n//2)`` (the central
    ``n/2`` square), 0 elsewhere, as :func:`ptycho_core.physics.center_mask`."""
    ax = tf.range(n)
    inside = (ax >= n // 4) & (ax < n // 4 + n // 2)
    return tf.cast(inside[:, None] & inside[None, :], dtype)


def gaussian_kernel1d(sigma: float, *, dtype=tf.float64) -> tf.Tensor:
    """Normalised 1-D Gaussian of radius ``int(4·sigma + 0.5)`` (scipy.ndimage's truncation)."""
    radius = int(4.0 * float(sigma) + 0.5)
    x = tf.range(-radius, radius + 1, dtype=tf.float64)
    k = tf.exp(-0.5 * (x / float(sigma)) ** 2)
    return tf.cast(k / tf.reduce_sum(k), dtype)


def _band(size: int, k: tf.Tensor) -> tf.Tensor:
    """``(size, size)`` matrix applying the 1-D kernel ``k`` with zero padding."""
    r = (int(k.shape[0]) - 1) // 2
    i = tf.range(size)
    d = i[None, :] - i[:, None] + r
    ok = (d >= 0) & (d <= 2 * r)
    return tf.where(ok, tf.gather(k, tf.clip_by_value(d, 0, 2 * r)), tf.zeros((), k.dtype))


def gaussian_smooth(img: tf.Tensor, sigma: float) -> tf.Tensor:
    """Separable Gaussian blur of ``img (..., H, W)`` (real or complex), zeros outside.
    ``sigma`` in pixels; ``sigma <= 0`` returns ``img`` unchanged."""
    if sigma <= 0:
        return img
    k = gaussian_kernel1d(sigma, dtype=_real_dtype(img))
    h, w = int(img.shape[-2]), int(img.shape[-1])
    return _apply_separable(img, _band(h, k), _band(w, k))


def illuminate(
    probe: tf.Tensor, gaussian_smoothing_sigma: float = 0.0, probe_mask: bool = False
) -> tf.Tensor:
    """Illumination used by the forward model: optional Gaussian blur, then the ``N/4`` disk.
    probe: ``(N, N)`` complex64 (normalised). Returns ``(N, N)`` complex64."""
    p = gaussian_smooth(probe, gaussian_smoothing_sigma)
    if probe_mask:
        p = p * tf.cast(disk_mask(int(p.shape[-1])), p.dtype)
    return p


def forward_model(
    obj_patches: tf.Tensor,
    probe: tf.Tensor,
    gaussian_smoothing_sigma: float = 0.0,
    probe_mask: bool = False,
) -> tf.Tensor:
    """Far-field amplitude ``|fftshift(fft2(illuminate(P)·O))| / N`` (``specs/physics.md``).

    obj_patches: ``(..., N, N)`` complex64; probe ``(N, N)`` complex64. Returns ``(..., N, N)``
    float32 with DC at ``(N/2, N/2)``; ``ΣA² = Σ|ψ|²`` (Parseval).
    """
    n = int(obj_patches.shape[-1])
    psi = illuminate(probe, gaussian_smoothing_sigma, probe_mask) * obj_patches
    far = tf.signal.fftshift(tf.signal.fft2d(psi), axes=(-2, -1))
    return tf.abs(far) / n


def forward_model_cl(
    obj: tf.Tensor,
    probe: tf.Tensor,
    gaussian_smoothing_sigma: float = 0.0,
    probe_mask: bool = False,
) -> tf.Tensor:
    """:func:`forward_model` in TF layout: ``(B, N, N, C)`` complex64 → ``(B, N, N, C)`` float32."""
    amp = forward_model(
        tf.transpose(obj, (0, 3, 1, 2)), probe, gaussian_smoothing_sigma, probe_mask
    )
    return tf.transpose(amp, (0, 2, 3, 1))


def data_projection(
    obj_patches: tf.Tensor,
    amplitude: tf.Tensor,
    illumination: tf.Tensor,
    regularization: float,
    softening: float,
) -> tf.Tensor:
    """One data projection (``specs/model.md``, "Physics stages";
    :func:`ptycho_core.physics.data_projection`): the far field of ``illumination · O`` moves
    to the measured ``amplitude`` ``A`` (normalised units), ``Ψ·(A + ε)/(|Ψ| + ε)``, keeping
    its phase; the object moves by ``Ī·(ψ' − ψ) / (|I|² + α·max|I|²)``. ``(..., N, N)``
    complex64 → the same; differentiable."""
    n = int(obj_patches.shape[-1])
    cn = tf.complex(float(n), 0.0)
    psi = illumination * obj_patches
    far = tf.signal.fftshift(tf.signal.fft2d(psi), axes=(-2, -1)) / cn
    re, im = tf.math.real(far), tf.math.imag(far)
    ratio = (tf.cast(amplitude, tf.float32) + softening) / (
        tf.sqrt(re * re + im * im + 1e-12) + softening
    )
    far = far * tf.complex(ratio, tf.zeros_like(ratio))
    psi_new = tf.signal.ifft2d(tf.signal.ifftshift(far, axes=(-2, -1))) * cn
    ir, ii = tf.math.real(illumination), tf.math.imag(illumination)
    w = ir * ir + ii * ii
    den = w + regularization * tf.reduce_max(w)
    return obj_patches + tf.math.conj(illumination) * (psi_new - psi) / tf.complex(
        den, tf.zeros_like(den)
    )


def data_projection_cl(
    obj: tf.Tensor,
    amplitude: tf.Tensor,
    illumination: tf.Tensor,
    regularization: float,
    softening: float,
) -> tf.Tensor:
    """:func:`data_projection` in TF layout: object and amplitude ``(B, N, N, C)``,
    illumination ``(N, N)`` → ``(B, N, N, C)`` complex64."""
    out = data_projection(
        tf.transpose(obj, (0, 3, 1, 2)),
        tf.transpose(amplitude, (0, 3, 1, 2)),
        illumination,
        regularization,
        softening,
    )
    return tf.transpose(out, (0, 2, 3, 1))


def poisson_nll(
    pred_intensity: tf.Tensor, observed_counts: tf.Tensor, eps: float = 1e-12
) -> tf.Tensor:
    """``mean(I_pred − I_obs·log(I_pred + eps))``, scalar float32 (counts in photons)."""
    return tf.reduce_mean(pred_intensity - observed_counts * tf.math.log(pred_intensity + eps))


def merge_canvas_size(n: int, offsets: tf.Tensor) -> tf.Tensor:
    """Canvas side in pixels, ``n + 2·ceil(max|offset|)`` over the whole batch, rounded up to
    even (``specs/model.md``; :func:`ptycho_core.physics.merge_canvas_size`). A scalar int32
    tensor: the side is data-dependent inside a traced graph."""
    m = tf.cast(tf.math.ceil(tf.reduce_max(tf.abs(offsets))), tf.int32)
    side = n + 2 * m
    return side + side % 2


def merge_weight(
    probe: tf.Tensor, gaussian_smoothing_sigma: float = 0.0, probe_mask: bool = False
) -> tf.Tensor:
    """Merge weight of ``merge_weights='probe'``: ``|I(P)|² / max|I(P)|²`` (``specs/model.md``).

    probe: ``(N, N)`` complex (any scale); ``I`` is :func:`illuminate` (the forward model's
    illumination). Returns ``(N, N)`` real (the probe's real dtype), peak 1, as
    :func:`ptycho_core.physics.merge_weight`. Differentiable; the model stops its gradient.
    """
    p = illuminate(tf.convert_to_tensor(probe), gaussian_smoothing_sigma, probe_mask)
    w = tf.square(tf.abs(p))
    return tf.math.divide_no_nan(w, tf.reduce_max(w))  # a zero probe gives zero weights


def object_big_merge(patches: tf.Tensor, offsets: tf.Tensor, weight=None) -> tf.Tensor:
    """Per-sample overlap merge and re-extraction (``specs/model.md`` ``object_big``, ADR-002).

    patches: ``(B, C, N, N)`` complex object patches (the generic layout; ``N`` even);
    offsets: ``(B, C, 2)`` ``(dx, dy)`` pixels of each channel from its group centre; weight:
    ``(N, N)`` real ``>= 0`` (or broadcasting to ``(B, C, N, N)``), e.g. :func:`merge_weight` of
    the probe, ``None`` for the centre ``N/2`` square mask (legacy ``merge_weights='centre'``).
    Sample ``b``'s channels are placed on sample ``b``'s own canvas (no clipping), averaged with
    the weight map translated like its patch as weights (the same weights in numerator and
    denominator, denominator floored at 1e-3), and each channel is re-extracted at its offset.
    Returns ``(B, C, N, N)``, dtype of ``patches``. Tested against the NumPy oracle
    :func:`ptycho_core.physics.object_big_merge`.
    """
    x = tf.convert_to_tensor(patches)
    n = int(x.shape[-1])
    if n % 2:
        raise ValueError(f"patch size N must be even, got {n}")
    rdt = _real_dtype(x)
    offsets = tf.cast(offsets, rdt)
    w = center_mask(n, dtype=rdt) if weight is None else tf.cast(weight, rdt)
    side = merge_canvas_size(n, offsets)
    p = (side - n) // 2
    pads = [[0, 0]] * (w.shape.rank - 2) + [[p, p], [p, p]]
    pad_patch = tf.pad(x * tf.cast(w, x.dtype), [[0, 0], [0, 0], [p, p], [p, p]])
    pad_w = tf.pad(w, pads)
    ty = shift_matrix(side, offsets[..., 1])  # (B, C, side, side)
    tx = shift_matrix(side, offsets[..., 0])
    num = tf.reduce_sum(_apply_separable(pad_patch, ty, tx), axis=1)  # (B, side, side)
    den = tf.reduce_sum(_apply_separable(pad_w, ty, tx), axis=1)
    safe = tf.cast(tf.maximum(den, 1e-3), x.dtype)
    merged = tf.where(den > 0, num / safe, tf.zeros_like(num))
    start = tf.cast(p, rdt)
    ey = shift_matrix(side, -offsets[..., 1], out_size=n, start=start)  # (B, C, n, side)
    ex = shift_matrix(side, -offsets[..., 0], out_size=n, start=start)
    return _apply_separable(merged[:, None], ey, ex)  # (B, C, n, n)


def object_big_merge_cl(patches: tf.Tensor, offsets: tf.Tensor, weight=None) -> tf.Tensor:
    """:func:`object_big_merge` in TF layout: patches ``(B, N, N, C)`` complex64, offsets
    ``(B, C, 2)`` pixels, weight ``(N, N)`` real or ``None`` (centre mask) →
    ``(B, N, N, C)`` complex64."""
    out = object_big_merge(tf.transpose(patches, (0, 3, 1, 2)), offsets, weight)
    return tf.transpose(out, (0, 2, 3, 1))


def translate_channels_cl(patch: tf.Tensor, shifts: tf.Tensor) -> tf.Tensor:
    """Translate a ``(B, N, N, 1)`` (or ``(B, N, N, C)``) patch to each of ``C`` channels:
    channel ``c`` moved by ``+shifts[:, c]`` (``(B, C, 2)``, pixels). Returns ``(B, N, N, C)``."""
    x = tf.transpose(patch, (0, 3, 1, 2))  # (B, 1|C, N, N)
    return tf.transpose(translate(x, shifts), (0, 2, 3, 1))
