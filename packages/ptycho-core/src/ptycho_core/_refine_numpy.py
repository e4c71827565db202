"""The NumPy reference solver of ``specs/refinement.md`` (:class:`NumpySolver`), re-exported
by :mod:`ptycho_core.refine`; the backends' solvers are tested against it."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptycho_core import _refine_ops as ops
from ptycho_core._refine_problem import (
    IterationInfo,
    Progress,
    RefineProblem,
    RunLoop,
    SolverOutput,
)

logger = logging.getLogger("ptycho_core.refine")

#: Memory for the per-batch illumination canvases kept while probe and positions are fixed.
CACHE_BYTES = 64 << 20


@dataclass(eq=False)
class _Direction:
    """Update directions from a set of patterns (one batch, or the scan in chunks).

    ``misfit``: summed over the patterns; ``obj``: ``ΔO`` canvas complex64; ``probe``: ``ΔP``
    ``(N, N)`` or None; ``shifts``: ``(B, 2)`` position steps of ``index`` or None; ``chi`` and
    ``patches``: per chunk, kept for the step lengths of a mini-batch (else empty).
    """

    misfit: float
    obj: np.ndarray
    probe: np.ndarray | None
    shifts: np.ndarray | None
    index: np.ndarray
    chi: list[np.ndarray] = field(default_factory=list)
    patches: list[np.ndarray] = field(default_factory=list)


class NumpySolver:
    """The reference solver of ``specs/refinement.md`` (NumPy/SciPy, CPU)."""

    name = "numpy"

    def solve(self, problem: RefineProblem, progress: Progress | None = None) -> SolverOutput:
        run = _NumpyRun(problem)
        return run.full_batch(progress) if problem.full_batch else run.mini_batch(progress)


class _NumpyRun(RunLoop):
    """One run of :class:`NumpySolver`: the state (canvas, probe, positions) and the steps."""

    def __init__(self, problem: RefineProblem) -> None:
        self.p = problem
        self.o = problem.options
        self.n = problem.n
        self.cb = ops.checkerboard(self.n)
        self.canvas = problem.canvas.copy()
        self.probe = problem.probe.copy()
        self.pos = problem.positions.copy()
        self.t0 = time.perf_counter() - problem.prepare_s
        self.misfits: list[float] = []
        self.secs: list[float] = []
        self._illum_cache: dict[int, np.ndarray] = {}

    # -- pieces ---------------------------------------------------------------------------
    def _illumination(self, key: int, index: np.ndarray) -> np.ndarray:
        """``Σ_m E_m^H |P|²`` (float32 canvas) of the patterns ``index``; cached per ``key``
        while probe and positions are fixed (up to :data:`CACHE_BYTES`)."""
        fixed = self.o.probe == "fixed" and self.o.positions == "fixed"
        if fixed and key in self._illum_cache:
            return self._illum_cache[key]
        acc = np.zeros(self.canvas.shape, np.float32)
        p2 = np.square(np.abs(self.probe))
        for s in range(0, len(index), self.o.chunk):
            idx = index[s : s + self.o.chunk]
            ops.scatter_real(acc, np.broadcast_to(p2, (len(idx), self.n, self.n)), self.pos[idx])
        if fixed and acc.nbytes * (len(self._illum_cache) + 1) <= CACHE_BYTES:
            self._illum_cache[key] = acc
        return acc

    def _direction(
        self, index: np.ndarray, key: int, *, probe: bool, positions: bool, keep: bool
    ) -> _Direction:
        """Misfit and update directions from the patterns ``index`` at the current state."""
        n, delta = self.n, np.float32(self.o.regularization)
        g_obj = np.zeros(self.canvas.shape, np.complex64)
        g_probe = np.zeros((n, n), np.complex64)
        d_probe = np.zeros((n, n), np.float32)
        grads = ops.gradients(self.canvas) if positions else None
        conj_p = np.conj(self.probe)
        misfit = 0.0
        shifts, chis, kept = [], [], []
        for s in range(0, len(index), self.o.chunk):
            idx = index[s : s + self.o.chunk]
            pos = self.pos[idx]
            patches = ops.extract(self.canvas, pos, n)
            far = ops.propagate(patches * self.probe, self.cb)
            r, f = ops.residual(far, self.p.diffraction[idx], self.o.noise)
            misfit += f
            chi = ops.back_propagate(r, self.cb)
            ops.scatter(g_obj, conj_p * chi, pos)
            if probe:
                g_probe += np.sum(np.conj(patches) * chi, axis=0)
                d_probe += np.sum(np.square(np.abs(patches)), axis=0)
            if grads is not None:
                dx = ops.extract(grads[0], pos, n) * self.probe
                dy = ops.extract(grads[1], pos, n) * self.probe
                shifts.append(ops.position_steps(chi, dx, dy, self.o.max_shift_px))
            if keep:
                chis.append(chi)
                kept.append(patches)
        illum = self._illumination(key, index)
        d_obj = g_obj / (illum + delta * illum.max())
        d_pr = g_probe / (d_probe + delta * d_probe.max()) if probe else None
        return _Direction(
            misfit=misfit,
            obj=d_obj,
            probe=d_pr,
            shifts=np.concatenate(shifts) if shifts else None,
            index=index,
            chi=chis,
            patches=kept,
        )

    def _misfit(self) -> float:
        """Exact misfit per pattern of the current state (a forward pass)."""
        total = 0.0
        for idx in self.p.chunks():
            patches = ops.extract(self.canvas, self.pos[idx], self.n)
            far = ops.propagate(patches * self.probe, self.cb)
            total += ops.residual(far, self.p.diffraction[idx], self.o.noise)[1]
        return total / self.p.m

    def _remove_drift(self) -> None:
        """Keep the mean position correction zero (a common shift is the object's job)."""
        self.pos -= np.mean(self.pos - self.p.positions, axis=0)
        self.p.clamp_positions(self.pos)

    def _record(self, value: float, progress: Progress | None) -> None:
        self.misfits.append(float(value))
        self.secs.append(time.perf_counter() - self.t0)
        it = len(self.misfits) - 1
        logger.info("refine iteration %d: misfit %.6g (%.2f s)", it, value, self.secs[-1])
        if progress is not None:
            t = time.perf_counter()
            progress(IterationInfo(it, self.misfits[-1], self.secs[-1], self.canvas.copy))
            self.t0 += time.perf_counter() - t  # callbacks do not count

    def _output(self, final: float, rejected: int) -> SolverOutput:
        return SolverOutput(
            canvas=self.canvas,
            probe=self.probe,
            positions=self.pos,
            misfit=self.misfits,
            seconds=self.secs,
            final_misfit=final,
            rejected_steps=rejected,
            device="cpu",
        )

    # -- full batch: fixed step, monotone -------------------------------------------------
    def _object_step(self, beta: float) -> Any:
        return np.float32(beta)

    # -- mini-batches: LSQML step lengths -------------------------------------------------
    def mini_batch(self, progress: Progress | None) -> SolverOutput:
        """Every batch: directions, least-squares step lengths, update in place; ``β`` is
        halved after an iteration whose misfit exceeds the previous one's."""
        n, beta = self.n, np.float32(self.o.step)
        halved = 0
        self._record(self._misfit(), progress)
        for it in range(1, self.o.iterations + 1):
            wp, wx = self._wants(it)
            total = 0.0
            for b in self.p.batch_order(it):
                idx = self.p.batches[b]
                d = self._direction(idx, int(b), probe=wp, positions=wx, keep=True)
                total += d.misfit
                chi = np.concatenate(d.chi)
                u = ops.extract(d.obj, self.pos[idx], n) * self.probe
                v = None if d.probe is None else np.concatenate(d.patches) * d.probe
                a_obj, a_probe = ops.step_lengths(chi, u, v)
                self.canvas -= (beta * np.float32(a_obj)) * d.obj
                if d.probe is not None:
                    self.probe -= (beta * np.float32(a_probe)) * d.probe
                if d.shifts is not None:
                    self.pos[idx] += float(beta) * d.shifts
                    self.p.clamp_positions(self.pos)
            if wx:
                self._remove_drift()
            if total / self.p.m > self.misfits[-1]:  # noise floor reached: damp the steps
                beta *= np.float32(0.5)
                halved += 1
                logger.info("refine iteration %d raised the misfit; step now %.3g", it, beta)
            self._record(total / self.p.m, progress)
        return self._output(self._misfit(), halved)
