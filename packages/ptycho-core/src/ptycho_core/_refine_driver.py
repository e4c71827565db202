"""The refinement iterations, written once for every solver (``specs/refinement.md``).

A solver supplies a :class:`RefineOps` table: the few framework operations of one update
(bilinear extraction and placement, propagation, the noise model's residual, reductions, the
in-place or functional updates its arrays allow). :class:`RefineRun` holds the state (canvas,
probe, positions on the solver's device) and does everything else: batches and their order, the
schedule of probe and position updates, the update directions, the LSQML step lengths, the
fixed-step monotone full batch, drift removal and position limits, the misfit history, timings
and progress callbacks. The NumPy reference (``ptycho_core._refine_numpy``), torch and
TensorFlow solvers differ only in their table, so they take the same steps in the same order.
Public names are re-exported by :mod:`ptycho_core.refine`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ptycho_core._refine_ops import lsq_step_lengths, solve_position_steps
from ptycho_core._refine_problem import IterationInfo, Progress, RefineProblem, SolverOutput

__all__ = ["CACHE_BYTES", "RefineOps", "RefineRun", "position_steps"]

logger = logging.getLogger("ptycho_core.refine")

#: Memory for the per-batch illumination canvases kept while probe and positions are fixed.
CACHE_BYTES = 64 << 20


class RefineOps(Protocol):
    """The framework operations of a refinement solver (arrays of the framework, "device").

    Dtypes: canvases and patches complex64, amplitudes and illumination float32, positions
    ``(B, 2)`` float64 ``(x, y)`` canvas pixels. Operations documented "may update in place"
    return the result, and the caller only uses that.
    """

    #: Device name reported in :class:`~ptycho_core.refine.SolverOutput` (e.g. ``"cpu"``).
    device: str
    #: Measured patterns up to this many bytes are moved to the device once, larger scans per
    #: batch or chunk.
    resident_bytes: int

    # -- data movement --------------------------------------------------------------------
    def asarray(self, a: np.ndarray) -> Any:
        """A NumPy array on the device, same dtype (may share memory with ``a``)."""
        ...

    def to_numpy(self, x: Any) -> np.ndarray:
        """A host copy of ``x``."""
        ...

    def index(self, index: np.ndarray) -> Any:
        """Pattern indices ``(B,)`` int as :meth:`take` and :meth:`add_rows` take them."""
        ...

    def take(self, x: Any, index: Any) -> Any:
        """Rows ``x[index]``."""
        ...

    def add_rows(self, x: Any, index: Any, values: Any) -> Any:
        """``x`` with ``values`` added to the rows ``index`` (unique; may update in place)."""
        ...

    def concat(self, parts: list[Any]) -> Any:
        """Concatenation along the first axis."""
        ...

    def sync(self) -> None:
        """Wait for queued device work (before reading the clock)."""
        ...

    # -- kernels (``ptycho_core._refine_ops`` is the NumPy reference of each) ---------------
    def checkerboard(self, n: int) -> Any:
        """``(−1)^(i+j)`` ``(n, n)``, as :meth:`propagate` takes it."""
        ...

    def zeros_like(self, x: Any) -> Any:
        """Zeros of the shape and dtype of ``x``."""
        ...

    def extract(self, canvas: Any, pos: Any, n: int) -> Any:
        """Bilinear patches ``(B, N, N)`` at ``pos`` of a canvas that holds every block."""
        ...

    def scatter(self, acc: Any, values: Any, pos: Any) -> Any:
        """``acc`` plus the placement (adjoint of :meth:`extract`) of ``values (B, N, N)`` at
        ``pos`` (may update ``acc`` in place)."""
        ...

    def illumination(self, shape: tuple[int, int], probe: Any, positions: list[Any]) -> Any:
        """``Σ_m E_m^H |P|²``, a float32 canvas of ``shape``, over the position chunks."""
        ...

    def propagate(self, psi: Any, cb: Any) -> Any:
        """Unitary centred DFT of exit waves ``(B, N, N)``."""
        ...

    def back_propagate(self, far: Any, cb: Any) -> Any:
        """The inverse of :meth:`propagate`."""
        ...

    def residual(self, far: Any, amp: Any, noise: str) -> tuple[Any, float]:
        """The Fourier correction ``R`` and the misfit summed over the patterns (a float)."""
        ...

    def gradients(self, canvas: Any) -> tuple[Any, Any]:
        """Central differences ``(∂O/∂x, ∂O/∂y)`` of the canvas, zero on its rim."""
        ...

    def conj(self, x: Any) -> Any:
        """Complex conjugate."""
        ...

    def probe_sums(self, patches: Any, chi: Any) -> tuple[Any, Any]:
        """``(Σ_B conj(O_m)·χ_m, Σ_B |O_m|²)``, each ``(N, N)``."""
        ...

    def normalise(self, g: Any, weight: Any, delta: float) -> Any:
        """``g / (weight + δ·max(weight))`` (``weight`` real, ``g`` complex)."""
        ...

    def re_dot(self, a: Any, b: Any) -> float:
        """``Σ Re(conj(a)·b)`` over every element, accumulated in float64."""
        ...

    def re_dot_each(self, a: Any, b: Any) -> Any:
        """``Σ Re(conj(a)·b)`` per pattern: ``(B,)`` float64 from ``(B, N, N)``."""
        ...

    def stack_steps(self, dx: Any, dy: Any, cap: float) -> Any:
        """``(B, 2)`` float64 steps ``(dx, dy)``, each component clipped to ``±cap``."""
        ...

    def sub_scaled(self, x: Any, coef: float, d: Any, *, in_place: bool) -> Any:
        """``x − coef·d`` with ``coef`` in ``x``'s precision (float32); ``in_place``: ``x`` may
        be overwritten (the caller keeps no other reference to it)."""
        ...

    def clip(self, pos: Any, lo: Any, hi: Any) -> Any:
        """``pos`` clipped into ``[lo, hi]`` element-wise (may update in place)."""
        ...

    def mean_rows(self, x: Any) -> Any:
        """The mean over the first axis."""
        ...


def position_steps(ops: RefineOps, chi: Any, dx: Any, dy: Any, cap: float) -> Any:
    """Gauss–Newton position steps ``(B, 2)`` of :func:`ptycho_core._refine_ops.position_steps`
    with the solver's reductions (``dx``, ``dy``: ``P·E(∂O/∂x)``, ``P·E(∂O/∂y)``)."""
    hxx, hyy, hxy = ops.re_dot_each(dx, dx), ops.re_dot_each(dy, dy), ops.re_dot_each(dx, dy)
    bx, by = ops.re_dot_each(dx, chi), ops.re_dot_each(dy, chi)
    sx, sy = solve_position_steps(hxx, hyy, hxy, bx, by)
    return ops.stack_steps(sx, sy, cap)


