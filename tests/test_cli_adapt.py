"""``ptycho infer --adapt-epochs K --save-adapted DIR`` end to end through the installed command
with the real PyTorch backend (subprocesses only: this pytest process imports no framework).

simulate → train (tiny) → infer with adaptation (MODEL's bytes unchanged, DIR holds a bundle
with ``adapted_from`` and a history) → ``ptycho infer DIR`` loads it → ``ptycho inspect``.
The same engine path runs for TensorFlow in ``packages/ptycho-tf/tests/test_adaptation.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

TINY = ["--n-filters-scale", "1", "--batch-size", "16", "--logger", "none", "--accelerator", "cpu"]


def ptycho(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("ptycho")
    cmd = [exe] if exe else [sys.executable, "-m", "ptycho_cli"]
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    out = subprocess.run(
        cmd + [str(a) for a in args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr[-4000:]}"
    return out


def test_infer_adapts_saves_and_reloads(tmp_path):
    ptycho("simulate", "scan.npz", "--N", "32", "--n-positions", "48", "--seed", "1", cwd=tmp_path)
    ptycho("simulate", "new.npz", "--N", "32", "--n-positions", "40", "--seed", "2", cwd=tmp_path)
    ptycho("train", "scan.npz", "-o", "run", "--epochs", "1", "--quiet", *TINY, cwd=tmp_path)
    bundle = tmp_path / "run" / "wts.h5.zip"
    sha0 = hashlib.sha256(bundle.read_bytes()).hexdigest()

    out = ptycho(
        "infer", "run", "new.npz", "-o", "plain", "--quiet", "--accelerator", "cpu", cwd=tmp_path
    )
    assert "adapted" not in out.stdout
    out = ptycho(
        "infer",
        "run",
        "new.npz",
        "-o",
        "rec",
        "--adapt-epochs",
        "2",
        "--save-adapted",
        "kept",
        "--accelerator",
        "cpu",
        cwd=tmp_path,
    )
    assert "adapted the model for 2 epochs in" in out.stdout
    assert "adapting a copy of the model" in out.stderr
    # not a terminal: one progress line per adaptation epoch (specs/cli.md "Progress")
    assert "epoch 1/2" in out.stderr and "epoch 2/2" in out.stderr
    assert hashlib.sha256(bundle.read_bytes()).hexdigest() == sha0
    kept = tmp_path / "kept"
    assert (kept / "wts.h5.zip").is_file() and (kept / "history.csv").is_file()
    assert len((kept / "history.csv").read_text().splitlines()) == 3

    info = json.loads(ptycho("inspect", "--json", "kept", cwd=tmp_path).stdout)
    assert info["adapted_from"]["sha256"] == sha0 and info["adapted_from"]["scan"] == "new.npz"
    assert info["training_config"]["nepochs"] == 2

    ptycho(
        "infer", "kept", "new.npz", "-o", "again", "--quiet", "--accelerator", "cpu", cwd=tmp_path
    )
    with (
        np.load(tmp_path / "rec" / "recon.npz") as a,
        np.load(tmp_path / "again" / "recon.npz") as b,
    ):
        np.testing.assert_allclose(a["object"], b["object"], rtol=1e-5, atol=1e-6)
    with (
        np.load(tmp_path / "plain" / "recon.npz") as p,
        np.load(tmp_path / "rec" / "recon.npz") as a,
    ):
        assert np.max(np.abs(a["object"] - p["object"])) > 1e-4
