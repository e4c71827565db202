"""NumPy kernels of the refinement solver (``specs/refinement.md``); the public API is
:mod:`ptycho_core.refine`.

Everything works on a *working canvas* that holds every patch block, so gathers and scatters
need no padding or clipping. Frames and units are those of ``specs/physics.md``: canvas arrays
``[row, col] = [y, x]``, positions ``(x, y)`` in canvas pixels, diffraction amplitudes in photon
units (``sqrt(counts)``), zero frequency at ``(N/2, N/2)``.

The propagator is the unitary centred DFT ``F ψ = fftshift(fft2(ψ)) / N`` of the forward model
(:func:`ptycho_core.physics.forward_model` is ``|F(P·O)|``); for even ``N`` it equals
``fft2(ψ · c, norm="ortho")`` with the checkerboard ``c = (−1)^(i+j)``, and its inverse is
``c · ifft2(·, norm="ortho")``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import fft as sp_fft

__all__ = [
    "NOISE_MODELS",
    "split_positions",
    "gather",
    "blend",
    "blend_adjoint",
    "extract",
    "scatter",
    "scatter_real",
    "propagate",
    "back_propagate",
    "residual",
    "checkerboard",
    "gradients",
    "re_dot",
    "re_dot_each",
    "solve_position_steps",
    "position_steps",
    "lsq_step_lengths",
    "step_lengths",
]

#: The noise models of ``specs/refinement.md``.
NOISE_MODELS = ("poisson", "gaussian")
#: Added to the predicted intensity in the Poisson terms (photon counts).
POISSON_EPS = 1e-6


def checkerboard(n: int) -> np.ndarray:
    """``(−1)^(i+j)`` as ``(n, n) float32``."""
    i = np.arange(n)
    return np.where((i[:, None] + i[None, :]) % 2, -1.0, 1.0).astype(np.float32)


def split_positions(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Block origins ``k = floor(p − N/2)`` (int64 ``(B, 2)``, ``(x, y)``) and fractions ``p − N/2 −
    k`` in ``[0, 1)`` (float64 ``(B, 2)``) of canvas positions ``(B, 2)``."""
    c = np.asarray(positions, dtype=np.float64) - n / 2
    k = np.floor(c)
    return k.astype(np.int64), c - k


