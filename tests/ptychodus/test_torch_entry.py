"""Acceptance: ptycho-torch as Ptychodus 1.7.0's "PtychoPINN-Torch" library, headless
(``specs/torch-backend.md``, "Ptychodus entry").

Drives Ptychodus's own reconstructor objects (each call spawns a Ptychodus child that imports
``ptycho_torch.api.base_api``) and its ``--batch`` command. Ptychodus is a test dependency
(``scripts/test.sh`` installs ``ptychodus==1.7.0`` with ``--no-deps``): when it is missing these
tests FAIL, they never skip.

This pytest process imports neither torch nor TensorFlow (another test file of this folder may
drive the TensorFlow-named entry): the reference reconstruction and the fixture training run in
subprocesses of this interpreter, like Ptychodus's own children.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptycho_core import bundle as core_bundle
from ptycho_core.io import read_product, save_npz
from ptycho_core.simulation import simulate_scan

N, M, SEED = 32, 64, 0
PIXEL_W, PIXEL_H, CENTRE = 1e-8, 1.2e-8, (3e-6, -2e-6)
BAD_PIXEL = (3, 5)
TORCH_ALGORITHM = "ptychopinn-torch_unsupervised"


def _ptychodus(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(
            "Ptychodus 1.7.0 is required for the acceptance tests: pip install --no-deps "
            f"ptychodus==1.7.0 plus requirements-test.txt ({name}: {exc})",
            pytrace=False,
        )


def _env() -> dict[str, str]:
    """This interpreter's environment, with its bin folder first (Ptychodus's spawned children
    and the ``ptychodus`` script then run in the same venv)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", MPLBACKEND="Agg")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _python(code: str, *args: object, timeout: float = 300) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]


_TRAIN = """
import sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from ptycho_core.backends import load_backend
from ptycho_core.config import ExecutionConfig, ModelConfig, TrainingConfig
from ptycho_core.io import load_npz
cfg = TrainingConfig(model=ModelConfig(N=32), nepochs=1, output_dir=Path(sys.argv[2]),
                     backend="pytorch")
ex = ExecutionConfig(accelerator="cpu", enable_progress_bar=False, logger_backend="none",
                     enable_checkpointing=False)
load_backend("pytorch").train(cfg, ex, train_data=load_npz(sys.argv[1]))
"""

# The reference: our backend called directly on what Ptychodus's child receives (inpainted
# counts, its (y, x) object-pixel positions, its probe), square-rooted here independently.
_DIRECT = """
import sys
import numpy as np
import torch
torch.set_num_threads(1)
from ptycho_core.backends import load_backend
from ptycho_core.config import InferenceConfig
from ptycho_core.engine import bundle_configs
from ptycho_core.bundle import read_manifest
from ptycho_core.io import ScanData
a = np.load(sys.argv[1], allow_pickle=False)
model, _ = bundle_configs(read_manifest(sys.argv[2]), sys.argv[2])
scan = ScanData(diffraction=np.sqrt(a["counts"].astype(np.float32)), xcoords=a["x"],
                ycoords=a["y"], probe=a["probe"], object=np.ones(tuple(a["grid"]), np.complex64))
cfg = InferenceConfig(model=model, model_path=sys.argv[2], backend="pytorch")
np.save(sys.argv[3], load_backend("pytorch").reconstruct(cfg, data=scan).object)
"""


@pytest.fixture(scope="module")
def pty() -> dict[str, Any]:
    """Ptychodus modules used here (fails when Ptychodus is missing)."""
    names = {
        "geometry": "ptychodus.api.geometry",
        "object": "ptychodus.api.object",
        "probe": "ptychodus.api.probe",
        "positions": "ptychodus.api.probe_positions",
        "product": "ptychodus.api.product",
        "reconstruct": "ptychodus.api.reconstruct",
        "settings": "ptychodus.api.settings",
        "io": "ptychodus.api.io",
        "assemble": "ptychodus.api.assemble",
        "inpaint": "ptychodus.api.preprocess.diffraction",
        "torch_core": "ptychodus.model.ptychopinn_torch.core",
        "protocol": "ptychodus.model.processing._subprocess_protocol",
    }
    return {k: _ptychodus(v) for k, v in names.items()}


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(N=N, n_positions=M, seed=SEED)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, scan) -> Path:
    """A 1-epoch PyTorch bundle trained by our backend (in a subprocess)."""
    d = tmp_path_factory.mktemp("torch_bundle")
    save_npz(d / "scan.npz", scan)
    _python(_TRAIN, d / "scan.npz", d / "run")
    return d / "run" / core_bundle.BUNDLE_NAME


