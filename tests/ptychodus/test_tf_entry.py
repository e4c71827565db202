"""Acceptance: ptycho as Ptychodus 1.7.0's "PtychoPINN" (TensorFlow-named) library, through
Ptychodus's own, unchanged code (``specs/ptychodus.md``; distribution ``ptycho-ptychodus``).

Ptychodus runs each reconstruct/train in a spawned child that imports the legacy ``ptycho``
package; this test imports no framework into the pytest process (the direct backend call that
the results are compared with runs in a worker process, ``_tf_direct.py``). These tests FAIL,
never skip, when Ptychodus or ptycho-ptychodus is missing.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ptycho_core import bundle as core_bundle
from ptycho_core.io import ScanData, read_product, save_npz
from ptycho_core.simulation import simulate_scan

N = 32
CROP = 20  # the M Ptychodus passes to reassemble_position
PIXEL_W, PIXEL_H = 1.0e-8, 1.2e-8  # non-square object pixels
CENTER = (3e-6, -2e-6)  # metres, non-zero
WORKER = Path(__file__).with_name("_tf_direct.py")


def _require(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(
            f"{name} is required: pip install --no-deps ptychodus==1.7.0 (plus pydantic psutil "
            f"tifffile watchdog colorcet httpx 'pydantic-ai-slim[openai]' hdf5plugin) and "
            f"pip install -e packages/ptycho-ptychodus ({exc})",
            pytrace=False,
        )


@pytest.fixture(scope="module")
def pty():
    """The Ptychodus modules used here, and the check that ``ptycho`` is ours."""
    legacy = _require("ptycho")
    try:
        ours = metadata.version("ptycho-ptychodus") == getattr(legacy, "__version__", None)
    except metadata.PackageNotFoundError:
        ours = False
    if not ours:
        pytest.fail(f"'ptycho' is not ptycho-ptychodus's package: {legacy.__file__}")
    return SimpleNamespace(
        core=_require("ptychodus.model.ptychopinn.core"),
        settings=_require("ptychodus.api.settings"),
        reconstruct=_require("ptychodus.api.reconstruct"),
        obj=_require("ptychodus.api.object"),
        probe=_require("ptychodus.api.probe"),
        positions=_require("ptychodus.api.probe_positions"),
        product=_require("ptychodus.api.product"),
        geometry=_require("ptychodus.api.geometry"),
        diffraction=_require("ptychodus.api.preprocess.diffraction"),
        protocol=_require("ptychodus.model.processing._subprocess_protocol"),
    )


def _library(pty, *, epochs: int = 1):
    lib = pty.core.PtychoPINNReconstructorLibrary(pty.settings.SettingsRegistry(), False)
    lib.training_settings.nepochs.set_value(epochs)
    return lib


def _reconstructor(lib, name: str = "PINN"):
    return next(r for r in lib if r.name == name)


def _input(pty, modes: int = 1):
    """A Ptychodus ReconstructInput: counts (uint32) of a simulated scan, one bad pixel, the
    object grid from Ptychodus's own ``compute_object_geometry``."""
    sim = simulate_scan(N=N, n_positions=40, seed=0)
    counts = np.rint(sim.diffraction.astype(np.float64) ** 2).astype(np.uint32)
    bad = np.zeros((N, N), bool)
    bad[3, 5] = True
    xs = CENTER[0] + (sim.xcoords - sim.xcoords.mean()) * PIXEL_W
    ys = CENTER[1] + (sim.ycoords - sim.ycoords.mean()) * PIXEL_H
    P = pty.positions
    positions = P.ProbePositionSequence(
        [
            P.ProbePosition(i, float(x), float(y))
            for i, (x, y) in enumerate(zip(xs, ys, strict=True))
        ]
    )
    pixels = pty.geometry.PixelGeometry(width_m=PIXEL_W, height_m=PIXEL_H)
    stack = np.stack([sim.probe * (0.5**k) for k in range(modes)])[None].astype(np.complex64)
    probes = pty.probe.ProbeSequence(stack, None, pixels)
    geo = pty.obj.compute_object_geometry(list(positions), probes.get_geometry())
    obj = pty.obj.Object(
        np.ones((1, geo.height_px, geo.width_px), np.complex64),
        pixels,
        pty.obj.ObjectCenter(x_m=geo.center_x_m, y_m=geo.center_y_m),
        layer_spacing_m=[],
    )
    meta = pty.product.ProductMetadata(
        name="tf-entry",
        comments="",
        detector_distance_m=2.0,
        photon_energy_eV=10000.0,
        probe_photon_count=0.0,
        exposure_time_s=0.0,
        mass_attenuation_m2_per_kg=0.0,
        tomography_angle_deg=0.0,
    )
    product = pty.product.Product(
        metadata=meta, probe_positions=positions, probes=probes, object_=obj, losses=[]
    )
    return pty.reconstruct.ReconstructInput(counts, bad, product)


