"""The TensorFlow refinement solver against the NumPy reference (``specs/refinement.md``): the
shared suite :class:`ptycho_core.testing.RefineSolverConformance` (kernels, the same update on
the same inputs to float32 tolerance, streaming, ``ptycho refine --backend tensorflow``)."""

from __future__ import annotations

import tensorflow as tf

from ptycho_core.testing import RefineSolverConformance
from ptycho_tf.refine import TFOps, TFSolver


class TestTFRefine(RefineSolverConformance):
    backend_name = "tensorflow"

    def solver(self, *, resident_bytes: int | None = None) -> TFSolver:
        return TFSolver(resident_bytes=resident_bytes)

    def ops(self) -> TFOps:
        return TFOps()

    def run_cli(self, argv: list[str]) -> int:
        from ptycho_cli.main import main

        return main(argv)

    def auto_solver_name(self) -> str:
        # TensorFlow is loaded in this process, so auto uses its solver where TF sees a GPU
        return "tensorflow" if tf.config.list_logical_devices("GPU") else "numpy"
