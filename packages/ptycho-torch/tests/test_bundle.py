"""Bundles through the torch hooks: save → load → reconstruct is identical; TF bundle → mismatch;
damage → BundleError naming the entry; state_dict.pt is a plain tensor dict read with
weights_only=True; the manifest's intensity scale must agree with the weights."""

import io

import numpy as np
import pytest
import torch

from ptycho_core import bundle as core_bundle
from ptycho_core.config import InferenceConfig, ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_core.engine import LoadedBundle
from ptycho_core.errors import BundleBackendMismatchError, BundleError
from ptycho_core.simulation import simulate_scan
from ptycho_torch.bundle import STATE_DICT_ENTRY, load_bundle, save_bundle
from ptycho_torch.model import PtychoModel
from ptycho_torch.workflows import reconstruct


@pytest.fixture(scope="module")
def scan():
    return simulate_scan(N=32, n_positions=30, nphotons=1e5, seed=5)


def make_model(gridsize=1, seed=0, **kw):
    torch.manual_seed(seed)
    probe = (np.exp(1j * np.linspace(0, 1, 32 * 32)).reshape(32, 32)).astype(np.complex64)
    return PtychoModel(
        N=32, gridsize=gridsize, n_filters_scale=1, probe=probe, intensity_scale=4.5, **kw
    )


def tcfg(tmp_path, gridsize=1, **kw):
    return TrainingConfig(
        model=ModelConfig(N=32, gridsize=gridsize, n_filters_scale=1), output_dir=tmp_path, **kw
    )


@pytest.mark.parametrize("gridsize", [1, 2])
def test_save_load_reconstruct_identical(tmp_path, scan, gridsize):
    model = make_model(gridsize)
    path = save_bundle(
        tmp_path / "wts.h5.zip", model, tcfg(tmp_path, gridsize), normalization={"norm_factor": 1.0}
    )
    loaded = load_bundle(path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    x = torch.rand(3, gridsize**2, 32, 32) * 4
    off = torch.randn(3, gridsize**2, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            model.eval().diffraction_to_obj(x, off),
            loaded.model.diffraction_to_obj(x, off),
            rtol=0,
            atol=0,
        )
    ex = PyTorchExecutionConfig(accelerator="cpu", inference_batch_size=7)
    icfg = InferenceConfig(
        model=ModelConfig(N=32, gridsize=gridsize, n_filters_scale=1), model_path=path
    )
    a = reconstruct(icfg, ex, data=scan)
    b = reconstruct(icfg, ex, data=scan, bundle=load_bundle(path))
    assert isinstance(loaded, LoadedBundle) and loaded.path == path
    assert a.backend == "pytorch"
    np.testing.assert_array_equal(a.object, b.object)


def test_state_dict_entry_is_plain_tensors(tmp_path):
    model = make_model(probe_trainable=True, intensity_scale_trainable=True)
    path = save_bundle(
        tmp_path / "wts.h5.zip", model, tcfg(tmp_path, probe_trainable=True), normalization={}
    )
    b = core_bundle.read_bundle(path, expected_backend="pytorch")
    assert STATE_DICT_ENTRY == "state_dict.pt"
    assert set(b.files) >= {"probe.npy", "state_dict.pt"}
    sd = torch.load(io.BytesIO(b.files["state_dict.pt"]), weights_only=True)
    assert list(sd) == list(model.state_dict())
    assert all(type(v) is torch.Tensor and v.is_contiguous() for v in sd.values())
    np.testing.assert_array_equal(b.load_npy("probe.npy"), model.probe.detach().numpy())
    assert b.manifest["intensity_scale"] == pytest.approx(4.5, rel=1e-6)
    loaded = load_bundle(path)
    assert loaded.model.probe_real.requires_grad  # trainable flags come back from the manifest


def test_tensorflow_bundle_is_a_mismatch(tmp_path):
    model = make_model()
    path = save_bundle(tmp_path / "wts.h5.zip", model, tcfg(tmp_path), normalization={})
    b = core_bundle.read_bundle(path)
    fake = tmp_path / "tf" / "wts.h5.zip"
    fake.parent.mkdir()
    manifest = dict(b.manifest, backend="tensorflow")
    core_bundle.write_bundle(
        fake, manifest, {"probe.npy": b.files["probe.npy"], "model.weights.h5": b"\x89HDF"}
    )
    with pytest.raises(BundleBackendMismatchError, match="tensorflow"):
        load_bundle(fake)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    model = make_model()
    path = save_bundle(tmp_path / "wts.h5.zip", model, tcfg(tmp_path), normalization={})
    b = core_bundle.read_bundle(path)
    buf = io.BytesIO()
    torch.save({"x": _Evil()}, buf)
    evil = tmp_path / "evil" / "wts.h5.zip"
    evil.parent.mkdir()
    core_bundle.write_bundle(evil, b.manifest, dict(b.files, **{"state_dict.pt": buf.getvalue()}))
    with pytest.raises(BundleError, match="state_dict.pt"):
        load_bundle(evil)
    assert "pwned" not in capsys.readouterr().out


def test_wrong_architecture_and_missing_entry_are_bundle_errors(tmp_path):
    model = make_model()
    path = save_bundle(tmp_path / "wts.h5.zip", model, tcfg(tmp_path), normalization={})
    b = core_bundle.read_bundle(path)
    other = tmp_path / "o" / "wts.h5.zip"
    other.parent.mkdir()
    manifest = dict(
        b.manifest,
        model_config=dict(b.manifest["model_config"], n_filters_scale=2),
        training_config=dict(
            b.manifest["training_config"], model=dict(b.manifest["model_config"], n_filters_scale=2)
        ),
    )
    core_bundle.write_bundle(other, manifest, b.files)
    with pytest.raises(BundleError, match="state_dict.pt: weights do not match the architecture"):
        load_bundle(other)
    missing = tmp_path / "m" / "wts.h5.zip"
    missing.parent.mkdir()
    core_bundle.write_bundle(missing, b.manifest, {"probe.npy": b.files["probe.npy"]})
    with pytest.raises(BundleError, match="state_dict.pt"):
        load_bundle(missing)
    truncated = tmp_path / "t.zip"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BundleError):
        load_bundle(truncated)


