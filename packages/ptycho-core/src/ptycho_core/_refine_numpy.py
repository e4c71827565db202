"""The NumPy reference solver of ``specs/refinement.md`` (:class:`NumpySolver`), re-exported
by :mod:`ptycho_core.refine`; the backends' solvers are tested against it. The iterations are
:class:`ptycho_core._refine_driver.RefineRun`; this module supplies its op table on NumPy
arrays (kernels in :mod:`ptycho_core._refine_ops`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ptycho_core import _refine_ops as ops
from ptycho_core._refine_driver import RefineRun
from ptycho_core._refine_problem import Progress, RefineProblem, SolverOutput

__all__ = ["NumpyOps", "NumpySolver"]


class NumpyOps:
    """:class:`~ptycho_core._refine_driver.RefineOps` on NumPy arrays (CPU; in-place updates
    where the driver allows them)."""

    device = "cpu"
    resident_bytes = 1 << 62  # the scan is already in memory: never copied

    def asarray(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.array(x, copy=True)

    def index(self, index: np.ndarray) -> np.ndarray:
        return index

    def take(self, x: np.ndarray, index: np.ndarray) -> np.ndarray:
        return x[index]

    def add_rows(self, x: np.ndarray, index: np.ndarray, values: np.ndarray) -> np.ndarray:
        x[index] += values
        return x

    def concat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)

    def sync(self) -> None:
        return None

    def checkerboard(self, n: int) -> np.ndarray:
        return ops.checkerboard(n)

    def zeros_like(self, x: np.ndarray) -> np.ndarray:
        return np.zeros_like(x)

    def extract(self, canvas: np.ndarray, pos: np.ndarray, n: int) -> np.ndarray:
        return ops.extract(canvas, pos, n)

    def scatter(self, acc: np.ndarray, values: np.ndarray, pos: np.ndarray) -> np.ndarray:
        ops.scatter(acc, values, pos)
        return acc

    def illumination(
        self, shape: tuple[int, int], probe: np.ndarray, positions: list[np.ndarray]
    ) -> np.ndarray:
        acc = np.zeros(shape, np.float32)
        p2 = np.square(np.abs(probe))
        for pos in positions:
            ops.scatter_real(acc, np.broadcast_to(p2, (len(pos),) + p2.shape), pos)
        return acc

    def propagate(self, psi: np.ndarray, cb: np.ndarray) -> np.ndarray:
        return ops.propagate(psi, cb)

    def back_propagate(self, far: np.ndarray, cb: np.ndarray) -> np.ndarray:
        return ops.back_propagate(far, cb)

    def residual(self, far: np.ndarray, amp: np.ndarray, noise: str) -> tuple[np.ndarray, float]:
        return ops.residual(far, amp, noise)

    def gradients(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ops.gradients(canvas)

    def conj(self, x: np.ndarray) -> np.ndarray:
        return np.conj(x)

    def probe_sums(self, patches: np.ndarray, chi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.sum(np.conj(patches) * chi, axis=0), np.sum(np.square(np.abs(patches)), axis=0)

    def normalise(self, g: np.ndarray, weight: np.ndarray, delta: float) -> np.ndarray:
        return g / (weight + np.float32(delta) * weight.max())

    def re_dot(self, a: np.ndarray, b: np.ndarray) -> float:
        return ops.re_dot(a, b)

    def re_dot_each(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ops.re_dot_each(a, b)

    def stack_steps(self, dx: np.ndarray, dy: np.ndarray, cap: float) -> np.ndarray:
        return np.asarray(np.clip(np.stack([dx, dy], axis=1), -cap, cap))

    def sub_scaled(self, x: np.ndarray, coef: float, d: np.ndarray, *, in_place: bool) -> Any:
        if in_place:
            x -= np.float32(coef) * d
            return x
        return x - np.float32(coef) * d

    def clip(self, pos: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        return np.clip(pos, lo, hi, out=pos)

    def mean_rows(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(np.mean(x, axis=0))


class NumpySolver:
    """The reference solver of ``specs/refinement.md`` (NumPy/SciPy, CPU)."""

    name = "numpy"

    def solve(self, problem: RefineProblem, progress: Progress | None = None) -> SolverOutput:
        return RefineRun(problem, NumpyOps()).solve(progress)