def _product(pty: dict[str, Any], scan, probe: np.ndarray) -> Any:
    """A Ptychodus product: non-square pixels, a non-zero centre, the object grid sized by
    Ptychodus's own ``compute_object_geometry``."""
    g, o, p, pp = pty["geometry"], pty["object"], pty["probe"], pty["positions"]
    px = g.PixelGeometry(PIXEL_W, PIXEL_H)
    points = [
        pp.ProbePosition(
            index=i, x_m=CENTRE[0] + (x - 40) * PIXEL_W, y_m=CENTRE[1] + (y - 40) * PIXEL_H
        )
        for i, (x, y) in enumerate(zip(scan.xcoords, scan.ycoords, strict=True))
    ]
    probes = p.ProbeSequence(probe, None, px)
    geo = o.compute_object_geometry(points, probes.get_geometry())
    obj = o.Object(
        np.ones((geo.height_px, geo.width_px), np.complex64),
        px,
        o.ObjectCenter(geo.center_x_m, geo.center_y_m),
    )
    meta = pty["product"].ProductMetadata(
        name="acceptance",
        comments="",
        detector_distance_m=2.0,
        photon_energy_eV=10000.0,
        probe_photon_count=0.0,
        exposure_time_s=0.0,
        mass_attenuation_m2_per_kg=0.0,
        tomography_angle_deg=0.0,
    )
    return pty["product"].Product(meta, pp.ProbePositionSequence(points), probes, obj, [])


def _counts(scan) -> np.ndarray:
    return np.rint(scan.diffraction.astype(np.float64) ** 2).astype(np.uint32)


def _bad_pixels() -> np.ndarray:
    bad = np.zeros((N, N), bool)
    bad[BAD_PIXEL] = True
    return bad


@pytest.fixture(scope="module")
def rin(pty, scan) -> Any:
    """Ptychodus's ReconstructInput: counts (uint32), one bad pixel, a single-mode probe."""
    product = _product(pty, scan, scan.probe[None, None])
    return pty["reconstruct"].ReconstructInput(_counts(scan), _bad_pixels(), product)


def _library(pty: dict[str, Any]) -> Any:
    """A fresh PtychoPINN-Torch library of Ptychodus (its own default settings)."""
    return pty["torch_core"].PtychoPINNTorchReconstructorLibrary(
        pty["settings"].SettingsRegistry(), False
    )


def _unsupervised(lib: Any) -> Any:
    return next(r for r in lib if r.name == "Unsupervised")


def _reconstruct(pty: dict[str, Any], model: Path, rin: Any) -> list[Any]:
    rec = _unsupervised(_library(pty))
    rec.load_model_from_file(model)
    return list(rec.reconstruct(rin))


@pytest.fixture(scope="module")
def output(pty, bundle, rin, tmp_path_factory) -> Any:
    """Ptychodus's reconstruction through the entry, the bundle recorded as ``model.ckpt``."""
    ckpt = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    shutil.copyfile(bundle, ckpt)
    outs = _reconstruct(pty, ckpt, rin)
    assert len(outs) == 1
    return outs[0]


def test_library_lists_its_reconstructors(pty):
    lib = _library(pty)
    assert lib.name == "PtychoPINN-Torch"
    assert [r.name for r in lib] == ["Unsupervised", "Supervised"]
    assert all(r.is_trainable for r in lib)
    assert _unsupervised(lib).get_model_file_extension() == ".ckpt"


@pytest.mark.slow
def test_reconstruct_on_ptychodus_grid_equals_backend(pty, output, rin, bundle, tmp_path):
    obj_in, obj_out = rin.product.object_, output.product.object_
    assert obj_out.get_array().shape == obj_in.get_array().shape
    assert obj_out.get_center() == obj_in.get_center()
    assert obj_out.get_pixel_geometry() == obj_in.get_pixel_geometry()
    pos_in, pos_out = rin.product.probe_positions, output.product.probe_positions
    np.testing.assert_array_equal(pos_out.get_coordinates_x_m(), pos_in.get_coordinates_x_m())
    got = obj_out.get_layer(0)
    assert np.isfinite(got).all() and np.abs(got).max() > 0

    geo = obj_in.get_geometry()
    pos = rin.product.probe_positions
    np.savez(
        tmp_path / "input.npz",
        counts=pty["inpaint"].inpaint_bad_pixels(rin.diffraction_patterns, rin.bad_pixels),
        x=geo.map_probe_positions_to_object_x_px(pos),
        y=geo.map_probe_positions_to_object_y_px(pos),
        probe=rin.product.probes.get_probe_no_opr().get_array()[0],
        grid=np.array(obj_in.get_array().shape[-2:]),
    )
    _python(_DIRECT, tmp_path / "input.npz", bundle, tmp_path / "direct.npy")
    want = np.load(tmp_path / "direct.npy")
    assert want.shape == got.shape
    assert np.abs(got - want).max() <= 1e-5