@dataclass(eq=False)
class _Direction:
    """Update directions from a set of patterns (one batch, or the scan in chunks).

    ``misfit``: summed over the patterns; ``obj``: ``ΔO`` canvas; ``probe``: ``ΔP`` ``(N, N)``
    or None; ``shifts``: ``(B, 2)`` position steps or None; ``chi`` and ``patches``: per chunk,
    kept for the step lengths of a mini-batch (else empty).
    """

    misfit: float
    obj: Any
    probe: Any
    shifts: Any
    chi: list[Any] = field(default_factory=list)
    patches: list[Any] = field(default_factory=list)


class RefineRun:
    """One run of a solver: the state on the device and the iterations of
    ``specs/refinement.md``. ``RefineRun(problem, ops).solve(progress)``."""

    def __init__(self, problem: RefineProblem, ops: RefineOps) -> None:
        self.p, self.o, self.n, self.ops = problem, problem.options, problem.n, ops
        self.cb = ops.checkerboard(self.n)
        self.canvas = ops.asarray(problem.canvas.copy())
        self.probe = ops.asarray(problem.probe.copy())
        self.pos = ops.asarray(problem.positions.copy())
        self.pos0 = ops.asarray(problem.positions)
        self.lo = ops.asarray(problem.position_limits[0])
        self.hi = ops.asarray(problem.position_limits[1])
        d = problem.diffraction
        self.resident = ops.asarray(d) if d.nbytes <= ops.resident_bytes else None
        self.t0 = time.perf_counter() - problem.prepare_s
        self.misfits: list[float] = []
        self.secs: list[float] = []
        self._illum_cache: dict[int, Any] = {}

    def solve(self, progress: Progress | None = None) -> SolverOutput:
        return self.full_batch(progress) if self.p.full_batch else self.mini_batch(progress)

    # -- pieces ---------------------------------------------------------------------------
    def _wants(self, iteration: int) -> tuple[bool, bool]:
        """Whether ``iteration`` (1-based) updates the probe and the positions."""
        o = self.o
        return (
            o.probe == "refine" and iteration >= o.probe_start,
            o.positions == "refine" and iteration >= o.positions_start,
        )

    def _amplitudes(self, sub: np.ndarray, idx: Any) -> Any:
        if self.resident is not None:
            return self.ops.take(self.resident, idx)
        return self.ops.asarray(self.p.diffraction[sub])

    def _chunks(self, index: np.ndarray) -> list[np.ndarray]:
        return [index[s : s + self.o.chunk] for s in range(0, len(index), self.o.chunk)]

    def _illumination(self, key: int, index: np.ndarray) -> Any:
        """``Σ_m E_m^H |P|²`` of the patterns ``index``; cached per ``key`` while probe and
        positions are fixed (up to :data:`CACHE_BYTES`)."""
        fixed = self.o.probe == "fixed" and self.o.positions == "fixed"
        if fixed and key in self._illum_cache:
            return self._illum_cache[key]
        ops, shape = self.ops, self.p.canvas.shape
        chunks = [ops.take(self.pos, ops.index(sub)) for sub in self._chunks(index)]
        acc = ops.illumination((int(shape[0]), int(shape[1])), self.probe, chunks)
        if fixed and 4 * shape[0] * shape[1] * (len(self._illum_cache) + 1) <= CACHE_BYTES:
            self._illum_cache[key] = acc
        return acc

    def _direction(
        self, index: np.ndarray, key: int, *, probe: bool, positions: bool, keep: bool
    ) -> _Direction:
        """Misfit and update directions from the patterns ``index`` at the current state."""
        ops, n, delta = self.ops, self.n, self.o.regularization
        g_obj = ops.zeros_like(self.canvas)
        g_probe: Any = None
        w_probe: Any = None
        grads = ops.gradients(self.canvas) if positions else None
        conj_p = ops.conj(self.probe)
        misfit = 0.0
        shifts, chis, kept = [], [], []
        for sub in self._chunks(index):
            idx = ops.index(sub)
            pos = ops.take(self.pos, idx)
            patches = ops.extract(self.canvas, pos, n)
            far = ops.propagate(patches * self.probe, self.cb)
            r, f = ops.residual(far, self._amplitudes(sub, idx), self.o.noise)
            misfit += f
            chi = ops.back_propagate(r, self.cb)
            g_obj = ops.scatter(g_obj, conj_p * chi, pos)
            if probe:
                g, w = ops.probe_sums(patches, chi)
                g_probe = g if g_probe is None else g_probe + g
                w_probe = w if w_probe is None else w_probe + w
            if grads is not None:
                dx = ops.extract(grads[0], pos, n) * self.probe
                dy = ops.extract(grads[1], pos, n) * self.probe
                shifts.append(position_steps(ops, chi, dx, dy, self.o.max_shift_px))
            if keep:
                chis.append(chi)
                kept.append(patches)
        illum = self._illumination(key, index)
        return _Direction(
            misfit=misfit,
            obj=ops.normalise(g_obj, illum, delta),
            probe=ops.normalise(g_probe, w_probe, delta) if probe else None,
            shifts=ops.concat(shifts) if shifts else None,
            chi=chis,
            patches=kept,
        )

    def _misfit(self) -> float:
        """Exact misfit per pattern of the current state (a forward pass)."""
        ops, total = self.ops, 0.0
        for sub in self.p.chunks():
            idx = ops.index(sub)
            patches = ops.extract(self.canvas, ops.take(self.pos, idx), self.n)
            far = ops.propagate(patches * self.probe, self.cb)
            total += ops.residual(far, self._amplitudes(sub, idx), self.o.noise)[1]
        return total / self.p.m

    def _remove_drift(self) -> None:
        """Keep the mean position correction zero (a common shift is the object's job)."""
        pos = self.pos - self.ops.mean_rows(self.pos - self.pos0)
        self.pos = self.ops.clip(pos, self.lo, self.hi)

    def _canvas_numpy(self) -> np.ndarray:
        return self.ops.to_numpy(self.canvas)

    def _record(self, value: float, progress: Progress | None) -> None:
        self.ops.sync()
        self.misfits.append(float(value))
        self.secs.append(time.perf_counter() - self.t0)
        it = len(self.misfits) - 1
        logger.info("refine iteration %d: misfit %.6g (%.2f s)", it, value, self.secs[-1])
        if progress is not None:
            t = time.perf_counter()
            progress(IterationInfo(it, self.misfits[-1], self.secs[-1], self._canvas_numpy))
            self.t0 += time.perf_counter() - t  # callbacks do not count

    def _output(self, final: float, rejected: int) -> SolverOutput:
        return SolverOutput(
            canvas=self._canvas_numpy(),
            probe=self.ops.to_numpy(self.probe),
            positions=self.ops.to_numpy(self.pos),
            misfit=self.misfits,
            seconds=self.secs,
            final_misfit=final,
            rejected_steps=rejected,
            device=self.ops.device,
        )

    # -- full batch: fixed step, monotone -------------------------------------------------
    def full_batch(self, progress: Progress | None) -> SolverOutput:
        """Iteration ``k`` steps by ``β`` along the directions computed at the state of
        iteration ``k−1``; a step that raises the misfit is undone and ``β`` halved."""
        ops, m, every = self.ops, self.p.m, np.arange(self.p.m)
        beta = self.o.step
        rejected = 0
        wp, wx = self._wants(1)
        cur = self._direction(every, 0, probe=wp, positions=wx, keep=False)
        self._record(cur.misfit / m, progress)
        for it in range(1, self.o.iterations + 1):
            saved = (self.canvas, self.probe, self.pos)
            self.canvas = ops.sub_scaled(self.canvas, beta, cur.obj, in_place=False)
            if cur.probe is not None:
                self.probe = ops.sub_scaled(self.probe, beta, cur.probe, in_place=False)
            if cur.shifts is not None:
                self.pos = self.pos + beta * cur.shifts
                self._remove_drift()
            wp, wx = self._wants(it + 1)
            nxt = self._direction(every, 0, probe=wp, positions=wx, keep=False)
            if nxt.misfit <= cur.misfit * (1 + 1e-7):
                cur = nxt
            else:  # the step raised the misfit: undo it, halve the step
                self.canvas, self.probe, self.pos = saved
                beta *= 0.5
                rejected += 1
                logger.info("refine iteration %d raised the misfit; step now %.3g", it, beta)
            self._record(cur.misfit / m, progress)
        return self._output(cur.misfit / m, rejected)

    # -- mini-batches: LSQML step lengths -------------------------------------------------
    def mini_batch(self, progress: Progress | None) -> SolverOutput:
        """Every batch: directions, least-squares step lengths, update in place; ``β`` is
        halved after an iteration whose misfit exceeds the previous one's."""
        ops, n, beta = self.ops, self.n, float(np.float32(self.o.step))
        halved = 0
        self._record(self._misfit(), progress)
        for it in range(1, self.o.iterations + 1):
            wp, wx = self._wants(it)
            total = 0.0
            for b in self.p.batch_order(it):
                sub = self.p.batches[b]
                idx = ops.index(sub)
                d = self._direction(sub, int(b), probe=wp, positions=wx, keep=True)
                total += d.misfit
                chi = ops.concat(d.chi)
                u = ops.extract(d.obj, ops.take(self.pos, idx), n) * self.probe
                v = None if d.probe is None else ops.concat(d.patches) * d.probe
                a_obj, a_probe = lsq_step_lengths(ops.re_dot, chi, u, v)
                coef = float(np.float32(beta) * np.float32(a_obj))
                self.canvas = ops.sub_scaled(self.canvas, coef, d.obj, in_place=True)
                if d.probe is not None:
                    coef = float(np.float32(beta) * np.float32(a_probe))
                    self.probe = ops.sub_scaled(self.probe, coef, d.probe, in_place=True)
                if d.shifts is not None:
                    pos = ops.add_rows(self.pos, idx, beta * d.shifts)
                    self.pos = ops.clip(pos, self.lo, self.hi)
            if wx:
                self._remove_drift()
            if total / self.p.m > self.misfits[-1]:  # noise floor reached: damp the steps
                beta *= 0.5
                halved += 1
                logger.info("refine iteration %d raised the misfit; step now %.3g", it, beta)
            self._record(total / self.p.m, progress)
        return self._output(self._misfit(), halved)
