"""The refinement solver on a torch device (``specs/refinement.md``): the update of the NumPy
reference :class:`ptycho_core.refine.NumpySolver`, step for step, on tensors — a GPU when one
is present. Tested against the reference on the same inputs (float32 tolerance).

Set-up (working canvas, batches and their order, the global scale) and the result (the input
frame, positions in object pixels) come from :mod:`ptycho_core.refine`; only the iterations run
here. The canvas, probe and positions live on the device; measured patterns move there one
batch (or chunk) at a time unless the whole scan fits in :data:`RESIDENT_BYTES`.

Use: ``ptycho_core.refine.refine(..., solver=TorchSolver())`` or :func:`refine`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

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

__all__ = ["TorchSolver", "refine", "RESIDENT_BYTES"]

logger = logging.getLogger(__name__)

#: Measured patterns up to this size are copied to the device once; larger scans per batch.
RESIDENT_BYTES = 1 << 30
_POISSON_EPS = 1e-6


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- kernels
def _split(pos: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    c = pos - n / 2
    k = torch.floor(c)
    return k.long(), c - k


def _window_index(k: torch.Tensor, n: int, width: int) -> torch.Tensor:
    ar = torch.arange(n + 1, device=k.device)
    rows = (k[:, 1, None, None] + ar[None, :, None]) * width
    return rows + (k[:, 0, None, None] + ar[None, None, :])


def _weights(f: torch.Tensor) -> tuple[torch.Tensor, ...]:
    fx = f[:, 0].to(torch.float32)[:, None, None]
    fy = f[:, 1].to(torch.float32)[:, None, None]
    return 1 - fy, fy, 1 - fx, fx


def extract(canvas: torch.Tensor, pos: torch.Tensor, n: int) -> torch.Tensor:
    """Bilinear ``(B, N, N)`` patches of a canvas holding every block (the map of
    :func:`ptycho_core._refine_ops.extract`)."""
    k, f = _split(pos, n)
    block = canvas.reshape(-1)[_window_index(k, n, canvas.shape[1])]
    gy, fy, gx, fx = _weights(f)
    rows = block[:, :-1, :] * gy + block[:, 1:, :] * fy
    return rows[:, :, :-1] * gx + rows[:, :, 1:] * fx


def scatter(acc: torch.Tensor, values: torch.Tensor, pos: torch.Tensor) -> None:
    """Add the adjoint of :func:`extract` of ``values (B, N, N)`` to the canvas ``acc``."""
    n = values.shape[-1]
    k, f = _split(pos, n)
    gy, fy, gx, fx = _weights(f)
    b = values.shape[0]
    cols = torch.zeros((b, n, n + 1), dtype=values.dtype, device=values.device)
    cols[:, :, :-1] += values * gx
    cols[:, :, 1:] += values * fx
    block = torch.zeros((b, n + 1, n + 1), dtype=values.dtype, device=values.device)
    block[:, :-1, :] += cols * gy
    block[:, 1:, :] += cols * fy
    flat = acc.view(-1)
    flat.index_add_(0, _window_index(k, n, acc.shape[1]).reshape(-1), block.reshape(-1))


def _checkerboard(n: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(n, device=device)
    return (1 - 2 * ((i[:, None] + i[None, :]) % 2)).to(torch.float32)


def residual(far: torch.Tensor, amp: torch.Tensor, noise: str) -> tuple[torch.Tensor, float]:
    """:func:`ptycho_core._refine_ops.residual` in torch: ``(R, misfit)``."""
    a2 = far.real.square() + far.imag.square()
    if noise == "gaussian":
        a = a2.sqrt()
        diff = a - amp
        misfit = float(diff.square().sum(dtype=torch.float64))
        ratio = diff / a.clamp_min(1e-12)
    else:
        den = amp * amp + _POISSON_EPS
        diff = a2 - den + _POISSON_EPS
        d = (diff / den).clamp_min(-1 + 1e-6)
        misfit = float((den * (d - torch.log1p(d))).sum(dtype=torch.float64))
        ratio = diff / (a2 + den)
    return far * ratio, misfit


def _re_dot(a: torch.Tensor, b: torch.Tensor, dim: Any = None) -> torch.Tensor:
    prod = a.real * b.real + a.imag * b.imag
    if dim is None:
        return prod.sum(dtype=torch.float64)
    return prod.sum(dim=dim, dtype=torch.float64)


def position_steps(
    chi: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, cap: float
) -> torch.Tensor:
    """:func:`ptycho_core._refine_ops.position_steps` in torch: ``(B, 2)`` float64."""
    dims = (-2, -1)
    hxx, hyy, hxy = _re_dot(dx, dx, dims), _re_dot(dy, dy, dims), _re_dot(dx, dy, dims)
    bx, by = _re_dot(dx, chi, dims), _re_dot(dy, chi, dims)
    damp = 1e-6 * (hxx + hyy) + 1e-30
    hxx, hyy = hxx + damp, hyy + damp
    det = hxx * hyy - hxy * hxy
    sx = -(hyy * bx - hxy * by) / det
    sy = -(hxx * by - hxy * bx) / det
    return torch.stack([sx, sy], dim=1).clamp(-cap, cap)


def step_lengths(
    chi: torch.Tensor, u: torch.Tensor, v: torch.Tensor | None, max_step: float = 4.0
) -> tuple[float, float]:
    """:func:`ptycho_core._refine_ops.step_lengths` in torch."""
    uu, uc = float(_re_dot(u, u)), float(_re_dot(u, chi))
    if v is None:
        return float(np.clip(uc / uu if uu > 0 else 0.0, 0.0, max_step)), 0.0
    vv, vc, uv = float(_re_dot(v, v)), float(_re_dot(v, chi)), float(_re_dot(u, v))
    damp = 1e-6 * (uu + vv) + 1e-30
    det = (uu + damp) * (vv + damp) - uv * uv
    a_obj = ((vv + damp) * uc - uv * vc) / det
    a_probe = ((uu + damp) * vc - uv * uc) / det
    return float(np.clip(a_obj, 0.0, max_step)), float(np.clip(a_probe, 0.0, max_step))


def _gradients(canvas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gx = torch.zeros_like(canvas)
    gy = torch.zeros_like(canvas)
    gx[:, 1:-1] = (canvas[:, 2:] - canvas[:, :-2]) * 0.5
    gy[1:-1, :] = (canvas[2:, :] - canvas[:-2, :]) * 0.5
    return gx, gy


# ----------------------------------------------------------------------------- solver
@dataclass(eq=False)
class _Direction:
    misfit: float
    obj: torch.Tensor
    probe: torch.Tensor | None
    shifts: torch.Tensor | None
    chi: list[torch.Tensor] = field(default_factory=list)
    patches: list[torch.Tensor] = field(default_factory=list)


class TorchSolver:
    """The refinement update of ``specs/refinement.md`` on ``device`` (default: CUDA when
    available, else CPU)."""

    name = "pytorch"

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else _default_device()

    def solve(self, problem: RefineProblem, progress: Progress | None = None) -> SolverOutput:
        run = _TorchRun(problem, self.device)
        return run.full_batch(progress) if problem.full_batch else run.mini_batch(progress)


class _TorchRun(RunLoop):
    """Mirror of ``ptycho_core._refine_numpy._NumpyRun`` on tensors."""

    def __init__(self, problem: RefineProblem, device: torch.device) -> None:
        self.p, self.o, self.n, self.dev = problem, problem.options, problem.n, device
        self.cb = _checkerboard(self.n, device)
        self.canvas = torch.as_tensor(problem.canvas, device=device).clone()
        self.probe = torch.as_tensor(problem.probe, device=device).clone()
        self.pos = torch.as_tensor(problem.positions, device=device, dtype=torch.float64).clone()
        self.pos0 = self.pos.clone()
        self.lo = torch.as_tensor(problem.position_limits[0], device=device)
        self.hi = torch.as_tensor(problem.position_limits[1], device=device)
        d = problem.diffraction
        self.resident = torch.as_tensor(d, device=device) if d.nbytes <= RESIDENT_BYTES else None
        self.t0 = time.perf_counter() - problem.prepare_s
        self.misfits: list[float] = []
        self.secs: list[float] = []
        self._illum_cache: dict[int, torch.Tensor] = {}

    def _index(self, index: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(index, device=self.dev, dtype=torch.long)

    def _amplitudes(self, index: np.ndarray, idx_t: torch.Tensor) -> torch.Tensor:
        if self.resident is not None:
            return self.resident[idx_t]
        return torch.as_tensor(self.p.diffraction[index], device=self.dev)

    def _illumination(self, key: int, index: np.ndarray) -> torch.Tensor:
        fixed = self.o.probe == "fixed" and self.o.positions == "fixed"
        if fixed and key in self._illum_cache:
            return self._illum_cache[key]
        acc = torch.zeros(self.canvas.shape, dtype=torch.complex64, device=self.dev)
        p2 = (self.probe.real.square() + self.probe.imag.square()).to(torch.complex64)
        for s in range(0, len(index), self.o.chunk):
            idx = self._index(index[s : s + self.o.chunk])
            scatter(acc, p2.expand(len(idx), self.n, self.n), self.pos[idx])
        out = acc.real.contiguous()
        if fixed and out.numel() * 4 * (len(self._illum_cache) + 1) <= CACHE_BYTES:
            self._illum_cache[key] = out
        return out

    def _direction(
        self, index: np.ndarray, key: int, *, probe: bool, positions: bool, keep: bool
    ) -> _Direction:
        n, delta = self.n, self.o.regularization
        g_obj = torch.zeros(self.canvas.shape, dtype=torch.complex64, device=self.dev)
        g_probe = torch.zeros((n, n), dtype=torch.complex64, device=self.dev)
        d_probe = torch.zeros((n, n), dtype=torch.float32, device=self.dev)
        grads = _gradients(self.canvas) if positions else None
        conj_p = self.probe.conj()
        misfit = 0.0
        shifts, chis, kept = [], [], []
        for s in range(0, len(index), self.o.chunk):
            sub = index[s : s + self.o.chunk]
            idx = self._index(sub)
            pos = self.pos[idx]
            patches = extract(self.canvas, pos, n)
            far = torch.fft.fft2(patches * self.probe * self.cb, norm="ortho")
            r, f = residual(far, self._amplitudes(sub, idx), self.o.noise)
            misfit += f
            chi = torch.fft.ifft2(r, norm="ortho") * self.cb
            scatter(g_obj, conj_p * chi, pos)
            if probe:
                g_probe += (patches.conj() * chi).sum(dim=0)
                d_probe += (patches.real.square() + patches.imag.square()).sum(dim=0)
            if grads is not None:
                dx = extract(grads[0], pos, n) * self.probe
                dy = extract(grads[1], pos, n) * self.probe
                shifts.append(position_steps(chi, dx, dy, self.o.max_shift_px))
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
            shifts=torch.cat(shifts) if shifts else None,
            chi=chis,
            patches=kept,
        )

    def _misfit(self) -> float:
        total = 0.0
        for sub in self.p.chunks():
            idx = self._index(sub)
            patches = extract(self.canvas, self.pos[idx], self.n)
            far = torch.fft.fft2(patches * self.probe * self.cb, norm="ortho")
            total += residual(far, self._amplitudes(sub, idx), self.o.noise)[1]
        return total / self.p.m

    def _clamp(self) -> None:
        self.pos = torch.maximum(torch.minimum(self.pos, self.hi), self.lo)

    def _remove_drift(self) -> None:
        self.pos = self.pos - (self.pos - self.pos0).mean(dim=0)
        self._clamp()

    def _canvas_numpy(self) -> np.ndarray:
        return self.canvas.detach().cpu().numpy().copy()

    def _record(self, value: float, progress: Progress | None) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
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
            probe=self.probe.detach().cpu().numpy().copy(),
            positions=self.pos.detach().cpu().numpy().copy(),
            misfit=self.misfits,
            seconds=self.secs,
            final_misfit=final,
            rejected_steps=rejected,
            device=str(self.dev),
        )

    def _object_step(self, beta: float) -> Any:
        return beta

    def mini_batch(self, progress: Progress | None) -> SolverOutput:
        n, beta = self.n, float(np.float32(self.o.step))
        halved = 0
        self._record(self._misfit(), progress)
        for it in range(1, self.o.iterations + 1):
            wp, wx = self._wants(it)
            total = 0.0
            for b in self.p.batch_order(it):
                sub = self.p.batches[b]
                idx = self._index(sub)
                d = self._direction(sub, int(b), probe=wp, positions=wx, keep=True)
                total += d.misfit
                chi = torch.cat(d.chi)
                u = extract(d.obj, self.pos[idx], n) * self.probe
                v = None if d.probe is None else torch.cat(d.patches) * d.probe
                a_obj, a_probe = step_lengths(chi, u, v)
                self.canvas -= float(np.float32(beta) * np.float32(a_obj)) * d.obj
                if d.probe is not None:
                    self.probe -= float(np.float32(beta) * np.float32(a_probe)) * d.probe
                if d.shifts is not None:
                    self.pos[idx] += beta * d.shifts
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
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> RefineResult:
    """:func:`ptycho_core.refine.refine` with :class:`TorchSolver` on ``device``."""
    return core_refine(
        obj,
        diffraction,
        positions,
        probe,
        origin=origin,
        coverage=coverage,
        options=options,
        solver=TorchSolver(device),
        progress=progress,
    )
