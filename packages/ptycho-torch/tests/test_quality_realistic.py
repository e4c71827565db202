"""Held-out reconstruction of the realistic scene beats a flat object
(:class:`ptycho_core.testing.QualityConformance`, slow lane)."""

from ptycho_core.testing import QualityConformance


class TestTorchQuality(QualityConformance):
    backend_name = "pytorch"
