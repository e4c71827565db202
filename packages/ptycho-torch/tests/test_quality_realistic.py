"""Held-out reconstruction of the realistic scene beats a flat object
(:class:`ptycho_core.testing.QualityConformance`, slow lane)."""

import pytest
import torch

from ptycho_core.testing import QualityConformance


@pytest.fixture(autouse=True)
def _both_cores():
    """This one long test uses both cores (suites run one at a time): 2 threads, then back."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


class TestTorchQuality(QualityConformance):
    backend_name = "pytorch"
