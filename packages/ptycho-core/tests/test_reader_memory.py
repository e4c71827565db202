"""Reader and inference memory (issue D17, ``specs/data-contracts.md``): no float64 copy of the
stack, no boolean stack-sized temporaries, ``Y`` neither read nor held for inference.

Peak allocations are measured with :mod:`tracemalloc` (numpy reports its buffers to it), so
these are exact byte counts, not timings; the end-to-end RSS figures of ``ptycho infer`` at 1k
and 10k positions are in ``benchmarks/README.md`` (``benchmarks/bench_infer_memory.py``).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from ptycho_core import physics
from ptycho_core.config import InferenceConfig, ModelConfig
from ptycho_core.io import ScanData, load_npz, save_npz
from ptycho_core.workflow import prepare_inference

M, N = 2000, 32  # an 8 MiB float32 stack
MIB = 1 << 20
#: What the chunked code may allocate besides the arrays it returns (chunks of a few MiB).
SLACK = 6 * MIB


def _peak(fn, *args, **kwargs):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.fixture(scope="module")
def stack():
    return np.random.default_rng(0).random((M, N, N), dtype=np.float32) * 30


def test_estimate_nphotons_is_the_whole_stack_formula_bit_for_bit(stack):
    d = stack.astype(np.float64)
    assert physics.estimate_nphotons(stack) == float(np.mean(np.sum(d * d, axis=(-2, -1))))
    alpha = np.sqrt((N / 2) ** 2 / np.mean(np.sum(d * d, axis=(-2, -1))))
    assert physics.diffraction_norm_factor(stack) == float(alpha)
    assert physics.estimate_nphotons(stack[0]) == float(np.sum(d[0] * d[0]))


def test_estimate_nphotons_allocates_no_copy_of_the_stack(stack):
    """The old code made two float64 copies (4x a float32 stack); now a few MiB, flat in M."""
    _, peak = _peak(physics.estimate_nphotons, stack)
    assert peak < stack.nbytes, peak
    _, quarter = _peak(physics.estimate_nphotons, stack[: M // 4])
    assert peak < 1.1 * quarter, (peak, quarter)  # 4x the patterns, the same transient
    _, peak = _peak(physics.diffraction_norm_factor, stack)
    assert peak < stack.nbytes, peak


def test_scan_validation_has_no_stack_sized_temporaries():
    """Finiteness and sign checks run in chunks (boolean temporaries of <= 4 MiB; whole-stack
    checks of this 32 MiB stack made 8 MiB ones)."""
    big = np.ones((8192, N, N), np.float32)
    m = big.shape[0]
    _, peak = _peak(ScanData, big, np.zeros(m), np.zeros(m), np.ones((N, N), np.complex64))
    assert peak < SLACK, peak


def _scan_with_y(stack):
    y = (stack + 1j).astype(np.complex64)  # 2x the stack
    return ScanData(
        stack,
        np.arange(M, dtype=float) % 40 + 20,
        np.arange(M, dtype=float) // 40 + 20,
        np.ones((N, N), np.complex64),
        Y=y,
    )


def test_load_npz_reads_each_array_once_and_skips_y(tmp_path, stack):
    path = tmp_path / "scan.npz"
    save_npz(path, _scan_with_y(stack))
    scan, peak = _peak(load_npz, path)
    assert scan.Y is not None
    total = scan.diffraction.nbytes + scan.Y.nbytes
    assert peak < total + SLACK, (peak, total)  # no second copy of anything large
    scan, peak = _peak(load_npz, path, skip=("Y",))
    assert scan.Y is None
    assert peak < scan.diffraction.nbytes + SLACK, peak  # Y (2x the stack) never allocated


def test_inference_neither_reads_nor_holds_y(tmp_path, stack):
    path = tmp_path / "scan.npz"
    data = _scan_with_y(stack)
    save_npz(path, data)
    manifest = {"model_config": {"N": N}, "intensity_scale": 2.0}
    config = InferenceConfig(model=ModelConfig(N=N), test_data_file=path)
    prepared, peak = _peak(prepare_inference, config, manifest)
    assert prepared.scan.Y is None and prepared.grouped.source_Y is None
    assert peak < stack.nbytes + SLACK, peak  # the stack, not the stack + 2x for Y
    # data passed in with Y: the prepared inference does not keep a reference to it
    prepared = prepare_inference(InferenceConfig(model=ModelConfig(N=N)), manifest, data)
    assert prepared.scan.Y is None and prepared.grouped.source_Y is None
    assert data.Y is not None  # the caller's scan is not modified
