"""The shared backend conformance suite (``ptycho_core.testing``), run for the PyTorch backend."""

from ptycho_core.testing import BackendConformance


class TestTorchConformance(BackendConformance):
    backend_name = "pytorch"