def _fractions(f: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(1−fy, fy, 1−fx, fx)`` as float32 ``(B, 1, 1)`` from fractions ``(B, 2)`` ``(x, y)``."""
    fx = f[:, 0].astype(np.float32).reshape(-1, 1, 1)
    fy = f[:, 1].astype(np.float32).reshape(-1, 1, 1)
    return 1 - fy, fy, 1 - fx, fx


def gather(canvas: np.ndarray, k: np.ndarray, n: int) -> np.ndarray:
    """The ``(B, N+1, N+1)`` integer blocks of ``canvas`` starting at ``k`` ``(B, 2)`` ``(x, y)``
    (every block must lie inside the canvas)."""
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (n + 1, n + 1))
    return windows[k[:, 1], k[:, 0]]


#: Patches blended at once: keeps the float32 temporaries in cache.
_SUB = 32


def blend(block: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Bilinear blend of complex64 blocks ``(B, N+1, N+1)`` into patches ``(B, N, N)`` with the
    fractions ``f`` ``(B, 2)`` (the map of :func:`ptycho_core.physics._blend`), in float32 on
    the interleaved real/imaginary view, :data:`_SUB` patches at a time."""
    b, n1 = block.shape[0], block.shape[1]
    out = np.empty((b, n1 - 1, 2 * (n1 - 1)), np.float32)
    for s in range(0, b, _SUB):
        sl = slice(s, s + _SUB)
        gy, fy, gx, fx = _fractions(f[sl])
        v = np.ascontiguousarray(block[sl], dtype=np.complex64).view(np.float32)
        rows = v[:, :-1, :] * gy
        rows += v[:, 1:, :] * fy
        o = out[sl]
        np.multiply(rows[:, :, :-2], gx, out=o)
        o += rows[:, :, 2:] * fx
    return out.view(np.complex64)


def blend_adjoint(values: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Transpose of :func:`blend`: complex64 ``(B, N, N)`` → ``(B, N+1, N+1)``."""
    b, n = values.shape[0], values.shape[1]
    out = np.empty((b, n + 1, 2 * (n + 1)), np.float32)
    for s in range(0, b, _SUB):
        sl = slice(s, s + _SUB)
        gy, fy, gx, fx = _fractions(f[sl])
        v = np.ascontiguousarray(values[sl], dtype=np.complex64).view(np.float32)
        cols = np.empty((v.shape[0], n, 2 * n + 2), np.float32)
        np.multiply(v, gx, out=cols[:, :, :-2])
        cols[:, :, -2:] = 0
        cols[:, :, 2:] += v * fx
        o = out[sl]
        np.multiply(cols, gy, out=o[:, :-1, :])
        o[:, -1, :] = 0
        o[:, 1:, :] += cols * fy
    return out.view(np.complex64)


def extract(canvas: np.ndarray, positions: np.ndarray, n: int) -> np.ndarray:
    """:func:`ptycho_core.physics.extract_patches` on a canvas that holds every block:
    ``(B, N, N)`` complex64."""
    k, f = split_positions(positions, n)
    return blend(gather(canvas, k, n), f)


def scatter(acc: np.ndarray, values: np.ndarray, positions: np.ndarray) -> None:
    """Add :func:`ptycho_core.physics.place_patches` of complex ``values (B, N, N)`` at canvas
    ``positions`` to the complex canvas ``acc`` (in place; every block inside it)."""
    n = values.shape[-1]
    k, f = split_positions(positions, n)
    blocks = blend_adjoint(values, f)
    for i in range(len(k)):
        acc[k[i, 1] : k[i, 1] + n + 1, k[i, 0] : k[i, 0] + n + 1] += blocks[i]


def scatter_real(acc: np.ndarray, values: np.ndarray, positions: np.ndarray) -> None:
    """:func:`scatter` of real ``values (B, N, N)`` onto a real canvas ``acc``."""
    n = values.shape[-1]
    k, f = split_positions(positions, n)
    blocks = blend_adjoint(values.astype(np.complex64), f).real
    for i in range(len(k)):
        acc[k[i, 1] : k[i, 1] + n + 1, k[i, 0] : k[i, 0] + n + 1] += blocks[i]


def propagate(psi: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """``F ψ`` for exit waves ``(B, N, N)`` complex64 (unitary, zero frequency at ``N/2``)."""
    return sp_fft.fft2(psi * cb, axes=(-2, -1), norm="ortho", overwrite_x=True)


def back_propagate(field: np.ndarray, cb: np.ndarray) -> np.ndarray:
    """``F^H Φ`` (the inverse of :func:`propagate`), ``(B, N, N)`` complex64."""
    out = sp_fft.ifft2(field, axes=(-2, -1), norm="ortho", overwrite_x=True)
    out *= cb
    return out


def residual(far: np.ndarray, amp: np.ndarray, noise: str) -> tuple[np.ndarray, float]:
    """Fourier-space correction ``R`` (the exit-wave correction is ``χ = F^H R``) and the misfit.

    ``far``: ``Ψ = F(P·O)`` ``(B, N, N)`` complex64; ``amp``: measured amplitude ``X`` ``(B, N,
    N)`` float32 (photon units). With ``a = |Ψ|``, ``λ = a²``, ``I = X²``, ``ε`` =
    :data:`POISSON_EPS`:

    * ``gaussian``: misfit ``Σ (a − X)²``; ``R = Ψ (1 − X/a)`` (``Ψ − R`` is the modulus
      projection; ``R`` is the misfit's Wirtinger gradient ``∂/∂Ψ*``);
    * ``poisson``: misfit ``Σ [λ − I − (I+ε) log((λ+ε)/(I+ε))]``, half the Poisson deviance of
      the rate ``λ+ε`` for the counts ``I+ε`` (the NLL minus its value at ``λ = I``; ≥ 0),
      computed as ``(I+ε)(d − log1p(d))`` with ``d = (λ − I)/(I + ε)`` kept above ``−1 + 1e−6``
      (no cancellation near the fit in float32); ``R = Ψ (λ − I)/(λ + I + ε)``, the per-pixel
      Newton step of the NLL along ``|Ψ|``.

    Returns ``(R, misfit)``; the misfit is a Python float (photon counts, summed over the batch).
    """
    a2 = np.square(far.real)
    a2 += np.square(far.imag)
    if noise == "gaussian":
        a = np.sqrt(a2, out=a2)
        diff = a - amp
        misfit = float(np.sum(np.square(diff), dtype=np.float64))
        np.maximum(a, np.float32(1e-12), out=a)
        ratio = np.divide(diff, a, out=diff)
    elif noise == "poisson":
        den = np.square(amp)
        den += np.float32(POISSON_EPS)  # I + ε
        diff = a2 - den  # λ − I − ε
        diff += np.float32(POISSON_EPS)  # λ − I
        d = np.divide(diff, den)
        np.maximum(d, np.float32(-1 + 1e-6), out=d)
        terms = np.log1p(d)
        np.subtract(d, terms, out=terms)
        terms *= den
        misfit = float(np.sum(terms, dtype=np.float64))
        a2 += den  # λ + I + ε
        ratio = np.divide(diff, a2, out=diff)
    else:
        raise ValueError(f"noise must be one of {NOISE_MODELS}, got {noise!r}")
    return far * ratio, misfit


def gradients(canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences ``(∂O/∂x, ∂O/∂y)`` of the canvas (zero on its rim), complex64."""
    gx = np.zeros_like(canvas)
    gy = np.zeros_like(canvas)
    gx[:, 1:-1] = (canvas[:, 2:] - canvas[:, :-2]) * np.float32(0.5)
    gy[1:-1, :] = (canvas[2:, :] - canvas[:-2, :]) * np.float32(0.5)
    return gx, gy


def re_dot_each(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``Σ Re(conj(a)·b)`` per pattern, ``(B,)`` float64 from ``(B, N, N)``."""
    return np.asarray(np.sum(a.real * b.real + a.imag * b.imag, axis=(-2, -1), dtype=np.float64))


def re_dot(a: np.ndarray, b: np.ndarray) -> float:
    """``Σ Re(conj(a)·b)`` over every element, accumulated in float64."""
    return float(np.sum(a.real * b.real + a.imag * b.imag, dtype=np.float64))


def solve_position_steps(hxx: Any, hyy: Any, hxy: Any, bx: Any, by: Any) -> tuple[Any, Any]:
    """The per-pattern 2×2 Gauss–Newton solve of :func:`position_steps`, damped by 1e-6 of the
    trace: ``H = [[hxx, hxy], [hxy, hyy]]``, ``b = (bx, by)`` (``(B,)`` float64 arrays of any
    framework with arithmetic operators), returns ``−H⁻¹ b`` as ``(dx, dy)``."""
    damp = 1e-6 * (hxx + hyy) + 1e-30
    hxx, hyy = hxx + damp, hyy + damp
    det = hxx * hyy - hxy * hxy
    return -(hyy * bx - hxy * by) / det, -(hxx * by - hxy * bx) / det


def position_steps(
    chi: np.ndarray, dpsi_x: np.ndarray, dpsi_y: np.ndarray, cap: float
) -> np.ndarray:
    """Gauss–Newton position steps ``(B, 2)`` ``(dx, dy)`` pixels: the ``δ`` minimising
    ``‖χ_m + δ_x ∂ψ_m/∂x + δ_y ∂ψ_m/∂y‖²`` per pattern (a 2×2 solve, damped by 1e-6 of its
    trace), each component clipped to ``±cap``. Inputs ``(B, N, N)`` complex."""
    hxx, hyy, hxy = (
        re_dot_each(dpsi_x, dpsi_x),
        re_dot_each(dpsi_y, dpsi_y),
        re_dot_each(dpsi_x, dpsi_y),
    )
    dx, dy = solve_position_steps(hxx, hyy, hxy, re_dot_each(dpsi_x, chi), re_dot_each(dpsi_y, chi))
    return np.asarray(np.clip(np.stack([dx, dy], axis=1), -cap, cap))


def lsq_step_lengths(
    dot: Callable[[Any, Any], float], chi: Any, u: Any, v: Any, max_step: float = 4.0
) -> tuple[float, float]:
    """Least-squares step lengths ``(α_O, α_P)`` minimising ``‖χ − α_O u − α_P v‖²`` over the
    batch (``u = P·E(ΔO)``, ``v = ΔP·O_m``, ``(B, N, N)`` complex arrays of any framework;
    ``v`` None: object only), each clipped to ``[0, max_step]`` (LSQML,
    ``specs/refinement.md``). ``dot(a, b)``: ``Σ Re(conj(a)·b)`` as a float."""
    uu, uc = dot(u, u), dot(u, chi)
    if v is None:
        a_obj = uc / uu if uu > 0 else 0.0
        return float(np.clip(a_obj, 0.0, max_step)), 0.0
    vv, vc, uv = dot(v, v), dot(v, chi), dot(u, v)
    damp = 1e-6 * (uu + vv) + 1e-30
    det = (uu + damp) * (vv + damp) - uv * uv
    a_obj = ((vv + damp) * uc - uv * vc) / det
    a_probe = ((uu + damp) * vc - uv * uc) / det
    return float(np.clip(a_obj, 0.0, max_step)), float(np.clip(a_probe, 0.0, max_step))


def step_lengths(
    chi: np.ndarray, u: np.ndarray, v: np.ndarray | None, max_step: float = 4.0
) -> tuple[float, float]:
    """:func:`lsq_step_lengths` of NumPy arrays."""
    return lsq_step_lengths(re_dot, chi, u, v, max_step)
