"""The refinement solver on a torch device (``specs/refinement.md``): the op table
(:class:`ptycho_core.refine.RefineOps`) of :class:`TorchOps` on tensors — a GPU when one is
present. The iterations themselves (:class:`ptycho_core.refine.RefineRun`), the set-up and the
result are core's, shared with the NumPy reference it is tested against (float32 tolerance).

The canvas, probe and positions live on the device; measured patterns move there one batch (or
chunk) at a time unless the whole scan fits in :data:`RESIDENT_BYTES`.

Use: ``ptycho_core.refine.refine(..., solver=TorchSolver())`` or :func:`refine`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptycho_core.refine import Progress, RefineProblem, RefineResult, RefineRun, SolverOutput
from ptycho_core.refine import refine as core_refine

__all__ = ["RESIDENT_BYTES", "TorchOps", "TorchSolver", "refine"]

#: Measured patterns up to this size are copied to the device once; larger scans per batch.
RESIDENT_BYTES = 1 << 30
_POISSON_EPS = 1e-6


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _window_index(k: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Flat canvas indices ``(B, N+1, N+1)`` of the blocks starting at ``k`` ``(B, 2)``
    ``(x, y)``."""
    ar = torch.arange(n + 1, device=k.device)
    rows = (k[:, 1, None, None] + ar[None, :, None]) * width
    return rows + (k[:, 0, None, None] + ar[None, None, :])


def _blocks(pos: torch.Tensor, n: int, width: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Block indices of ``pos`` ``(B, 2)`` and the bilinear weights ``(1−fy, fy, 1−fx, fx)``,
    each float32 ``(B, 1, 1)`` (``ptycho_core._refine_ops.split_positions``)."""
    c = pos - n / 2
    k = torch.floor(c)
    f = (c - k).to(torch.float32)
    fx, fy = f[:, 0, None, None], f[:, 1, None, None]
    return _window_index(k.long(), n, width), (1 - fy, fy, 1 - fx, fx)


class TorchOps:
    """:class:`ptycho_core.refine.RefineOps` on torch tensors on ``device``."""

    def __init__(self, device: torch.device, resident_bytes: int = RESIDENT_BYTES) -> None:
        self.dev = device
        self.device = str(device)
        self.resident_bytes = resident_bytes

    # -- data movement --------------------------------------------------------------------
    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, device=self.dev)

    def to_numpy(self, x: torch.Tensor) -> np.ndarray:
        return x.detach().cpu().numpy().copy()

    def index(self, index: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(index, device=self.dev, dtype=torch.long)

    def take(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return x[index]

    def add_rows(self, x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        x[index] += values
        return x

    def concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts)

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    # -- kernels --------------------------------------------------------------------------
    def checkerboard(self, n: int) -> torch.Tensor:
        i = torch.arange(n, device=self.dev)
        return (1 - 2 * ((i[:, None] + i[None, :]) % 2)).to(torch.float32)

    def zeros_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    def extract(self, canvas: torch.Tensor, pos: torch.Tensor, n: int) -> torch.Tensor:
        idx, (gy, fy, gx, fx) = _blocks(pos, n, canvas.shape[1])
        block = canvas.reshape(-1)[idx]
        rows = block[:, :-1, :] * gy + block[:, 1:, :] * fy
        return rows[:, :, :-1] * gx + rows[:, :, 1:] * fx

    def scatter(self, acc: torch.Tensor, values: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, n = values.shape[0], values.shape[-1]
        idx, (gy, fy, gx, fx) = _blocks(pos, n, acc.shape[1])
        cols = torch.zeros((b, n, n + 1), dtype=values.dtype, device=values.device)
        cols[:, :, :-1] += values * gx
        cols[:, :, 1:] += values * fx
        block = torch.zeros((b, n + 1, n + 1), dtype=values.dtype, device=values.device)
        block[:, :-1, :] += cols * gy
        block[:, 1:, :] += cols * fy
        acc.view(-1).index_add_(0, idx.reshape(-1), block.reshape(-1))
        return acc

    def illumination(
        self, shape: tuple[int, int], probe: torch.Tensor, positions: list[torch.Tensor]
    ) -> torch.Tensor:
        acc = torch.zeros(shape, dtype=torch.complex64, device=self.dev)
        p2 = (probe.real.square() + probe.imag.square()).to(torch.complex64)
        for pos in positions:
            self.scatter(acc, p2.expand(len(pos), *p2.shape), pos)
        return acc.real.contiguous()

    def propagate(self, psi: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
        return torch.fft.fft2(psi * cb, norm="ortho")

    def back_propagate(self, far: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
        return torch.fft.ifft2(far, norm="ortho") * cb

    def residual(
        self, far: torch.Tensor, amp: torch.Tensor, noise: str
    ) -> tuple[torch.Tensor, float]:
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

    def gradients(self, canvas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gx = torch.zeros_like(canvas)
        gy = torch.zeros_like(canvas)
        gx[:, 1:-1] = (canvas[:, 2:] - canvas[:, :-2]) * 0.5
        gy[1:-1, :] = (canvas[2:, :] - canvas[:-2, :]) * 0.5
        return gx, gy

    def conj(self, x: torch.Tensor) -> torch.Tensor:
        return x.conj()

    def probe_sums(
        self, patches: torch.Tensor, chi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = (patches.conj() * chi).sum(dim=0)
        return g, (patches.real.square() + patches.imag.square()).sum(dim=0)

    def normalise(self, g: torch.Tensor, weight: torch.Tensor, delta: float) -> torch.Tensor:
        return g / (weight + delta * weight.max())

    def re_dot(self, a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.real * b.real + a.imag * b.imag).sum(dtype=torch.float64))

    def re_dot_each(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a.real * b.real + a.imag * b.imag).sum(dim=(-2, -1), dtype=torch.float64)

    def stack_steps(self, dx: torch.Tensor, dy: torch.Tensor, cap: float) -> torch.Tensor:
        return torch.stack([dx, dy], dim=1).clamp(-cap, cap)

    def sub_scaled(
        self, x: torch.Tensor, coef: float, d: torch.Tensor, *, in_place: bool
    ) -> torch.Tensor:
        if in_place:
            x -= coef * d
            return x
        return x - coef * d

    def clip(self, pos: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(pos, hi), lo)

    def mean_rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=0)


class TorchSolver:
    """The refinement update of ``specs/refinement.md`` on ``device`` (default: CUDA when
    available, else CPU). ``resident_bytes``: see :data:`RESIDENT_BYTES` (None: that value)."""

    name = "pytorch"

    def __init__(
        self, device: str | torch.device | None = None, *, resident_bytes: int | None = None
    ) -> None:
        self.device = torch.device(device) if device is not None else _default_device()
        self.resident_bytes = resident_bytes

    def solve(self, problem: RefineProblem, progress: Progress | None = None) -> SolverOutput:
        limit = RESIDENT_BYTES if self.resident_bytes is None else self.resident_bytes
        return RefineRun(problem, TorchOps(self.device, limit)).solve(progress)


def refine(*args: Any, device: str | torch.device | None = None, **kwargs: Any) -> RefineResult:
    """:func:`ptycho_core.refine.refine` (same arguments) with :class:`TorchSolver` on
    ``device``."""
    return core_refine(*args, solver=TorchSolver(device), **kwargs)
