"""The refinement solver in TensorFlow (``specs/refinement.md``): the update of the NumPy
reference :class:`ptycho_core.refine.NumpySolver`, step for step, on TF tensors (eager; TF
places them on a GPU when one is visible). Tested against the reference on the same inputs
(float32 tolerance); the mirror of ``ptycho_torch.refine``.

Set-up and result come from :mod:`ptycho_core.refine`; only the iterations run here. Use
``ptycho_core.refine.refine(..., solver=TFSolver())`` or :func:`refine`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from ptycho_core.refine import (
    CACHE_BYTES,
    IterationInfo,
    Progress,
    RefineOptions,
    RefineProblem,
    RefineResult,
    RunLoop,
    SolverOutput,
)
from ptycho_core.refine import refine as core_refine

__all__ = ["TFSolver", "refine", "RESIDENT_BYTES"]

logger = logging.getLogger(__name__)

#: Measured patterns up to this size are copied to the device once; larger scans per chunk.
RESIDENT_BYTES = 1 << 30
_POISSON_EPS = 1e-6
_C64 = tf.complex64


def _c(x: tf.Tensor) -> tf.Tensor:
    """A real float32 tensor as complex64."""
    return tf.complex(x, tf.zeros_like(x))


# ----------------------------------------------------------------------------- kernels
def _split(pos: tf.Tensor, n: int) -> tuple[tf.Tensor, tf.Tensor]:
    c = pos - n / 2
    k = tf.floor(c)
    return tf.cast(k, tf.int64), c - k


def _window_index(k: tf.Tensor, n: int, width: int) -> tf.Tensor:
    ar = tf.range(n + 1, dtype=tf.int64)
    rows = (k[:, 1, None, None] + ar[None, :, None]) * width
    return rows + (k[:, 0, None, None] + ar[None, None, :])


def _weights(f: tf.Tensor) -> tuple[tf.Tensor, ...]:
    fx = _c(tf.cast(f[:, 0], tf.float32))[:, None, None]
    fy = _c(tf.cast(f[:, 1], tf.float32))[:, None, None]
    return 1 - fy, fy, 1 - fx, fx


def extract(canvas: tf.Tensor, pos: tf.Tensor, n: int) -> tf.Tensor:
    """Bilinear ``(B, N, N)`` complex64 patches of a canvas holding every block (the map of
    :func:`ptycho_core._refine_ops.extract`)."""
    k, f = _split(pos, n)
    block = tf.gather(tf.reshape(canvas, [-1]), _window_index(k, n, int(canvas.shape[1])))
    gy, fy, gx, fx = _weights(f)
    rows = block[:, :-1, :] * gy + block[:, 1:, :] * fy
    return rows[:, :, :-1] * gx + rows[:, :, 1:] * fx


def scatter(acc: tf.Tensor, values: tf.Tensor, pos: tf.Tensor) -> tf.Tensor:
    """``acc`` plus the adjoint of :func:`extract` of ``values (B, N, N)`` (a new tensor)."""
    n = int(values.shape[-1])
    k, f = _split(pos, n)
    gy, fy, gx, fx = _weights(f)
    zc = tf.zeros_like(values[:, :, :1])
    cols = tf.concat([values * gx, zc], axis=2) + tf.concat([zc, values * fx], axis=2)
    zr = tf.zeros_like(cols[:, :1, :])
    block = tf.concat([cols * gy, zr], axis=1) + tf.concat([zr, cols * fy], axis=1)
    idx = tf.reshape(_window_index(k, n, int(acc.shape[1])), [-1, 1])
    flat = tf.tensor_scatter_nd_add(tf.reshape(acc, [-1]), idx, tf.reshape(block, [-1]))
    return tf.reshape(flat, acc.shape)


def _checkerboard(n: int) -> tf.Tensor:
    i = np.arange(n)
    cb = np.where((i[:, None] + i[None, :]) % 2, -1.0, 1.0).astype(np.complex64)
    return tf.constant(cb)


def propagate(psi: tf.Tensor, cb: tf.Tensor) -> tf.Tensor:
    n = int(psi.shape[-1])
    return tf.signal.fft2d(psi * cb) / tf.cast(n, _C64)


def back_propagate(field: tf.Tensor, cb: tf.Tensor) -> tf.Tensor:
    n = int(field.shape[-1])
    return tf.signal.ifft2d(field) * tf.cast(n, _C64) * cb


def _sum64(x: tf.Tensor) -> float:
    return float(tf.reduce_sum(tf.cast(x, tf.float64)))


def residual(far: tf.Tensor, amp: tf.Tensor, noise: str) -> tuple[tf.Tensor, float]:
    """:func:`ptycho_core._refine_ops.residual` in TensorFlow: ``(R, misfit)``."""
    a2 = tf.math.square(tf.math.real(far)) + tf.math.square(tf.math.imag(far))
    if noise == "gaussian":
        a = tf.sqrt(a2)
        diff = a - amp
        misfit = _sum64(tf.square(diff))
        ratio = diff / tf.maximum(a, 1e-12)
    else:
        den = amp * amp + _POISSON_EPS
        diff = a2 - den + _POISSON_EPS
        d = tf.maximum(diff / den, -1 + 1e-6)
        misfit = _sum64(den * (d - tf.math.log1p(d)))
        ratio = diff / (a2 + den)
    return far * _c(ratio), misfit


def _re_prod(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    prod = tf.math.real(a) * tf.math.real(b) + tf.math.imag(a) * tf.math.imag(b)
    return tf.cast(prod, tf.float64)


def position_steps(chi: tf.Tensor, dx: tf.Tensor, dy: tf.Tensor, cap: float) -> tf.Tensor:
    """:func:`ptycho_core._refine_ops.position_steps` in TensorFlow: ``(B, 2)`` float64."""

    def dot(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.reduce_sum(_re_prod(a, b), axis=[1, 2])

    hxx, hyy, hxy = dot(dx, dx), dot(dy, dy), dot(dx, dy)
    bx, by = dot(dx, chi), dot(dy, chi)
    damp = 1e-6 * (hxx + hyy) + 1e-30
    hxx, hyy = hxx + damp, hyy + damp
    det = hxx * hyy - hxy * hxy
    sx = -(hyy * bx - hxy * by) / det
    sy = -(hxx * by - hxy * bx) / det
    return tf.clip_by_value(tf.stack([sx, sy], axis=1), -cap, cap)


def step_lengths(
    chi: tf.Tensor, u: tf.Tensor, v: tf.Tensor | None, max_step: float = 4.0
) -> tuple[float, float]:
    """:func:`ptycho_core._refine_ops.step_lengths` in TensorFlow."""

    def dot(a: tf.Tensor, b: tf.Tensor) -> float:
        return float(tf.reduce_sum(_re_prod(a, b)))

    uu, uc = dot(u, u), dot(u, chi)
    if v is None:
        return float(np.clip(uc / uu if uu > 0 else 0.0, 0.0, max_step)), 0.0
    vv, vc, uv = dot(v, v), dot(v, chi), dot(u, v)
    damp = 1e-6 * (uu + vv) + 1e-30
    det = (uu + damp) * (vv + damp) - uv * uv
    a_obj = ((vv + damp) * uc - uv * vc) / det
    a_probe = ((uu + damp) * vc - uv * uc) / det
    return float(np.clip(a_obj, 0.0, max_step)), float(np.clip(a_probe, 0.0, max_step))


def _gradients(canvas: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    zc = tf.zeros_like(canvas[:, :1])
    gx = tf.concat([zc, (canvas[:, 2:] - canvas[:, :-2]) * 0.5, zc], axis=1)
    zr = tf.zeros_like(canvas[:1, :])
    gy = tf.concat([zr, (canvas[2:, :] - canvas[:-2, :]) * 0.5, zr], axis=0)
    return gx, gy


# ----------------------------------------------------------------------------- solver
@dataclass(eq=False)
class _Direction:
    misfit: float
    obj: tf.Tensor
    probe: tf.Tensor | None
    shifts: tf.Tensor | None
    chi: list[tf.Tensor] = field(default_factory=list)
    patches: list[tf.Tensor] = field(default_factory=list)


class TFSolver:
    """The refinement update of ``specs/refinement.md`` in TensorFlow (eager)."""

    name = "tensorflow"

    def solve(self, problem: RefineProblem, progress: Progress | None = None) -> SolverOutput:
        run = _TFRun(problem)
        return run.full_batch(progress) if problem.full_batch else run.mini_batch(progress)


class _TFRun(RunLoop):
    """Mirror of ``ptycho_core._refine_numpy._NumpyRun`` on TF tensors."""

    def __init__(self, problem: RefineProblem) -> None:
        self.p, self.o, self.n = problem, problem.options, problem.n
        self.cb = _checkerboard(self.n)
        self.canvas = tf.constant(problem.canvas)
        self.probe = tf.constant(problem.probe)
        self.pos = tf.constant(problem.positions, dtype=tf.float64)
        self.pos0 = self.pos
        self.lo = tf.constant(problem.position_limits[0])
        self.hi = tf.constant(problem.position_limits[1])
        d = problem.diffraction
        self.resident = tf.constant(d) if d.nbytes <= RESIDENT_BYTES else None
        self.device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        self.t0 = time.perf_counter() - problem.prepare_s
        self.misfits: list[float] = []
        self.secs: list[float] = []
        self._illum_cache: dict[int, tf.Tensor] = {}

    def _amplitudes(self, index: np.ndarray) -> tf.Tensor:
        if self.resident is not None:
            return tf.gather(self.resident, index)
        return tf.constant(self.p.diffraction[index])

    def _illumination(self, key: int, index: np.ndarray) -> tf.Tensor:
        fixed = self.o.probe == "fixed" and self.o.positions == "fixed"
        if fixed and key in self._illum_cache:
            return self._illum_cache[key]
        acc = tf.zeros(self.canvas.shape, _C64)
        p2 = _c(tf.square(tf.math.real(self.probe)) + tf.square(tf.math.imag(self.probe)))
        for s in range(0, len(index), self.o.chunk):
            idx = index[s : s + self.o.chunk]
            values = tf.broadcast_to(p2, (len(idx), self.n, self.n))
            acc = scatter(acc, values, tf.gather(self.pos, idx))
        out = tf.math.real(acc)
        if fixed and int(tf.size(out)) * 4 * (len(self._illum_cache) + 1) <= CACHE_BYTES:
            self._illum_cache[key] = out
        return out

    def _direction(
        self, index: np.ndarray, key: int, *, probe: bool, positions: bool, keep: bool
    ) -> _Direction:
        n, delta = self.n, self.o.regularization
        g_obj = tf.zeros(self.canvas.shape, _C64)
        g_probe = tf.zeros((n, n), _C64)
        d_probe = tf.zeros((n, n), tf.float32)
        grads = _gradients(self.canvas) if positions else None
        conj_p = tf.math.conj(self.probe)
        misfit = 0.0
        shifts, chis, kept = [], [], []
        for s in range(0, len(index), self.o.chunk):
            idx = index[s : s + self.o.chunk]
            pos = tf.gather(self.pos, idx)
            patches = extract(self.canvas, pos, n)
            far = propagate(patches * self.probe, self.cb)
            r, f = residual(far, self._amplitudes(idx), self.o.noise)
            misfit += f
            chi = back_propagate(r, self.cb)
            g_obj = scatter(g_obj, conj_p * chi, pos)
            if probe:
                g_probe += tf.reduce_sum(tf.math.conj(patches) * chi, axis=0)
                d_probe += tf.reduce_sum(
                    tf.square(tf.math.real(patches)) + tf.square(tf.math.imag(patches)), axis=0
                )
            if grads is not None:
                dx = extract(grads[0], pos, n) * self.probe
                dy = extract(grads[1], pos, n) * self.probe
                shifts.append(position_steps(chi, dx, dy, self.o.max_shift_px))
            if keep:
                chis.append(chi)
                kept.append(patches)
        illum = self._illumination(key, index)
        d_obj = g_obj / _c(illum + delta * tf.reduce_max(illum))
        d_pr = g_probe / _c(d_probe + delta * tf.reduce_max(d_probe)) if probe else None
        return _Direction(
            misfit=misfit,
            obj=d_obj,
            probe=d_pr,
            shifts=tf.concat(shifts, axis=0) if shifts else None,
            chi=chis,
            patches=kept,
        )

    def _misfit(self) -> float:
        total = 0.0
        for idx in self.p.chunks():
            patches = extract(self.canvas, tf.gather(self.pos, idx), self.n)
            far = propagate(patches * self.probe, self.cb)
            total += residual(far, self._amplitudes(idx), self.o.noise)[1]
        return total / self.p.m

    def _clamp(self) -> None:
        self.pos = tf.maximum(tf.minimum(self.pos, self.hi), self.lo)

    def _remove_drift(self) -> None:
        self.pos = self.pos - tf.reduce_mean(self.pos - self.pos0, axis=0)
        self._clamp()

    def _canvas_numpy(self) -> np.ndarray:
        return np.array(self.canvas.numpy())

    def _record(self, value: float, progress: Progress | None) -> None:
        self.misfits.append(float(value))
        self.secs.append(time.perf_counter() - self.t0)
        it = len(self.misfits) - 1
        logger.info("refine iteration %d: misfit %.6g (%.2f s)", it, value, self.secs[-1])
        if progress is not None:
            t = time.perf_counter()
            progress(IterationInfo(it, self.misfits[-1], self.secs[-1], self._canvas_numpy))
            self.t0 += time.perf_counter() - t

    def _output(self, final: float, rejected: int) -> SolverOutput:
        return SolverOutput(
            canvas=self._canvas_numpy(),
            probe=np.array(self.probe.numpy()),
            positions=np.array(self.pos.numpy()),
            misfit=self.misfits,
            seconds=self.secs,
            final_misfit=final,
            rejected_steps=rejected,
            device=self.device,
        )

    def _object_step(self, beta: float) -> Any:
        return tf.constant(beta, _C64)

    def mini_batch(self, progress: Progress | None) -> SolverOutput:
        n, beta = self.n, float(np.float32(self.o.step))
        halved = 0
        self._record(self._misfit(), progress)
        for it in range(1, self.o.iterations + 1):
            wp, wx = self._wants(it)
            total = 0.0
            for b in self.p.batch_order(it):
                idx = self.p.batches[b]
                d = self._direction(idx, int(b), probe=wp, positions=wx, keep=True)
                total += d.misfit
                chi = tf.concat(d.chi, axis=0)
                u = extract(d.obj, tf.gather(self.pos, idx), n) * self.probe
                v = None if d.probe is None else tf.concat(d.patches, axis=0) * d.probe
                a_obj, a_probe = step_lengths(chi, u, v)
                step_o = float(np.float32(beta) * np.float32(a_obj))
                self.canvas = self.canvas - tf.constant(step_o, _C64) * d.obj
                if d.probe is not None:
                    step_p = float(np.float32(beta) * np.float32(a_probe))
                    self.probe = self.probe - tf.constant(step_p, _C64) * d.probe
                if d.shifts is not None:
                    self.pos = tf.tensor_scatter_nd_add(
                        self.pos, tf.constant(idx[:, None]), beta * d.shifts
                    )
                    self._clamp()
            if wx:
                self._remove_drift()
            if total / self.p.m > self.misfits[-1]:
                beta *= 0.5
                halved += 1
                logger.info("refine iteration %d raised the misfit; step now %.3g", it, beta)
            self._record(total / self.p.m, progress)
        return self._output(self._misfit(), halved)


def refine(
    obj: Any,
    diffraction: Any,
    positions: Any,
    probe: Any,
    *,
    origin: Any = (0, 0),
    coverage: Any = None,
    options: RefineOptions | None = None,
    progress: Progress | None = None,
) -> RefineResult:
    """:func:`ptycho_core.refine.refine` with :class:`TFSolver`."""
    return core_refine(
        obj,
        diffraction,
        positions,
        probe,
        origin=origin,
        coverage=coverage,
        options=options,
        solver=TFSolver(),
        progress=progress,
    )
