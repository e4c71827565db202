"""The legacy ``ptycho`` surface without a framework (``specs/ptychodus.md``): configs, params,
data conversion, bundle resolution, settings mapping, the deferred handles."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ptycho import params
from ptycho._bundles import ForeignModelError, resolve_bundle
from ptycho._settings import training_config
from ptycho.config.config import InferenceConfig, ModelConfig, TrainingConfig, update_legacy_dict
from ptycho.raw_data import RawData
from ptycho_core import bundle as core_bundle
from ptycho_core.config import ModelConfig as CoreModelConfig
from ptycho_core.config import TrainingConfig as CoreTrainingConfig
from ptycho_core.errors import BundleError, DataContractError
from ptycho_core.io import ScanData, save_npz

N = 8


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_import_pulls_in_no_framework():
    run = _run(
        """
        import sys
        import ptycho, ptycho.config.config, ptycho.params, ptycho.raw_data, ptycho.loader
        import ptycho.probe, ptycho.tf_helper, ptycho.workflows.components, ptycho.model_manager
        bad = [m for m in ("tensorflow", "keras", "torch", "lightning") if m in sys.modules]
        print(bad)
        """
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_configs_are_lenient_mutable_and_picklable(caplog):
    with caplog.at_level(logging.INFO):
        model = ModelConfig(N=0, gridsize=2, amp_activation="silu", future_knob=3)
    assert model.N == 0 and model.unknown == {"future_knob": 3}
    assert "future_knob" in caplog.text
    tc = TrainingConfig(model=model, nepochs=2, realspace_mae_weight=0.5, output_dir=Path())
    tc.model.N = 32  # what Ptychodus's child does
    back = pickle.loads(pickle.dumps(tc))
    assert back == tc and back.model.N == 32 and back.model.unknown == {"future_knob": 3}
    cfg: dict = {}
    update_legacy_dict(cfg, InferenceConfig(model=ModelConfig(N=64), debug=True))
    assert cfg["N"] == 64 and cfg["gridsize"] == 1 and cfg["debug"] is True
    with pytest.raises(TypeError, match="ptycho.config.config"):
        update_legacy_dict(cfg, {"N": 1})


def test_params_get_says_what_sets_a_missing_key():
    params.cfg.pop("intensity_scale", None)
    with pytest.raises(KeyError, match="load_inference_bundle"):
        params.get("intensity_scale")
    params.set("intensity_scale", 2.0)
    assert params.get("intensity_scale") == 2.0 and params.params() is params.cfg
    params.cfg.pop("intensity_scale")


def _probe(modes: int | None = None) -> np.ndarray:
    p = (np.arange(N * N).reshape(N, N) + 1j).astype(np.complex64)
    return p if modes is None else np.stack([p] * modes)


def test_counts_become_amplitudes_and_the_probe_one_mode():
    counts = np.full((3, N, N), 9, np.uint32)
    counts[0, 0, 0] = 16
    raw = RawData.from_coords_without_pc(
        xcoords=np.array([10.0, 11.0, 12.0]),
        ycoords=np.array([5.0, 6.0, 7.0]),
        diff3d=counts,
        probeGuess=_probe(1),
        scan_index=np.zeros(3, int),
        objectGuess=np.ones((20, 30), np.complex64),
    )
    assert raw.diff3d.dtype == np.float32 and raw.diff3d[0, 0, 0] == 4.0
    assert raw.diff3d[1, 3, 3] == 3.0
    assert raw.probeGuess.shape == (N, N) and raw.objectGuess.shape == (20, 30)
    np.testing.assert_array_equal(raw.xcoords, [10.0, 11.0, 12.0])  # x stays x
    with pytest.raises(DataContractError, match=r"2 probe modes \(shape \(2, 8, 8\)\)"):
        RawData.from_coords_without_pc(
            np.zeros(3), np.zeros(3), counts, _probe(2), np.zeros(3, int), None
        )
    with pytest.raises(ValueError, match="pattern size"):
        raw.generate_grouped_data(16, K=7)


def test_negative_inpainted_counts_are_clipped_with_a_warning(caplog):
    counts = np.full((1, N, N), 4.0)
    counts[0, 1, 1] = -0.5
    with caplog.at_level(logging.WARNING):
        raw = RawData.from_coords_without_pc(
            np.zeros(1), np.zeros(1), counts, _probe(), np.zeros(1, int)
        )
    assert raw.diff3d[0, 1, 1] == 0.0 and "negative" in caplog.text


def test_from_file_reads_ptychodus_exports_as_counts_and_data001_as_amplitudes(tmp_path):
    amp = np.full((4, N, N), 3.0, np.float32)
    xs, ys = np.arange(4.0) + 10, np.arange(4.0) + 20
    # the keys Ptychodus 1.7 writes (api/io.py save_ptychopinn_training_data)
    np.savez(
        tmp_path / "export.npz",
        xcoords=xs,
        ycoords=ys,
        xcoords_start=xs,
        ycoords_start=ys,
        diff3d=np.full((4, N, N), 9, np.uint32),
        bad_pixels=np.zeros((N, N), bool),
        probeGuess=_probe(1),
        objectGuess=np.ones((40, 40), np.complex64),
        scan_index=np.zeros(4, int),
    )
    exported = RawData.from_file(tmp_path / "export.npz")
    np.testing.assert_array_equal(exported.diff3d, amp)
    save_npz(
        tmp_path / "scan.npz", ScanData(diffraction=amp, xcoords=xs, ycoords=ys, probe=_probe())
    )
    np.testing.assert_array_equal(RawData.from_file(tmp_path / "scan.npz").diff3d, amp)


def _bundle(path: Path) -> Path:
    tc = CoreTrainingConfig(model=CoreModelConfig(N=32), backend="tensorflow")
    manifest = core_bundle.make_manifest(
        "tensorflow", tc.model, tc, 2.5, {}, ["autoencoder", "diffraction_to_obj"]
    )
    files = {
        "probe.npy": core_bundle.npy_bytes(np.ones((32, 32), np.complex64)),
        "model.weights.h5": b"weights",
    }
    return core_bundle.write_bundle(path, manifest, files)


def _unpack(archive: Path, folder: Path) -> Path:
    folder.mkdir()
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    return folder


def test_unpacked_bundle_is_repacked_and_verified(tmp_path):
    original = _bundle(tmp_path / "m.zip")
    path, manifest = resolve_bundle(_unpack(original, tmp_path / "x"))
    assert path.name == "wts.h5.zip" and path != original
    a, b = core_bundle.read_bundle(original), core_bundle.read_bundle(path)
    assert a.files == b.files and a.manifest["intensity_scale"] == manifest["intensity_scale"]
    # a modified entry is refused
    tampered = _unpack(original, tmp_path / "y")
    (tampered / "model.weights.h5").write_bytes(b"weightz")
    with pytest.raises(BundleError, match="SHA-256"):
        resolve_bundle(tampered)


def test_foreign_models_are_refused_with_the_reason(tmp_path):
    legacy = tmp_path / "wts.h5.zip"  # the original PtychoPINN's archive has no manifest.json
    with zipfile.ZipFile(legacy, "w") as zf:
        zf.writestr("diffraction_to_obj/model.keras", b"x")
    for where in (legacy, tmp_path):
        with pytest.raises(ForeignModelError, match="original PtychoPINN"):
            resolve_bundle(where)
    (tmp_path / "other").mkdir()
    with pytest.raises(ForeignModelError, match="no ptycho model bundle"):
        resolve_bundle(tmp_path / "other")


def _scan(n: int = 32) -> ScanData:
    return ScanData(
        diffraction=np.ones((9, n, n), np.float32),
        xcoords=np.arange(9.0),
        ycoords=np.arange(9.0),
        probe=np.ones((n, n), np.complex64),
    )


def test_training_settings_mapping_logs_each_change(caplog, tmp_path):
    legacy = TrainingConfig(
        model=ModelConfig(N=0, gridsize=2, amp_activation="silu", model_type="PINN"),
        nepochs=3,
        batch_size=8,
        nphotons=1e6,
        realspace_mae_weight=0.1,
        positions_provided=False,
        intensity_scale_trainable=True,
    )
    with caplog.at_level(logging.INFO):
        cfg = training_config(legacy, _scan(), tmp_path)
    assert cfg.backend == "tensorflow" and cfg.model.N == 32 and cfg.model.gridsize == 2
    assert cfg.model.amp_activation == "swish" and cfg.model.model_type == "pinn"
    assert cfg.nepochs == 3 and cfg.batch_size == 8 and cfg.intensity_scale_trainable
    assert cfg.neighbor_count >= 3 and cfg.nphotons is None and cfg.output_dir == tmp_path
    for word in ("NumPhotons", "RealspaceMAEWeight", "PositionsProvided", "'swish'"):
        assert word in caplog.text


def test_training_without_tensorflow_names_the_install_command(tmp_path):
    """No fallback to another backend: the error says how to install TensorFlow's."""
    scan = tmp_path / "scan.npz"
    save_npz(scan, _scan())
    run = _run(
        f"""
        import sys
        sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
        from ptycho.config.config import ModelConfig, TrainingConfig
        from ptycho.raw_data import RawData
        from ptycho.workflows.components import run_cdi_example
        raw = RawData.from_file({str(scan)!r})
        run_cdi_example(raw, None, TrainingConfig(model=ModelConfig(N=0), nepochs=1))
        """
    )
    assert run.returncode != 0
    assert "TensorFlow backend selected" in run.stderr and "pip install ptycho-tf" in run.stderr
