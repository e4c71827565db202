"""The refinement solver in TensorFlow (``specs/refinement.md``): the op table
(:class:`ptycho_core.refine.RefineOps`) of :class:`TFOps` on eager TF tensors (TF places them on
a GPU when one is visible). The iterations themselves (:class:`ptycho_core.refine.RefineRun`),
the set-up and the result are core's, shared with the NumPy reference it is tested against
(float32 tolerance). TF tensors are immutable: every update returns a new tensor.

Use ``ptycho_core.refine.refine(..., solver=TFSolver())`` or :func:`refine`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from ptycho_core.refine import Progress, RefineProblem, RefineResult, RefineRun, SolverOutput
from ptycho_core.refine import refine as core_refine

__all__ = ["RESIDENT_BYTES", "TFOps", "TFSolver", "refine"]

#: Measured patterns up to this size are copied to the device once; larger scans per chunk.
RESIDENT_BYTES = 1 << 30
_POISSON_EPS = 1e-6
_C64 = tf.complex64


def _c(x: tf.Tensor) -> tf.Tensor:
    """A real float32 tensor as complex64."""
    return tf.complex(x, tf.zeros_like(x))


def _blocks(pos: tf.Tensor, n: int, width: int) -> tuple[tf.Tensor, tuple[tf.Tensor, ...]]:
    """Flat canvas indices ``(B, N+1, N+1)`` of the blocks of ``pos`` ``(B, 2)`` ``(x, y)`` and
    the bilinear weights ``(1−fy, fy, 1−fx, fx)``, complex64 ``(B, 1, 1)``
    (``ptycho_core._refine_ops.split_positions``)."""
    c = pos - n / 2
    k = tf.floor(c)
    f = tf.cast(c - k, tf.float32)
    fx, fy = _c(f[:, 0])[:, None, None], _c(f[:, 1])[:, None, None]
    ki = tf.cast(k, tf.int64)
    ar = tf.range(n + 1, dtype=tf.int64)
    rows = (ki[:, 1, None, None] + ar[None, :, None]) * width
    return rows + (ki[:, 0, None, None] + ar[None, None, :]), (1 - fy, fy, 1 - fx, fx)


def _sum64(x: tf.Tensor, axis: Any = None) -> tf.Tensor:
    return tf.reduce_sum(tf.cast(x, tf.float64), axis=axis)


class TFOps:
    """:class:`ptycho_core.refine.RefineOps` on eager TF tensors (functional updates)."""

    def __init__(self, resident_bytes: int = RESIDENT_BYTES) -> None:
        self.device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        self.resident_bytes = resident_bytes

    # -- data movement --------------------------------------------------------------------
    def asarray(self, a: np.ndarray) -> tf.Tensor:
        return tf.constant(a)

    def to_numpy(self, x: tf.Tensor) -> np.ndarray:
        return np.array(x.numpy())

    def index(self, index: np.ndarray) -> np.ndarray:
        return index

    def take(self, x: tf.Tensor, index: np.ndarray) -> tf.Tensor:
        return tf.gather(x, index)

    def add_rows(self, x: tf.Tensor, index: np.ndarray, values: tf.Tensor) -> tf.Tensor:
        return tf.tensor_scatter_nd_add(x, tf.constant(index[:, None]), values)

    def concat(self, parts: list[tf.Tensor]) -> tf.Tensor:
        return tf.concat(parts, axis=0)

    def sync(self) -> None:
        return None

    # -- kernels --------------------------------------------------------------------------
    def checkerboard(self, n: int) -> tf.Tensor:
        i = np.arange(n)
        return tf.constant(np.where((i[:, None] + i[None, :]) % 2, -1.0, 1.0).astype(np.complex64))

    def zeros_like(self, x: tf.Tensor) -> tf.Tensor:
        return tf.zeros_like(x)

    def extract(self, canvas: tf.Tensor, pos: tf.Tensor, n: int) -> tf.Tensor:
        idx, (gy, fy, gx, fx) = _blocks(pos, n, int(canvas.shape[1]))
        block = tf.gather(tf.reshape(canvas, [-1]), idx)
        rows = block[:, :-1, :] * gy + block[:, 1:, :] * fy
        return rows[:, :, :-1] * gx + rows[:, :, 1:] * fx

    def scatter(self, acc: tf.Tensor, values: tf.Tensor, pos: tf.Tensor) -> tf.Tensor:
        idx, (gy, fy, gx, fx) = _blocks(pos, int(values.shape[-1]), int(acc.shape[1]))
        zc = tf.zeros_like(values[:, :, :1])
        cols = tf.concat([values * gx, zc], axis=2) + tf.concat([zc, values * fx], axis=2)
        zr = tf.zeros_like(cols[:, :1, :])
        block = tf.concat([cols * gy, zr], axis=1) + tf.concat([zr, cols * fy], axis=1)
        flat = tf.tensor_scatter_nd_add(
            tf.reshape(acc, [-1]), tf.reshape(idx, [-1, 1]), tf.reshape(block, [-1])
        )
        return tf.reshape(flat, acc.shape)

    def illumination(
        self, shape: tuple[int, int], probe: tf.Tensor, positions: list[tf.Tensor]
    ) -> tf.Tensor:
        acc = tf.zeros(shape, _C64)
        p2 = _c(tf.square(tf.math.real(probe)) + tf.square(tf.math.imag(probe)))
        for pos in positions:
            acc = self.scatter(acc, tf.broadcast_to(p2, (len(pos), *p2.shape)), pos)
        return tf.math.real(acc)

    def propagate(self, psi: tf.Tensor, cb: tf.Tensor) -> tf.Tensor:
        return tf.signal.fft2d(psi * cb) / tf.cast(int(psi.shape[-1]), _C64)

    def back_propagate(self, far: tf.Tensor, cb: tf.Tensor) -> tf.Tensor:
        return tf.signal.ifft2d(far) * tf.cast(int(far.shape[-1]), _C64) * cb

    def residual(self, far: tf.Tensor, amp: tf.Tensor, noise: str) -> tuple[tf.Tensor, float]:
        a2 = tf.math.square(tf.math.real(far)) + tf.math.square(tf.math.imag(far))
        if noise == "gaussian":
            a = tf.sqrt(a2)
            diff = a - amp
            misfit = float(_sum64(tf.square(diff)))
            ratio = diff / tf.maximum(a, 1e-12)
        else:
            den = amp * amp + _POISSON_EPS
            diff = a2 - den + _POISSON_EPS
            d = tf.maximum(diff / den, -1 + 1e-6)
            misfit = float(_sum64(den * (d - tf.math.log1p(d))))
            ratio = diff / (a2 + den)
        return far * _c(ratio), misfit

    def gradients(self, canvas: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        zc = tf.zeros_like(canvas[:, :1])
        gx = tf.concat([zc, (canvas[:, 2:] - canvas[:, :-2]) * 0.5, zc], axis=1)
        zr = tf.zeros_like(canvas[:1, :])
        gy = tf.concat([zr, (canvas[2:, :] - canvas[:-2, :]) * 0.5, zr], axis=0)
        return gx, gy

    def conj(self, x: tf.Tensor) -> tf.Tensor:
        return tf.math.conj(x)

    def probe_sums(self, patches: tf.Tensor, chi: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        g = tf.reduce_sum(tf.math.conj(patches) * chi, axis=0)
        w = tf.square(tf.math.real(patches)) + tf.square(tf.math.imag(patches))
        return g, tf.reduce_sum(w, axis=0)

    def normalise(self, g: tf.Tensor, weight: tf.Tensor, delta: float) -> tf.Tensor:
        return g / _c(weight + delta * tf.reduce_max(weight))

    def re_dot(self, a: tf.Tensor, b: tf.Tensor) -> float:
        return float(self.re_dot_each(a, b, axis=None))

    def re_dot_each(self, a: tf.Tensor, b: tf.Tensor, axis: Any = (1, 2)) -> tf.Tensor:
        re, im = tf.math.real, tf.math.imag
        return _sum64(re(a) * re(b) + im(a) * im(b), axis=None if axis is None else list(axis))

    def stack_steps(self, dx: tf.Tensor, dy: tf.Tensor, cap: float) -> tf.Tensor:
        return tf.clip_by_value(tf.stack([dx, dy], axis=1), -cap, cap)

    def sub_scaled(self, x: tf.Tensor, coef: float, d: tf.Tensor, *, in_place: bool) -> tf.Tensor:
        return x - tf.constant(coef, _C64) * d

    def clip(self, pos: tf.Tensor, lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
        return tf.maximum(tf.minimum(pos, hi), lo)

    def mean_rows(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(x, axis=0)


class TFSolver:
    """The refinement update of ``specs/refinement.md`` in TensorFlow (eager).
    ``resident_bytes``: see :data:`RESIDENT_BYTES` (None: that value)."""

    name = "tensorflow"

    def __init__(self, *, resident_bytes: int | None = None) -> None:
        self.resident_bytes = resident_bytes

    def solve(self, problem: RefineProblem, progress: Progress | None = None) -> SolverOutput:
        limit = RESIDENT_BYTES if self.resident_bytes is None else self.resident_bytes
        return RefineRun(problem, TFOps(limit)).solve(progress)


def refine(*args: Any, **kwargs: Any) -> RefineResult:
    """:func:`ptycho_core.refine.refine` (same arguments) with :class:`TFSolver`."""
    return core_refine(*args, solver=TFSolver(), **kwargs)
