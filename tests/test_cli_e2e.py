"""End to end through the installed ``ptycho`` command (subprocesses only: this pytest process
must not import a deep-learning framework).

simulate → train (both backends, tiny) → inspect → infer → evaluate → convert, products re-read
with Ptychodus's own reader when it is installed; bad inputs give exit 1, one line, and no
partial output; ``ptycho --help`` imports no framework; ``ptycho demo --quick`` runs.
Sizes are tiny (N=32, 48 positions, 1 epoch) so the whole file stays well under two minutes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptycho_core import backends as core_backends
from ptycho_core.io import ScanData, load_npz, read_product, save_npz

pytestmark = pytest.mark.slow

BACKENDS = core_backends.BACKEND_NAMES
FRAMEWORKS = tuple(m for info in core_backends.BACKENDS for m in info.framework_modules)
TINY = [
    "--epochs",
    "1",
    "--n-filters-scale",
    "1",
    "--batch-size",
    "16",
    "--quiet",
    "--logger",
    "none",
    "--accelerator",
    "cpu",
]


def ptycho(*args: object, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    exe = shutil.which("ptycho")
    cmd = [exe] if exe else [sys.executable, "-m", "ptycho_cli"]
    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    return subprocess.run(
        cmd + [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


#: ``ptycho`` with a spy on the CLI's loss figure: it fails if ``loss.png`` is already in the
#: output folder when the CLI draws it (the backend wrote one), and reports the epochs drawn.
_SPIED_PTYCHO = """
import sys
from pathlib import Path
from ptycho_cli import figures
from ptycho_cli.main import main
real = figures.loss_figure
def spy(path, history):
    out = Path(path).parent.parent  # the CLI draws into a staging folder inside the output
    if (out / "loss.png").exists():
        raise SystemExit("the backend wrote loss.png; only the CLI may")
    print("LOSS_EPOCHS", len(history["train_loss"]), flush=True)
    return real(path, history)
