"""The ``ptycho`` command without a backend: help, exit codes, inspect, backends, simulate,
convert, evaluate, deprecated flags. Commands that would import a framework are not run here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho_cli.main import main
from ptycho_core.io import load_npz, read_product

FRAMEWORKS = ("tensorflow", "torch", "keras", "lightning")


def _ptycho(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ptycho_cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=dict(os.environ, MPLBACKEND="Agg"),
    )


def test_help_and_import_load_no_framework():
    code = (
        "import sys, contextlib, io\n"
        "import ptycho_cli, ptycho_cli.factories, ptycho_cli.dispatch, ptycho_cli.execution\n"
        "from ptycho_cli.main import main\n"
        "for argv in (['--help'], ['train', '--help'], ['infer', '--help'], ['demo', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        assert main(argv) == 0\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for cmd in ("train", "infer", "simulate", "evaluate", "demo", "inspect", "backends", "convert"):
        assert cmd in text


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["train"],
        ["nonsense"],
        ["train", "x.npz", "--epochs", "0"],
        ["infer", "m", "d", "--learning-rate", "1"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_file_is_one_line_exit_1(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.npz"), "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ptycho: error: {tmp_path / 'missing.npz'}: training data file not found"]
    assert not (tmp_path / "o").exists()


def test_debug_shows_traceback(tmp_path, capsys):
    assert main(["--debug", "inspect", str(tmp_path / "x.zip")]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_keyboard_interrupt_exit_130(monkeypatch, capsys):
    from ptycho_cli.commands import backends

    def boom(args, console):
        raise KeyboardInterrupt

    monkeypatch.setattr(backends, "run", boom)
    assert main(["backends"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_backends_lists_both(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "pytorch" in out and "tensorflow" in out
    assert not any(m in sys.modules for m in FRAMEWORKS)


def test_inspect_prints_manifest(bundle_file, capsys):
    bundle = bundle_file("tensorflow", gridsize=2)
    assert main(["inspect", str(bundle.parent)]) == 0
    out = capsys.readouterr().out
    assert "backend:         tensorflow" in out and "gridsize" in out and "probe.npy" in out
    assert main(["inspect", "--json", str(bundle)]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["backend"] == "tensorflow" and manifest["model_config"]["gridsize"] == 2
    assert not any(m in sys.modules for m in FRAMEWORKS)


def test_inspect_corrupt_bundle(tmp_path, capsys):
    bad = tmp_path / "wts.h5.zip"
    bad.write_bytes(b"garbage")
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"ptycho: error: {bad}: ")


def test_deprecated_flags_warn_and_mismatch_is_reported(bundle_file, scan_file, tmp_path, capsys):
    out_dir = tmp_path / "o"
    with pytest.warns(DeprecationWarning):
        rc = main(
            [
                "infer",
                str(bundle_file("pytorch")),
                str(scan_file()),
                "-o",
                str(out_dir),
                "--backend",
                "tensorflow",
                "--device",
                "cpu",
                "--disable_mlflow",
            ]
        )
    err = capsys.readouterr().err
    assert rc == 1
    assert "ptycho: warning: --device is deprecated; use --accelerator cpu" in err
    assert "ptycho: warning: --disable_mlflow is deprecated; use --logger none" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ptycho: error: ") and "'pytorch'" in last and "'tensorflow'" in last
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_simulate_writes_scan_and_preview(tmp_path, capsys):
    out = tmp_path / "sim" / "scan.npz"
    out.parent.mkdir()
    assert main(["simulate", str(out), "--N", "32", "--n-positions", "20", "--seed", "3"]) == 0
    scan = load_npz(out)
    assert scan.M == 20 and scan.N == 32 and scan.object is not None
    assert (out.parent / "scan.png").stat().st_size > 10_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["scan.npz", "scan.png"]


def test_convert_round_trip(scan_file, tmp_path, capsys):
    src = scan_file(n=32, m=12)
    h5 = tmp_path / "product.h5"
    assert main(["convert", str(src), str(h5), "--pixel-size-m", "2e-8"]) == 0
    product = read_product(h5)
    scan = load_npz(src)
    # metres by the specs/data-contracts.md mapping, computed here from the object grid (W = H = 64)
    np.testing.assert_allclose(product.probe_position_x_m, (scan.xcoords - 31.5) * 2e-8)
    np.testing.assert_allclose(product.object[0], scan.object, rtol=1e-6)

    # product → npz needs the diffraction data
    back = tmp_path / "back.npz"
    assert main(["convert", str(h5), str(back)]) == 1
    assert "--diffraction" in capsys.readouterr().err
    assert not back.exists()
    np.save(tmp_path / "intensity.npy", scan.diffraction.astype(np.float64) ** 2)
    assert (
        main(
            [
                "convert",
                str(h5),
                str(back),
                "--diffraction",
                str(tmp_path / "intensity.npy"),
                "--intensity",
            ]
        )
        == 0
    )
    again = load_npz(back)
    np.testing.assert_allclose(again.xcoords, scan.xcoords, atol=1e-9)
    np.testing.assert_allclose(again.ycoords, scan.ycoords, atol=1e-9)
    np.testing.assert_allclose(again.diffraction, scan.diffraction, rtol=1e-6)


def test_convert_wrong_pattern_count(scan_file, tmp_path, capsys):
    h5 = tmp_path / "p.h5"
    assert main(["convert", str(scan_file(m=12)), str(h5)]) == 0
    np.save(tmp_path / "d.npy", np.ones((5, 32, 32)))
    assert (
        main(
            ["convert", str(h5), str(tmp_path / "o.npz"), "--diffraction", str(tmp_path / "d.npy")]
        )
        == 1
    )
    assert "(12, N, N)" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def _recon_npz(path: Path, canvas: np.ndarray, origin: tuple[int, int]) -> Path:
    np.savez(
        path,
        object=canvas.astype(np.complex64),
        coverage=np.ones(canvas.shape, np.float32),
        origin=np.array(origin, float),
        amplitude=np.abs(canvas),
        phase=np.angle(canvas),
        positions=np.zeros((1, 2)),
    )
    return path


def test_evaluate_aligns_canvas_origin_with_truth(scan_file, tmp_path, capsys):
    truth = load_npz(scan_file(n=32)).object
    x0, y0 = 5, 9
    canvas = truth[y0 : y0 + 40, x0 : x0 + 30] * 2.0 * np.exp(0.7j)  # scale and phase offset
    rec = _recon_npz(tmp_path / "recon.npz", canvas, (x0, y0))
    assert main(["evaluate", str(rec), str(tmp_path / "scan.npz")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["metrics"]["ssim_amp"] > 0.999 and metrics["metrics"]["ssim_phase"] > 0.999
    assert metrics["scored_pixels"] == 40 * 30
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    assert "SSIM" in capsys.readouterr().out

    # the same canvas placed at the wrong origin scores clearly worse
    rec = _recon_npz(tmp_path / "shifted.npz", canvas, (x0 + 6, y0))
    assert main(["evaluate", str(rec), str(tmp_path / "scan.npz"), "-o", str(tmp_path / "e2")]) == 0
    worse = json.loads((tmp_path / "e2" / "metrics.json").read_text())["metrics"]
    assert worse["ssim_amp"] < 0.8


def test_evaluate_needs_ground_truth(scan_file, tmp_path, capsys):
    rec = _recon_npz(tmp_path / "recon.npz", np.ones((8, 8)), (0, 0))
    no_truth = scan_file("nt.npz", with_object=False)
    assert main(["evaluate", str(rec), str(no_truth)]) == 1
    assert "objectGuess" in capsys.readouterr().err
    assert not (tmp_path / "metrics.json").exists()


def test_evaluate_rejects_a_non_recon_file(scan_file, tmp_path, capsys):
    data = scan_file()
    assert main(["evaluate", str(data), str(data)]) == 1
    err = capsys.readouterr().err
    assert "not a ptycho reconstruction" in err and str(data) in err


def test_python_dash_m_entry_point(tmp_path):
    out = _ptycho("backends", cwd=tmp_path)
    assert out.returncode == 0 and "pytorch" in out.stdout


def test_simulate_scenarios_and_probe_file(tmp_path):
    from ptycho_core.simulation import beamline_probe, default_probe

    real = tmp_path / "real.npz"
    assert main(["simulate", str(real), "--N", "32", "--n-positions", "12", "--no-plot"]) == 0
    np.testing.assert_array_equal(load_npz(real).probe, beamline_probe(32))
    easy = tmp_path / "easy.npz"
    argv = ["simulate", str(easy), "--N", "32", "--n-positions", "12", "--no-plot"]
    assert main([*argv, "--scenario", "procedural"]) == 0
    np.testing.assert_array_equal(load_npz(easy).probe, default_probe(32))
    # the probe of another file sets N (64 here, although --N says 32)
    src = tmp_path / "src.npz"
    assert main(["simulate", str(src), "--N", "64", "--n-positions", "12", "--no-plot"]) == 0
    out = tmp_path / "with_probe.npz"
    assert (
        main(["simulate", str(out), "--n-positions", "12", "--probe", str(src), "--no-plot"]) == 0
    )
    got = load_npz(out)
    assert got.N == 64
    np.testing.assert_array_equal(got.probe, load_npz(src).probe)


def test_simulate_probe_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "probe.txt"
    bad.write_text("not a probe")
    assert main(["simulate", str(tmp_path / "o.npz"), "--probe", str(bad), "--no-plot"]) == 1
    assert "probe.txt" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()
