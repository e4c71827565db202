"""Maximum-likelihood refinement of a reconstruction against the measured patterns
(``specs/refinement.md``): the NumPy reference solver, the oracle the backends' solvers are
tested against and the fallback when no framework is installed.

:func:`refine` takes an object in its frame (``origin`` = object-frame ``(x0, y0)`` of pixel
``[0, 0]``, e.g. a stitched ``recon.npz``), the measured amplitudes, the scan positions and the
probe, and returns the refined object in the same frame, the probe, the positions and the data
misfit per iteration. The work happens on a *working canvas* that holds every ``N×N`` patch
(plus a margin for position corrections); pixels the input does not cover start from a fill
value. One update (per mini-batch of positions, or per pass for the full batch):

1. exit waves ``ψ_m = P·O_m`` (``O_m`` the bilinear patch at ``p_m``), far field ``Ψ_m = F ψ_m``
   (unitary, :mod:`ptycho_core._refine_ops`);
2. the noise model's Fourier correction ``R_m`` and misfit, ``χ_m = F^H R_m``;
3. object direction ``ΔO = Σ_m E_m^H(P* χ_m) / (Σ_m E_m^H|P|² + δ·max)`` (``E^H``: placement,
   the adjoint of extraction); probe direction ``ΔP = Σ_m O_m* χ_m / (Σ_m |O_m|² + δ·max)``;
   position step: Gauss–Newton on ``χ_m`` with the patch gradients, capped;
4. step: full batch — the fixed step ``β`` (monotone for the Gaussian model with a fixed probe,
   a majorise–minimise step; a step that raises the misfit is undone and ``β`` halved);
   mini-batch — the least-squares step lengths of the exit-wave change (LSQML), times ``β``.

Memory is bounded by the canvas and one batch (or chunk) of patterns, never by the scan size.

The iterations are written once (:class:`RefineRun`); a solver supplies only a table of
framework operations (:class:`RefineOps`): :class:`NumpyOps` here, ``ptycho_torch.refine.TorchOps``
and ``ptycho_tf.refine.TFOps`` in the backends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptycho_core import _refine_ops as ops
from ptycho_core._refine_driver import CACHE_BYTES, RefineOps, RefineRun, position_steps
from ptycho_core._refine_numpy import NumpyOps, NumpySolver
from ptycho_core._refine_problem import (
    NOISE_MODELS,
    IterationInfo,
    Progress,
    RefineOptions,
    RefineProblem,
    Solver,
    SolverOutput,
    default_batch_size,
    prepare_refinement,
)

__all__ = [
    "CACHE_BYTES",
    "NOISE_MODELS",
    "IterationInfo",
    "Progress",
    "RefineOptions",
    "RefineOps",
    "RefineProblem",
    "RefineResult",
    "RefineRun",
    "SolverOutput",
    "Solver",
    "NumpyOps",
    "NumpySolver",
    "assemble_result",
    "default_batch_size",
    "position_steps",
    "prepare_refinement",
    "refine",
]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class RefineResult:
    """The refined reconstruction.

    ``object``: ``(H, W) complex64`` in the input frame (same ``origin``): refined where the
    final illumination exceeds 1e-3 of its maximum, the input elsewhere. ``canvas``/
    ``canvas_origin``: the whole working canvas. ``illumination``: ``(Hc, Wc) float32``
    ``Σ_m E_m^H |P|²`` at the final probe and positions. ``probe``: ``(N, N) complex64`` (the
    scan's probe times ``probe_scale``, refined if asked). ``positions``: ``(M, 2) float64``
    ``(x, y)`` object pixels. ``misfit``, ``seconds``: ``(K+1,) float64`` per iteration (index 0
    = the start; misfit per pattern in photon counts, see ``specs/refinement.md``; seconds
    cumulative wall time). ``final_misfit``: exact misfit of the returned state.
    """

    object: np.ndarray
    origin: tuple[int, int]
    canvas: np.ndarray
    canvas_origin: tuple[int, int]
    illumination: np.ndarray
    probe: np.ndarray
    positions: np.ndarray
    misfit: np.ndarray
    seconds: np.ndarray
    final_misfit: float
    probe_scale: float
    options: RefineOptions
    solver: str = "numpy"
    device: str = "cpu"
    rejected_steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-safe facts for output metadata."""
        return {
            "solver": self.solver,
            "device": self.device,
            "options": self.options.to_dict(),
            "iterations": int(len(self.misfit) - 1),
            "initial_misfit": float(self.misfit[0]),
            "final_misfit": float(self.final_misfit),
            "probe_scale": float(self.probe_scale),
            "rejected_steps": int(self.rejected_steps),
            "seconds": float(self.seconds[-1]) if len(self.seconds) else 0.0,
        }


# ----------------------------------------------------------------------------- entry point
def _final_illumination(problem: RefineProblem, out: SolverOutput) -> np.ndarray:
    acc = np.zeros(problem.canvas.shape, np.float32)
    p2 = np.square(np.abs(np.asarray(out.probe, np.complex64)))
    for idx in problem.chunks():
        ops.scatter_real(acc, np.broadcast_to(p2, (len(idx),) + p2.shape), out.positions[idx])
    return acc


def assemble_result(problem: RefineProblem, out: SolverOutput, solver: str) -> RefineResult:
    """The :class:`RefineResult` of a solver's output: the canvas written back into the input
    frame where illuminated, positions back to object pixels."""
    illum = _final_illumination(problem, out)
    canvas = np.asarray(out.canvas, np.complex64)
    obj = problem.to_frame(canvas, illum > 1e-3 * float(illum.max()))
    positions = np.asarray(out.positions, np.float64) + np.asarray(
        problem.canvas_origin, np.float64
    )
    return RefineResult(
        object=obj,
        origin=problem.frame_origin,
        canvas=canvas,
        canvas_origin=problem.canvas_origin,
        illumination=illum,
        probe=np.asarray(out.probe, np.complex64),
        positions=positions,
        misfit=np.asarray(out.misfit, np.float64),
        seconds=np.asarray(out.seconds, np.float64),
        final_misfit=float(out.final_misfit),
        probe_scale=problem.probe_scale,
        options=problem.options,
        solver=solver,
        device=out.device,
        rejected_steps=int(out.rejected_steps),
    )


def refine(
    obj: Any,
    diffraction: Any,
    positions: Any,
    probe: Any,
    *,
    origin: Any = (0, 0),
    coverage: Any = None,
    options: RefineOptions | None = None,
    solver: Solver | None = None,
    progress: Progress | None = None,
) -> RefineResult:
    """Refine ``obj`` against the measured amplitudes (``specs/refinement.md``).

    Parameters
    ----------
    obj : (H, W) complex start object, object-frame ``origin`` ``(x0, y0)`` (integers)
    diffraction : (M, N, N) float amplitude, photon units (sqrt of counts)
    positions : (M, 2) float ``(x, y)`` object pixels
    probe : (N, N) complex
    coverage : (H, W), ``> 0`` where ``obj`` is trusted (None: everywhere)
    options : :class:`RefineOptions`
    solver : a backend's :class:`Solver` (default :class:`NumpySolver`)
    progress : called with ``(iteration, misfit, seconds)`` after every iteration

    Returns
    -------
    :class:`RefineResult` (object in the input frame, probe, positions, misfit per iteration).
    """
    problem = prepare_refinement(
        obj, diffraction, positions, probe, origin=origin, coverage=coverage, options=options
    )
    s = solver if solver is not None else NumpySolver()
    out = s.solve(problem, progress)
    return assemble_result(problem, out, s.name)
