"""The TensorFlow refinement solver against the NumPy reference (``specs/refinement.md``): same
kernels, and the same update on the same inputs to float32 tolerance; ``ptycho refine
--backend tensorflow``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from ptycho_core import _refine_ops as ops
from ptycho_core.refine import NumpySolver, RefineOptions, prepare_refinement
from ptycho_core.simulation import simulate_scan
from ptycho_tf import refine as tfr

N = 32


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(N=N, n_positions=90, nphotons=1e7, seed=4)


def _start(scan) -> np.ndarray:
    o = scan.object
    blurred = ndimage.gaussian_filter(o.real, 2) + 1j * ndimage.gaussian_filter(o.imag, 2)
    return (1.7 * blurred).astype(np.complex64)


def test_kernels_match_numpy():
    rng = np.random.default_rng(0)
    canvas = (rng.normal(size=(80, 90)) + 1j * rng.normal(size=(80, 90))).astype(np.complex64)
    pos = np.stack([rng.uniform(16, 90 - 17.01, 50), rng.uniform(16, 80 - 17.01, 50)], 1)
    ct, pt = tf.constant(canvas), tf.constant(pos)
    np.testing.assert_allclose(
        tfr.extract(ct, pt, N).numpy(), ops.extract(canvas, pos, N), atol=1e-5
    )
    q = (rng.normal(size=(50, N, N)) + 1j * rng.normal(size=(50, N, N))).astype(np.complex64)
    acc_np = np.zeros(canvas.shape, np.complex64)
    ops.scatter(acc_np, q, pos)
    acc = tfr.scatter(tf.zeros(canvas.shape, tf.complex64), tf.constant(q), pt)
    np.testing.assert_allclose(acc.numpy(), acc_np, atol=1e-4)
    cb_np, cb_tf = ops.checkerboard(N), tfr._checkerboard(N)
    far = ops.propagate(q.copy(), cb_np)
    np.testing.assert_allclose(tfr.propagate(tf.constant(q), cb_tf).numpy(), far, atol=1e-4)
    np.testing.assert_allclose(tfr.back_propagate(tf.constant(far), cb_tf).numpy(), q, atol=1e-4)
    amp = np.abs(q).astype(np.float32) * 0.9
    for noise in ("poisson", "gaussian"):
        r_np, f_np = ops.residual(q, amp, noise)
        r_t, f_t = tfr.residual(tf.constant(q), tf.constant(amp), noise)
        np.testing.assert_allclose(r_t.numpy(), r_np, rtol=1e-5, atol=1e-5)
        assert f_t == pytest.approx(f_np, rel=1e-5)


CASES = {
    "mini-batch, poisson": dict(),
    "mini-batch, probe and positions": dict(probe="refine", positions="refine"),
    "full batch, gaussian, probe and positions": dict(
        batch_size=1000, noise="gaussian", probe="refine", positions="refine"
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_update_as_the_numpy_reference(scan, case):
    """Three iterations from the same problem: misfits to 1e-4, object, probe and positions to
    float32 tolerance (1e-3 of their largest value; positions 1e-3 px)."""
    opts = RefineOptions(iterations=3, probe_start=1, positions_start=1, **CASES[case])
    wrong = scan.positions + np.random.default_rng(1).normal(0, 0.3, scan.positions.shape)
    problem = prepare_refinement(_start(scan), scan.diffraction, wrong, scan.probe, options=opts)
    ref = NumpySolver().solve(problem)
    out = tfr.TFSolver().solve(problem)
    np.testing.assert_allclose(out.misfit, ref.misfit, rtol=1e-4)
    assert out.final_misfit == pytest.approx(ref.final_misfit, rel=1e-4)
    assert out.rejected_steps == ref.rejected_steps
    np.testing.assert_allclose(out.canvas, ref.canvas, atol=1e-3 * np.abs(ref.canvas).max())
    np.testing.assert_allclose(out.probe, ref.probe, atol=1e-3 * np.abs(ref.probe).max())
    np.testing.assert_allclose(out.positions, ref.positions, atol=1e-3)
    assert ref.misfit[-1] < 0.5 * ref.misfit[0]


def test_patterns_streamed_per_chunk_give_the_same_result(scan, monkeypatch):
    """A scan larger than RESIDENT_BYTES is moved to the device chunk by chunk."""
    problem = prepare_refinement(
        _start(scan),
        scan.diffraction,
        scan.positions,
        scan.probe,
        options=RefineOptions(iterations=2),
    )
    resident = tfr.TFSolver().solve(problem)
    monkeypatch.setattr(tfr, "RESIDENT_BYTES", 0)
    streamed = tfr.TFSolver().solve(problem)
    np.testing.assert_allclose(streamed.misfit, resident.misfit, rtol=1e-6)
    np.testing.assert_allclose(
        streamed.canvas, resident.canvas, atol=1e-6 * np.abs(resident.canvas).max()
    )


def test_cli_refine_with_the_tensorflow_solver(scan, tmp_path: Path):
    from ptycho_cli.main import main
    from ptycho_cli.outputs import read_recon_npz, write_recon_npz
    from ptycho_core import physics
    from ptycho_core.io import save_npz
    from ptycho_core.stitching import stitch
    from ptycho_core.workflow import make_result

    save_npz(tmp_path / "scan.npz", scan)
    st = stitch(physics.extract_patches(_start(scan), scan.positions, N), scan.positions, crop=12)
    rec = make_result(st, positions=scan.positions, backend="tensorflow", config={}, timings={})
    write_recon_npz(tmp_path / "recon.npz", rec)
    out = tmp_path / "out"
    argv = ["refine", str(tmp_path / "recon.npz"), str(tmp_path / "scan.npz"), "-o", str(out)]
    assert main([*argv, "--iterations", "3", "--quiet", "--backend", "tensorflow"]) == 0
    summary = read_recon_npz(out)["_metadata"]["config"]["refinement"]
    assert summary["solver"] == "tensorflow"
    assert summary["final_misfit"] < summary["initial_misfit"]
