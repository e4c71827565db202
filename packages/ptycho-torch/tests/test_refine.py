"""The torch refinement solver against the NumPy reference (``specs/refinement.md``): the
shared suite :class:`ptycho_core.testing.RefineSolverConformance` (kernels, the same update on
the same inputs to float32 tolerance, streaming, ``ptycho refine --backend pytorch``), plus the
same update on a CUDA device when there is one."""

from __future__ import annotations

import pytest
import torch

from ptycho_core.refine import NumpySolver
from ptycho_core.testing import RefineSolverConformance
from ptycho_torch.refine import TorchOps, TorchSolver


class TestTorchRefine(RefineSolverConformance):
    backend_name = "pytorch"

    def solver(self, *, resident_bytes: int | None = None) -> TorchSolver:
        return TorchSolver("cpu", resident_bytes=resident_bytes)

    def ops(self) -> TorchOps:
        return TorchOps(torch.device("cpu"))

    def run_cli(self, argv: list[str]) -> int:
        from ptycho_cli.main import main

        return main(argv)

    def auto_solver_name(self) -> str:
        return "pytorch" if torch.cuda.is_available() else "numpy"

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_same_update_on_the_gpu(self, scan):
        problem = self.problem(scan, iterations=3)
        out = TorchSolver("cuda").solve(problem)
        assert out.device.startswith("cuda")
        self.assert_same_as_reference(out, NumpySolver().solve(problem))