def _object_of(outputs) -> tuple[np.ndarray, object]:
    assert len(outputs) == 1
    o = outputs[0].product.object_
    return np.squeeze(o.get_array()), o


@pytest.fixture(scope="module")
def trained(pty, tmp_path_factory):
    """Ptychodus's own "Export Training Data" → train_data.npz / test_data.npz → ``train``."""
    folder = tmp_path_factory.mktemp("tf-train")
    lib = _library(pty, epochs=1)
    rec = _reconstructor(lib)
    rinput = _input(pty)
    rec.export_training_data(folder / "train_data.npz", rinput)
    rec.export_training_data(folder / "test_data.npz", rinput)
    outputs = list(rec.train(folder, folder))
    return SimpleNamespace(folder=folder, rec=rec, input=rinput, outputs=outputs)


# ----------------------------------------------------------------------------- fast
def test_library_lists_its_reconstructors(pty):
    lib = _library(pty)
    assert [r.name for r in lib] == ["PINN", "Supervised"]
    assert all(r.is_trainable for r in lib)
    assert "tensorflow" not in sys.modules  # the library is built without importing TF


@pytest.mark.parametrize("name", ["wts.h5.zip", "model.zip"])
def test_foreign_checkpoint_is_a_clear_error(pty, tmp_path, name):
    """An original PtychoPINN model archive (no ptycho manifest), under Ptychodus's two names."""
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("diffraction_to_obj/model.keras", b"not ours")
        zf.writestr("params.dill", b"\x80\x04")
    rec = _reconstructor(_library(pty))
    rec.load_model_from_file(path)
    with pytest.raises(pty.protocol.ChildError) as info:
        list(rec.reconstruct(_input(pty)))
    text = str(info.value) + info.value.child_traceback
    assert "original PtychoPINN" in text and "ForeignModelError" in text


def _framework_free_bundle(path: Path) -> None:
    """A structurally valid bundle whose weights are never read (the error comes first)."""
    from ptycho_core.config import ModelConfig, TrainingConfig

    tc = TrainingConfig(model=ModelConfig(N=N), backend="tensorflow")
    manifest = core_bundle.make_manifest(
        "tensorflow", tc.model, tc, 1.0, {}, ["autoencoder", "diffraction_to_obj"]
    )
    probe = core_bundle.npy_bytes(np.ones((N, N), np.complex64))
    core_bundle.write_bundle(path, manifest, {"probe.npy": probe, "model.weights.h5": b"x"})


def test_multimode_probe_is_a_clear_error(pty, tmp_path):
    _framework_free_bundle(tmp_path / "wts.h5.zip")
    rec = _reconstructor(_library(pty))
    rec.load_model_from_file(tmp_path / "wts.h5.zip")
    with pytest.raises(pty.protocol.ChildError) as info:
        list(rec.reconstruct(_input(pty, modes=2)))
    text = str(info.value) + info.value.child_traceback
    assert "single-mode probe" in text and "(2, 32, 32)" in text


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_train_from_ptychodus_export(trained):
    """A TensorFlow bundle with one epoch of training and validation loss, saved where
    Ptychodus records it."""
    assert trained.rec.is_model_loaded()
    bundle = trained.folder / "wts.h5.zip"
    assert trained.rec._loaded_model_path == bundle
    b = core_bundle.read_bundle(bundle, expected_backend="tensorflow")
    history = b.manifest["history"]
    assert len(history["train_loss"]) == 1 and len(history["val_loss"]) == 1
    assert np.isfinite(history["train_loss"][0]) and np.isfinite(history["val_loss"][0])
    assert b.manifest["model_config"]["N"] == N
    assert (trained.folder / "history.csv").is_file()
    assert len(trained.outputs) == 1  # Ptychodus's TF child reports one (empty) TrainOutput
    # counts were square-rooted: the estimated photons per pattern are the counts' mean sum
    counts = np.asarray(trained.input.diffraction_patterns, np.float64)
    nphotons = b.manifest["normalization"]["nphotons"]
    assert nphotons == pytest.approx(counts.sum(axis=(1, 2)).mean(), rel=1e-3)


