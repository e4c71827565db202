"""``ptycho refine`` and ``ptycho infer --refine K`` (``specs/refinement.md``, ``specs/cli.md``)
with the NumPy solver; no framework is imported in this process."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from ptycho_cli.compare import compare_to_truth
from ptycho_cli.main import main
from ptycho_cli.outputs import read_recon_npz, write_recon_npz
from ptycho_core import physics
from ptycho_core.io import read_product, save_npz
from ptycho_core.simulation import simulate_scan
from ptycho_core.stitching import stitch
from ptycho_core.workflow import make_result

N = 32


@pytest.fixture
def scan_and_recon(tmp_path: Path):
    """A simulated scan and a rough ``recon.npz`` of it: blurred truth patches stitched on the
    positions' bounding box (origin offset, partly uncovered), as ``ptycho infer`` writes."""
    scan = simulate_scan(N=N, n_positions=80, nphotons=1e7, seed=2)
    save_npz(tmp_path / "scan.npz", scan)
    o = scan.object
    blurred = ndimage.gaussian_filter(o.real, 2) + 1j * ndimage.gaussian_filter(o.imag, 2)
    st = stitch(physics.extract_patches(blurred, scan.positions, N), scan.positions, crop=12)
    rec = make_result(st, positions=scan.positions, backend="tensorflow", config={}, timings={})
    write_recon_npz(tmp_path / "recon.npz", rec)
    return scan, tmp_path / "scan.npz", tmp_path / "recon.npz"


def _ssim(recon_path: Path, truth: np.ndarray) -> dict:
    rec = read_recon_npz(recon_path)
    return compare_to_truth(rec["object"], rec["coverage"], rec["origin"], truth).metrics


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_refine_writes_infer_outputs_and_improves_the_object(scan_and_recon, tmp_path, capsys):
    scan, scan_path, recon_path = scan_and_recon
    out = tmp_path / "refined"
    argv = ["refine", str(recon_path), str(scan_path), "-o", str(out), "--iterations", "6"]
    assert main([*argv, "--backend", "numpy"]) == 0
    text = capsys.readouterr()
    assert "misfit" in text.out and str(out / "refine.csv") in text.out
    assert "refine 6/6" in text.err

    before, after = read_recon_npz(recon_path), read_recon_npz(out)
    assert after["object"].shape == before["object"].shape
    np.testing.assert_array_equal(after["origin"], before["origin"])
    np.testing.assert_array_equal(after["coverage"], before["coverage"])
    assert after["_metadata"]["config"]["refinement"]["solver"] == "numpy"

    rows = _rows(out / "refine.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(7))
    misfit = [float(r["misfit"]) for r in rows]
    assert misfit[-1] < 0.1 * misfit[0]
    assert all(
        float(b["seconds"]) >= float(a["seconds"]) for a, b in zip(rows, rows[1:], strict=False)
    )

    product = read_product(out / "recon.h5")
    assert product.object.shape[-2:] == before["object"].shape
    np.testing.assert_allclose(np.asarray(product.loss_values, float)[-1], misfit[-1], rtol=1e-6)
    assert (out / "recon.png").stat().st_size > 20_000

    m0, m1 = _ssim(recon_path, scan.object), _ssim(out, scan.object)
    assert m1["ssim_amp"] > m0["ssim_amp"] + 0.1 and m1["ssim_phase"] > m0["ssim_phase"]


def test_refine_positions_and_probe_are_written(scan_and_recon, tmp_path):
    scan, scan_path, recon_path = scan_and_recon
    out = tmp_path / "r"
    argv = ["refine", str(recon_path), str(scan_path), "-o", str(out), "--iterations", "3"]
    argv += ["--positions", "refine", "--probe", "refine", "--noise", "gaussian"]
    assert main([*argv, "--batch-size", "1000"]) == 0  # full batch
    rec = read_recon_npz(out)
    options = rec["_metadata"]["config"]["refinement"]["options"]
    assert options["positions"] == "refine" and options["noise"] == "gaussian"
    assert not np.array_equal(rec["positions"], scan.positions)
    assert np.abs(rec["positions"] - scan.positions).max() < 2.0
    misfit = [float(r["misfit"]) for r in _rows(out / "refine.csv")]
    assert all(
        b <= a for a, b in zip(misfit, misfit[1:], strict=False)
    )  # full batch: never increases


def test_refine_errors_are_one_line(scan_and_recon, tmp_path, capsys):
    _, scan_path, recon_path = scan_and_recon
    assert main(["refine", str(scan_path), str(scan_path), "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "not a ptycho reconstruction" in err and len(err.strip().splitlines()) == 1
    argv = ["refine", str(recon_path), str(scan_path), "-o", str(tmp_path / "y")]
    assert main([*argv, "--iterations", "0"]) == 2
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("backend", ["pytorch", "tensorflow"])
def test_refine_with_a_missing_framework_names_the_install(
    backend, scan_and_recon, run_python, tmp_path
):
    _, scan_path, recon_path = scan_and_recon
    code = (
        "import sys\nfrom ptycho_cli.main import main\n"
        f"sys.exit(main(['refine', {str(recon_path)!r}, {str(scan_path)!r}, '-o', 'o', "
        f"'--backend', {backend!r}]))\n"
    )
    out = run_python(code, block=("torch", "tensorflow", "keras", "lightning"))
    assert out.returncode == 1, out.stderr
    dist = {"pytorch": "ptycho-torch", "tensorflow": "ptycho-tf"}[backend]
    assert f"pip install {dist}" in out.stderr
    assert not (tmp_path / "o").exists()


def test_infer_refine_runs_after_the_network(fake_backends, scan_and_recon, tmp_path):
    """The fake network (conftest) predicts a constant patch; --refine 4 then fits the scan.
    Its bundle names TensorFlow, which this process never imports: ``auto`` refines with NumPy."""
    _, scan_path, _ = scan_and_recon
    run = tmp_path / "run"
    argv = ["train", str(scan_path), "-o", str(run), "--backend", "tensorflow", "--epochs", "1"]
    assert main([*argv, "--quiet"]) == 0
    out = tmp_path / "inf"
    argv = ["infer", str(run), str(scan_path), "-o", str(out), "--refine", "4"]
    assert main(argv) == 0
    rec = read_recon_npz(out)
    assert rec["_metadata"]["config"]["refinement"]["iterations"] == 4
    assert rec["_metadata"]["backend"] == "tensorflow"
    assert rec["_metadata"]["config"]["refinement"]["solver"] == "numpy"
    misfit = [float(r["misfit"]) for r in _rows(out / "refine.csv")]
    assert len(misfit) == 5 and misfit[-1] < 0.5 * misfit[0]
    assert (out / "recon.h5").exists() and (out / "recon.png").exists()