@pytest.mark.slow
def test_save_and_reload_model_gives_the_same_object(pty, output, bundle, rin, tmp_path):
    rec = _unsupervised(_library(pty))
    rec.load_model_from_file(bundle)
    rec.save_model(tmp_path / "saved.ckpt")
    again = _reconstruct(pty, tmp_path / "saved.ckpt", rin)
    np.testing.assert_array_equal(
        again[0].product.object_.get_array(), output.product.object_.get_array()
    )


@pytest.mark.slow
def test_train_from_ptychodus_export(pty, rin, tmp_path):
    lib = _library(pty)
    rec = _unsupervised(lib)
    folder = tmp_path / "train"
    folder.mkdir()
    rec.export_training_data(folder / "exported.npz", rin)
    ts, ds = lib.training_settings, lib.data_settings
    ts.epochs.set_value(2)
    ts.num_dataloader_workers.set_value(0)
    ts.device.set_value("cpu")
    ds.num_channels.set_value(1)
    outs = list(rec.train(folder, folder))
    assert len(outs) == 1
    train_loss = [v.value for v in outs[0].training_loss]
    val_loss = [v.value for v in outs[0].validation_loss]
    assert len(train_loss) == 2 and len(val_loss) == 2
    assert outs[0].progress == 2

    assert rec.is_model_loaded()
    saved = Path(rec._loaded_model_path)
    read = core_bundle.read_bundle(saved, expected_backend="pytorch")
    history = read.manifest["history"]
    # Ptychodus's callback ran inside the fit: its values are the ones our history recorded.
    np.testing.assert_allclose(train_loss, history["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(val_loss, history["val_loss"], rtol=1e-6)
    # Counts were square-rooted: the estimated photons per pattern are the simulated ~1e9,
    # not their square.
    nphotons = read.manifest["normalization"]["nphotons"]
    assert 1e8 < nphotons < 1e10
    out = list(rec.reconstruct(rin))
    assert out[0].product.object_.get_array().shape == rin.product.object_.get_array().shape


@pytest.mark.slow
def test_multimode_probe_is_a_clear_error(pty, scan, bundle):
    probe = np.stack([scan.probe, 0.1 * scan.probe])[None]  # (1 OPR, 2 modes, N, N)
    product = _product(pty, scan, probe)
    bad_input = pty["reconstruct"].ReconstructInput(_counts(scan), _bad_pixels(), product)
    with pytest.raises(pty["protocol"].ChildError, match=r"single-mode probe.*\(2, 32, 32\)"):
        _reconstruct(pty, bundle, bad_input)


@pytest.mark.slow
def test_foreign_checkpoint_is_a_clear_error(pty, rin, tmp_path):
    # The layout torch.save / Lightning write (the original PtychoPINN's .ckpt); never unpickled.
    foreign = tmp_path / "original_ptychopinn.ckpt"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        zf.writestr("archive/version", b"3\n")
    with pytest.raises(pty["protocol"].ChildError, match="Lightning checkpoint") as info:
        _reconstruct(pty, foreign, rin)
    assert str(foreign) in str(info.value)


def _batch_input(pty: dict[str, Any], rin: Any, bundle: Path, folder: Path) -> None:
    folder.mkdir()
    io = pty["io"]
    patterns = rin.diffraction_patterns
    data = pty["assemble"].AssembledDiffractionData(
        np.arange(len(patterns)),
        patterns,
        pty["geometry"].PixelGeometry(75e-6, 75e-6),
        rin.bad_pixels,
    )
    io.save_diffraction_data(folder / "diffraction.h5", data)
    io.save_product(folder / "product.h5", rin.product)
    (folder / "settings.ini").write_text(f"[Processing]\nAlgorithm = {TORCH_ALGORITHM}\n")
    shutil.copyfile(bundle, folder / "model.ckpt")


@pytest.mark.slow
def test_batch_reconstruct_writes_a_product_both_readers_load(pty, rin, bundle, output, tmp_path):
    _batch_input(pty, rin, bundle, tmp_path / "in")
    exe = Path(sys.executable).parent / "ptychodus"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ptychodus"]
    args = ["--batch", "reconstruct", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    done = subprocess.run(
        cmd + args, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    written = sorted((tmp_path / "out").glob("product*.h5"))
    assert [p.name for p in written] == ["product.000001.h5"], done.stderr[-2000:]

    theirs = pty["io"].load_product(written[0])
    ours = read_product(written[0])
    want = output.product.object_.get_layer(0)
    np.testing.assert_allclose(theirs.object_.get_layer(0), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours.object).reshape(want.shape), want, atol=1e-5)
    assert theirs.metadata.photon_energy_eV == 10000.0