@pytest.mark.parametrize("batch", [7, 64])
def test_inference_batch_size_chunks_prediction(tmp_path, scan, batch):
    model = make_model()
    path = save_bundle(tmp_path / "wts.h5.zip", model, tcfg(tmp_path), normalization={})
    loaded = load_bundle(path)
    sizes = []
    original = loaded.model.diffraction_to_obj

    def spy(x, off=None):
        sizes.append(x.shape[0])
        return original(x, off)

    loaded.model.diffraction_to_obj = spy
    ex = PyTorchExecutionConfig(accelerator="cpu", inference_batch_size=batch)
    icfg = InferenceConfig(model=ModelConfig(N=32, n_filters_scale=1), model_path=path)
    res = reconstruct(icfg, ex, data=scan, bundle=loaded)
    assert sum(sizes) == scan.M and max(sizes) == min(batch, scan.M)
    assert len(sizes) == -(-scan.M // batch)
    ref = reconstruct(
        icfg, PyTorchExecutionConfig(accelerator="cpu", inference_batch_size=scan.M), data=scan
    )
    np.testing.assert_allclose(res.object, ref.object, rtol=1e-5, atol=1e-6)


def test_inference_device_from_accelerator():
    from ptycho_core.runtime import first_device
    from ptycho_torch.training import torch_devices

    present = torch_devices()
    assert first_device("cpu", present, "pytorch") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="gpu device"):
            first_device("cuda", present, "pytorch")
        assert first_device("auto", present, "pytorch") in ("cpu", "mps")
    with pytest.raises(ValueError, match="tpu"):
        first_device("tpu", present, "pytorch")


def test_manifest_scale_must_agree_with_the_weights(tmp_path):
    """The scale the torch hooks report after loading is the one in state_dict.pt, so a manifest
    that disagrees with it is refused (core's rule), while an agreeing one loads."""
    model = make_model()
    path = save_bundle(tmp_path / "wts.h5.zip", model, tcfg(tmp_path), normalization={})
    b = core_bundle.read_bundle(path)
    assert load_bundle(path).intensity_scale == pytest.approx(4.5, rel=1e-6)
    bad = tmp_path / "bad" / "wts.h5.zip"
    bad.parent.mkdir()
    core_bundle.write_bundle(bad, dict(b.manifest, intensity_scale=9.0), b.files)
    with pytest.raises(BundleError, match="intensity_scale"):
        load_bundle(bad)


def test_non_tensor_payload_is_a_bundle_error(tmp_path):
    model = make_model()
    path = save_bundle(tmp_path / "wts.h5.zip", model, tcfg(tmp_path), normalization={})
    b = core_bundle.read_bundle(path)
    buf = io.BytesIO()
    torch.save([torch.zeros(1)], buf)  # loadable with weights_only=True, but not a dict
    odd = tmp_path / "odd" / "wts.h5.zip"
    odd.parent.mkdir()
    core_bundle.write_bundle(odd, b.manifest, dict(b.files, **{"state_dict.pt": buf.getvalue()}))
    with pytest.raises(BundleError, match="state_dict.pt: is not a plain dict of tensors"):
        load_bundle(odd)