figures.loss_figure = spy
sys.exit(main(sys.argv[1:]))
"""


def spied_ptycho(*args: object, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    return subprocess.run(
        [sys.executable, "-c", _SPIED_PTYCHO, *(str(a) for a in args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr[-4000:]}"
    return out


def one_line_error(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 1, f"exit {out.returncode}\n{out.stderr[-3000:]}"
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("ptycho: error: ") and "Traceback" not in out.stderr
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    ok(
        ptycho(
            "simulate",
            "scan.npz",
            "--N",
            "32",
            "--n-positions",
            "48",
            "--seed",
            "1",
            "--nphotons",
            "1e6",
            cwd=root,
        )
    )
    return root


@pytest.fixture(scope="module")
def trained(work) -> dict[str, Path]:
    runs = {}
    for backend in BACKENDS:
        args = ("train", "scan.npz", "-o", f"run_{backend}", "--backend", backend, *TINY)
        out = ok(spied_ptycho(*args, cwd=work))
        assert f"trained with the {backend} backend" in out.stdout
        assert "LOSS_EPOCHS 1" in out.stdout  # the CLI drew loss.png from the result's history
        runs[backend] = work / f"run_{backend}"
    return runs


def _ptychodus_io():
    if importlib.util.find_spec("ptychodus") is None:
        return None
    try:
        import ptychodus.api.io as pio
    except Exception:  # a broken optional install means: skip that check
        return None
    return pio


def test_help_imports_no_framework(work):
    out = ok(
        subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "ptycho_cli", "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=work,
        )
    )
    imported = {
        line.split("|")[-1].strip().split(".")[0] for line in out.stderr.splitlines() if "|" in line
    }
    assert not imported & set(FRAMEWORKS), imported & set(FRAMEWORKS)
    assert "ptycho_cli" in imported and "usage: ptycho" in out.stdout


def test_simulate_output(work):
    scan = load_npz(work / "scan.npz")
    assert scan.M == 48 and scan.N == 32 and scan.object is not None
    assert (work / "scan.png").is_file()


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_outputs_and_inspect(trained, backend, work):
    run = trained[backend]
    for name in ("wts.h5.zip", "history.csv", "loss.png"):
        assert (run / name).is_file(), name
    out = ok(ptycho("inspect", run, cwd=work))
    assert f"backend:         {backend}" in out.stdout
    manifest = json.loads(ok(ptycho("inspect", "--json", run / "wts.h5.zip", cwd=work)).stdout)
    assert manifest["backend"] == backend and manifest["model_config"]["N"] == 32
    assert manifest["model_config"]["n_filters_scale"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_infer_evaluate_and_products(trained, backend, work):
    rec = work / f"rec_{backend}"
    out = ok(ptycho("infer", trained[backend], "scan.npz", "-o", rec, "--quiet", cwd=work))
    assert f"with the {backend} backend" in out.stdout
    for name in ("recon.npz", "recon.h5", "recon.png"):
        assert (rec / name).is_file(), name
    assert not [p.name for p in rec.iterdir() if p.name.startswith(".")]  # no staging left
    with np.load(rec / "recon.npz", allow_pickle=False) as z:
        obj, cov = z["object"], z["coverage"]
    scan = load_npz(work / "scan.npz")
    assert obj.shape == scan.object.shape and np.isfinite(obj).all() and (cov > 0).mean() > 0.3

    out = ok(ptycho("evaluate", rec, "scan.npz", cwd=work))
    assert "amplitude  SSIM" in out.stdout and "phase      SSIM" in out.stdout
    metrics = json.loads((rec / "metrics.json").read_text())["metrics"]
    for key in ("ssim_amp", "ssim_phase", "psnr_amp", "psnr_phase"):
        assert np.isfinite(metrics[key]), key
    assert (rec / "comparison.png").is_file()

    product = read_product(rec / "recon.h5")
    np.testing.assert_allclose(product.object[0], obj, rtol=1e-6, atol=1e-7)
    pio = _ptychodus_io()
    if pio is not None:
        theirs = pio.load_product(rec / "recon.h5")
        np.testing.assert_allclose(np.squeeze(theirs.object_.get_array()), obj, atol=1e-6)
        geometry = theirs.object_.get_geometry()
        px = geometry.map_probe_positions_to_object_x_px(theirs.probe_positions)
        np.testing.assert_allclose(px, scan.xcoords, atol=1e-6)


def test_convert_to_product_and_back(work):
    ok(ptycho("convert", "scan.npz", "scan.h5", "--pixel-size-m", "5e-9", cwd=work))
    product = read_product(work / "scan.h5")
    scan = load_npz(work / "scan.npz")
    assert product.object_pixel_width_m == 5e-9 and product.probe_position_x_m.size == scan.M
    pio = _ptychodus_io()
    if pio is not None:
        theirs = pio.load_product(work / "scan.h5")
        np.testing.assert_allclose(np.squeeze(theirs.probes.get_array()), scan.probe, atol=1e-7)
    np.save(work / "diff.npy", scan.diffraction)
    ok(ptycho("convert", "scan.h5", "back.npz", "--diffraction", "diff.npy", cwd=work))
    back = load_npz(work / "back.npz")
    np.testing.assert_allclose(back.xcoords, scan.xcoords, atol=1e-9)
    np.testing.assert_array_equal(back.diffraction, scan.diffraction)


# ----------------------------------------------------------------------------- bad inputs
def _bad_scan(work: Path, name: str, **changes) -> Path:
    scan = load_npz(work / "scan.npz")
    arrays = {
        "diffraction": scan.diffraction,
        "xcoords": scan.xcoords,
        "ycoords": scan.ycoords,
        "probeGuess": scan.probe,
    }
    arrays.update(changes)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(work / name, **arrays)
    return work / name


def test_missing_key(work):
    bad = _bad_scan(work, "nokey.npz", probeGuess=None)
    line = one_line_error(ptycho("train", bad, "-o", "out_nokey", *TINY, cwd=work))
    assert str(bad.name) in line and "probeGuess" in line
    assert not (work / "out_nokey").exists() or not any((work / "out_nokey").iterdir())


def test_wrong_shapes(work):
    bad = _bad_scan(work, "shape.npz", probeGuess=np.ones((16, 16), np.complex64))
    line = one_line_error(ptycho("train", bad, "-o", "out_shape", *TINY, cwd=work))
    assert "probeGuess" in line and "(16, 16)" in line
    assert not (work / "out_shape").exists() or not any((work / "out_shape").iterdir())


def test_corrupt_bundle(work, trained):
    corrupt = work / "corrupt" / "wts.h5.zip"
    corrupt.parent.mkdir(exist_ok=True)
    data = (trained["pytorch"] / "wts.h5.zip").read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])
    line = one_line_error(ptycho("infer", corrupt, "scan.npz", "-o", "out_corrupt", cwd=work))
    assert str(corrupt) in line
    assert not (work / "out_corrupt").exists() or not any((work / "out_corrupt").iterdir())


def test_torch_bundle_with_tensorflow_backend(work, trained):
    out = ptycho(
        "infer",
        trained["pytorch"],
        "scan.npz",
        "-o",
        "out_mismatch",
        "--backend",
        "tensorflow",
        cwd=work,
    )
    line = one_line_error(out)
    assert "'pytorch'" in line and "'tensorflow'" in line and "--backend pytorch" in line
    assert "ptycho convert-bundle" in line and "--to tensorflow" in line
    assert not (work / "out_mismatch").exists() or not any((work / "out_mismatch").iterdir())


@pytest.mark.parametrize("source", BACKENDS)
def test_convert_bundle_reconstructs_through_the_other_backend(work, trained, source):
    """A bundle trained with one backend, converted, reconstructs through the other to within
    the parity tolerance (1e-4 of the object's scale, specs/training.md "Backend parity")."""
    target = next(b for b in BACKENDS if b != source)
    src = trained[source] / "wts.h5.zip"
    conv = work / f"converted_{source}"
    out = ok(ptycho("convert-bundle", trained[source], conv, cwd=work))  # --to: the other one
    assert f"({target}; converted from the {source} bundle" in out.stdout
    manifest = json.loads(ok(ptycho("inspect", "--json", conv / "wts.h5.zip", cwd=work)).stdout)
    assert manifest["backend"] == target
    origin = manifest["converted_from"]
    assert origin["backend"] == source
    assert origin["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    # converting again over it needs --force; the source is never replaced
    again = ptycho("convert-bundle", src, conv, cwd=work)
    last = again.stderr.strip().splitlines()[-1]
    assert again.returncode == 1 and last.startswith("ptycho: error: ") and "--force" in last

    objects = {}
    for name, bundle in ((source, trained[source]), (target, conv)):
        rec = work / f"rec_conv_{source}_{name}"
        out = ok(ptycho("infer", bundle, "scan.npz", "-o", rec, "--quiet", cwd=work))
        assert f"with the {name} backend" in out.stdout
        with np.load(rec / "recon.npz", allow_pickle=False) as z:
            objects[name] = z["object"]
    a, b = objects[source], objects[target]
    assert np.max(np.abs(a - b)) <= 1e-4 * np.max(np.abs(a))


def test_scan_with_other_n_than_bundle(work, trained):
    big = ScanData(
        diffraction=np.ones((8, 64, 64), np.float32),
        xcoords=np.arange(8.0) + 40,
        ycoords=np.arange(8.0) + 40,
        probe=np.ones((64, 64), np.complex64),
    )
    save_npz(work / "n64.npz", big)
    line = one_line_error(ptycho("infer", trained["pytorch"], "n64.npz", "-o", "out_n64", cwd=work))
    assert "N = 64" in line and "N = 32" in line


def test_demo_quick(work):
    out = ok(ptycho("demo", "--quick", "-o", "demo", cwd=work))
    assert "held-out reconstruction vs ground truth" in out.stdout
    assert "amplitude  SSIM" in out.stdout
    for name in (
        "demo.png",
        "metrics.json",
        "recon.npz",
        "recon.h5",
        "wts.h5.zip",
        "loss.png",
        "comparison.png",
        "train.npz",
        "test.npz",
    ):
        assert (work / "demo" / name).is_file(), name
    record = json.loads((work / "demo" / "metrics.json").read_text())
    assert record["demo"]["held_out_patterns"] > 0 and record["demo"]["train_patterns"] > 0


# ----------------------------------------------------------------------------- issue 11 (CLI)
def _with_manifest(src: Path, dst: Path, **changes) -> Path:
    """A copy of bundle ``src`` with manifest values changed (``model_config__N`` reaches into
    a mapping) and the checksums recomputed, so only the changed values are wrong."""
    import hashlib
    import zipfile

    with zipfile.ZipFile(src) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        files = {n: zf.read(n) for n in zf.namelist() if n != "manifest.json"}
    for key, value in changes.items():
        *parents, last = key.split("__")
        target = manifest
        for part in parents:
            target = target[part]
        target[last] = value
    manifest["files"] = {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for name, data in files.items():
            zf.writestr(name, data)
    return dst


@pytest.mark.parametrize("backend", BACKENDS)
def test_inspect_verify_and_short_architecture_mismatch(trained, backend, work):
    out = ok(ptycho("inspect", "--verify", trained[backend], cwd=work))
    assert "verified:" in out.stdout and f"the weights load into the {backend} model" in out.stdout
    # the weights are n_filters_scale 1; a manifest that claims 2 describes another network
    bad = _with_manifest(
        trained[backend] / "wts.h5.zip",
        work / f"arch_{backend}" / "wts.h5.zip",
        model_config__n_filters_scale=2,
    )
    for argv in (("inspect", "--verify", bad), ("infer", bad, "scan.npz", "-o", "out_arch")):
        out = ptycho("--quiet", *argv, cwd=work)
        assert out.returncode == 1, out.stderr[-3000:]
        # TensorFlow's C++ start-up notes are not ours; every ptycho line is the one error
        lines = [ln for ln in out.stderr.splitlines() if ln.startswith("ptycho:")]
        assert len(lines) == 1 and lines[0].startswith("ptycho: error: "), out.stderr
        line = lines[0]
        assert str(bad) in line and "model_config" in line and "of another shape" in line
        assert len(line) < 300, line
    assert not (work / "out_arch").exists()


def test_nan_intensity_scale_is_refused(trained, work):
    bad = _with_manifest(
        trained["pytorch"] / "wts.h5.zip",
        work / "nan_scale" / "wts.h5.zip",
        intensity_scale=float("nan"),  # written as JSON NaN
    )
    line = one_line_error(ptycho("infer", bad, "scan.npz", "-o", "out_nan", cwd=work))
    assert str(bad) in line and "'intensity_scale'" in line and "nan" in line
    assert not (work / "out_nan").exists()


def test_output_path_that_is_a_file(trained, work):
    before = (work / "scan.npz").read_bytes()
    line = one_line_error(
        ptycho("infer", trained["pytorch"], "scan.npz", "-o", "scan.npz", cwd=work)
    )
    assert line == "ptycho: error: scan.npz: output folder is an existing file, not a folder"
    assert (work / "scan.npz").read_bytes() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_progress_is_one_line_per_epoch_into_a_file(backend, work):
    """stdout and stderr captured (not a TTY): no live bar, no carriage returns, one line per
    epoch (the audit's 60-epoch demo log grew to megabytes of bar redraws)."""
    args = [a for a in TINY if a != "--quiet"]
    epochs = args.index("--epochs") + 1
    args[epochs] = "2"
    out = ok(
        ptycho(
            "train", "scan.npz", "-o", f"progress_{backend}", "--backend", backend, *args, cwd=work
        )
    )
    assert "\r" not in out.stdout and "\r" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("ptycho: epoch ")]
    assert [ln.split()[2] for ln in lines] == ["1/2", "2/2"], out.stderr
    assert len(out.stdout) + len(out.stderr) < 5000


# ----------------------------------------------------------------------------- issue 11 (runs)
def _popen(*args: object, cwd: Path) -> subprocess.Popen:
    exe = shutil.which("ptycho")
    cmd = [exe] if exe else [sys.executable, "-m", "ptycho_cli"]
    env = dict(os.environ, MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0")
    return subprocess.Popen(
        cmd + [str(a) for a in args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _history_rows(path: Path) -> list[dict[str, float]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: float(v) if v else float("nan") for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def _interrupt_after_epochs(proc: subprocess.Popen, run: Path, epochs: int, sig: int) -> str:
    """Send ``sig`` once the run's work folder has recorded ``epochs`` epochs (the next one
    is then running); return stderr."""
    import time

    history = run / ".ptycho-run" / "history.csv"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().strip().splitlines()) > epochs:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the signal: {proc.communicate()[1][-3000:]}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return err


#: Runs long enough to be interrupted mid-epoch: 128 positions, epochs of about a second.
#: Gridsize 1: these runs test interruption and locking over several epochs, not the model;
#: the default gridsize 2 (its physics stages) would triple their time in CI.
RUN = [
    "--gridsize",
    "1",
    "--n-filters-scale",
    "1",
    "--batch-size",
    "8",
    "--logger",
    "none",
    "--accelerator",
    "cpu",
]


@pytest.fixture(scope="module")
def long_scan(work) -> Path:
    ok(
        ptycho(
            "simulate",
            "long.npz",
            "--N",
            "32",
            "--n-positions",
            "128",
            "--seed",
            "4",
            "--no-plot",
            cwd=work,
        )
    )
    return work / "long.npz"


@pytest.mark.parametrize(
    ("backend", "sig"),
    [("pytorch", signal.SIGINT), ("tensorflow", signal.SIGTERM)],
    ids=["pytorch-SIGINT", "tensorflow-SIGTERM"],
)
def test_interrupt_then_resume_matches_an_uninterrupted_run(backend, sig, work, long_scan):
    """D4 + D7 with the real frameworks: the signal ends the run with 128+signal and one
    "interrupted" line, the folder keeps its previous run, and ``--resume`` reaches the history
    of an uninterrupted run — identical for PyTorch on the CPU, within 1e-6 (relative) for
    TensorFlow (specs/tf-backend.md)."""
    args = ("--backend", backend, "--epochs", "4", "--early-stop-patience", "10", *RUN)
    ref = work / f"straight_{backend}"
    ok(ptycho("train", long_scan, "-o", ref, "-q", *args, cwd=work))
    run = work / f"resumed_{backend}"
    shutil.copytree(ref, run)  # a finished run the interrupted one must leave intact
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}

    proc = _popen("train", long_scan, "-o", run, "--overwrite", *args, cwd=work)
    err = _interrupt_after_epochs(proc, run, 2, sig)
    assert proc.returncode == 128 + sig, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("ptycho: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err[-3000:]
    name = signal.Signals(sig).name
    assert errors[0].startswith(f"ptycho: error: interrupted ({name}); {run} is unchanged")
    assert errors[0].endswith("--resume")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert not (run / ".ptycho.lock").exists()

    ok(ptycho("train", long_scan, "-o", run, "-q", "--resume", cwd=work))  # settings: the run's
    got, want = _history_rows(run / "history.csv"), _history_rows(ref / "history.csv")
    assert [r["epoch"] for r in got] == [0, 1, 2, 3]
    for key in ("train_loss", "val_loss", "lr"):
        a, b = np.array([r[key] for r in got]), np.array([r[key] for r in want])
        if backend == "pytorch":
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-6)
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [".ptycho-run.json"]


def test_two_concurrent_trainings_into_one_folder(work, long_scan):
    """D6: the second run fails at once naming the folder and the first run; the folder ends up
    holding exactly the first run."""
    import time

    run = work / "concurrent"
    args = ("--epochs", "3", *RUN)
    first = _popen("train", long_scan, "-o", run, "-q", *args, cwd=work)
    lock = run / ".ptycho.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = ptycho("train", long_scan, "-o", run, "-q", *args, cwd=work)
    line = one_line_error(second)
    assert line.startswith(f"ptycho: error: {run}: another ptycho train (PID {first.pid}")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert len(_history_rows(run / "history.csv")) == 3
    assert json.loads((run / ".ptycho-run.json").read_text())["config"]["nepochs"] == 3


def test_sigterm_mid_demo_leaves_the_folder_as_it_was(work):
    """The audit's SIGTERM case with a real backend: nothing of the unfinished demo remains."""
    out = work / "demo_killed"
    proc = _popen("demo", "--quick", "--epochs", "20", "-o", out, cwd=work)
    err = _interrupt_after_epochs(proc, out, 1, signal.SIGTERM)
    assert proc.returncode == 143, err[-3000:]
    assert (
        err.strip().splitlines()[-1] == f"ptycho: error: interrupted (SIGTERM); {out} is unchanged"
    )
    assert not out.exists()