def _direct(pty, rinput, bundle: Path, tmp: Path) -> np.ndarray:
    """Our backend called directly on the same data, in a worker process."""
    product = rinput.product
    geo = product.object_.get_geometry()
    inpainted = pty.diffraction.inpaint_bad_pixels(rinput.diffraction_patterns, rinput.bad_pixels)
    scan = ScanData(
        diffraction=np.sqrt(np.asarray(inpainted, np.float64)).astype(np.float32),
        xcoords=geo.map_probe_positions_to_object_x_px(product.probe_positions),
        ycoords=geo.map_probe_positions_to_object_y_px(product.probe_positions),
        probe=product.probes.get_probe_no_opr().get_array()[0],
        object=np.ones((geo.height_px, geo.width_px), np.complex64),
    )
    save_npz(tmp / "scan.npz", scan)
    out = tmp / "direct.npy"
    run = subprocess.run(
        [sys.executable, str(WORKER), str(bundle), str(tmp / "scan.npz"), str(out), str(CROP)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return np.load(out, allow_pickle=False)


@pytest.mark.slow
def test_reconstruct_matches_direct_backend_and_survives_save_reload(pty, trained, tmp_path):
    rinput = trained.input
    obj, out = _object_of(list(trained.rec.reconstruct(rinput)))
    inp = rinput.product.object_
    assert obj.shape == np.squeeze(inp.get_array()).shape
    assert out.get_center() == inp.get_center()
    assert out.get_pixel_geometry() == inp.get_pixel_geometry()
    assert np.isfinite(obj).all() and np.abs(obj).max() > 0

    direct = _direct(pty, rinput, trained.folder / "wts.h5.zip", tmp_path)
    np.testing.assert_allclose(obj, direct, rtol=0, atol=1e-5)

    # "Save Model" writes m.zip; loading it makes Ptychodus extract it (an unpacked bundle)
    saved = tmp_path / "m.zip"
    trained.rec.save_model(saved)
    assert json.loads(zipfile.ZipFile(saved).read("manifest.json"))["backend"] == "tensorflow"
    lib = _library(pty)
    again = _reconstructor(lib)
    again.load_model_from_file(saved)
    obj2, _ = _object_of(list(again.reconstruct(rinput)))
    np.testing.assert_allclose(obj2, obj, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_batch_reconstruct_writes_a_product_both_readers_load(pty, trained, tmp_path):
    """``ptychodus --batch reconstruct`` with ``Algorithm = ptychopinn_pinn`` and our bundle as
    ``model.zip`` (the original PtychoPINN's name): exit 0 and one product, which Ptychodus's
    reader and ours both load, equal to the interactive reconstruction."""
    io = _require("ptychodus.api.io")
    assemble = _require("ptychodus.api.assemble")
    rinput = trained.input
    folder = tmp_path / "in"
    folder.mkdir()
    patterns = rinput.diffraction_patterns
    data = assemble.AssembledDiffractionData(
        np.arange(len(patterns)),
        patterns,
        pty.geometry.PixelGeometry(75e-6, 75e-6),
        rinput.bad_pixels,
    )
    io.save_diffraction_data(folder / "diffraction.h5", data)
    io.save_product(folder / "product.h5", rinput.product)
    (folder / "settings.ini").write_text("[Processing]\nAlgorithm = ptychopinn_pinn\n")
    (folder / "model.zip").write_bytes((trained.folder / "wts.h5.zip").read_bytes())

    bin_dir = Path(sys.executable).parent
    exe = bin_dir / "ptychodus"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ptychodus"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", MPLBACKEND="Agg")
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    args = ["--batch", "reconstruct", "-i", str(folder), "-o", str(tmp_path / "out")]
    done = subprocess.run(
        cmd + args, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = sorted((tmp_path / "out").glob("product*.h5"))
    assert len(written) == 1, done.stderr[-2000:]

    want, _ = _object_of(list(trained.rec.reconstruct(rinput)))
    theirs = io.load_product(written[0])
    np.testing.assert_allclose(np.squeeze(theirs.object_.get_array()), want, atol=1e-5)
    ours = read_product(written[0])
    np.testing.assert_allclose(np.asarray(ours.object).reshape(want.shape), want, atol=1e-5)
