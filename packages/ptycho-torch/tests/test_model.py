"""The network (specs/model.md): its layers are core's ADR-002 table (core's tests check the table
itself), shapes, activations, trainable probe / intensity scale."""

import math

import numpy as np
import pytest
import torch

from ptycho_core.architecture import conv_layers, parameter_count, scalar_weights
from ptycho_core.config import ModelConfig
from ptycho_torch.model import PtychoModel, build_model

_CNN_CASES = [
    (32, 1, 1, {}),
    (64, 1, 2, {}),
    (64, 2, 2, {}),
    (128, 2, 1, {}),
    (256, 1, 1, {}),
    (64, 2, 2, {"pad_object": False}),
    (64, 2, 2, {"probe_big": False}),
    (32, 2, 1, {"object_big": False}),
    (64, 1, 3, {}),
]
_FOURIER_CASES = [
    (32, 1, 1, {}),
    (64, 2, 2, {}),
    (128, 2, 1, {}),
    (256, 1, 1, {}),
    (32, 2, 1, {"object_big": False}),
    (64, 1, 3, {}),
]
CASES = [(n, g, k, {**kw, "generator": "cnn"}) for n, g, k, kw in _CNN_CASES] + [
    (n, g, k, {**kw, "generator": "fourier"}) for n, g, k, kw in _FOURIER_CASES
]


def model_for(n, gs, k, **kw):
    mc = ModelConfig(N=n, gridsize=gs, n_filters_scale=k, **kw)
    return mc, build_model(mc, probe=None, intensity_scale=1.0)


@pytest.mark.parametrize("n,gs,k,kw", CASES)
def test_layers_are_the_core_table(n, gs, k, kw):
    """My convs == ptycho_core.architecture's table (names, channels, order); the state dict is
    the convs in that order, then the scalar weights; parameter count == core's."""
    mc, m = model_for(n, gs, k, **kw)
    table = conv_layers(mc)
    mine = [(name, c.in_channels, c.out_channels) for name, c in m.named_children()]
    assert all(isinstance(c, torch.nn.Conv2d) for c in m.children())
    assert mine == [(t.name, t.in_channels, t.out_channels) for t in table]
    for c in m.children():
        assert (c.kernel_size, c.stride, c.padding, c.bias is not None) == (
            (3, 3),
            (1, 1),
            (1, 1),
            True,
        )
    sd = m.state_dict()
    scalars = scalar_weights(mc)
    expect = [f"{t.name}.{p}" for t in table for p in ("weight", "bias")] + [s for s, _ in scalars]
    assert list(sd) == expect
    assert [tuple(sd[s].shape) for s, _ in scalars] == [shape for _, shape in scalars]
    assert sum(p.numel() for p in m.parameters()) == parameter_count(mc)


@pytest.mark.parametrize(
    "n,gs,kw",
    [
        (32, 2, {"generator": "cnn"}),
        (64, 1, {"pad_object": False, "generator": "cnn"}),
        (32, 1, {"probe_big": False, "generator": "cnn"}),
        (32, 2, {}),
        (64, 1, {}),
    ],
)
def test_each_conv_runs_at_the_table_size(n, gs, kw):
    """The feature map each conv sees is the table's ``size`` (so core's FLOP counts hold)."""
    mc, m = model_for(n, gs, 1, **kw)
    seen = {}
    for name, conv in m.named_children():
        conv.register_forward_pre_hook(
            lambda mod, inp, name=name: seen.update({name: inp[0].shape})
        )
    m.diffraction_to_obj(torch.rand(2, gs * gs, n, n), torch.randn(2, gs * gs, 2))
    assert {name: tuple(shape[-2:]) for name, shape in seen.items()} == {
        t.name: (t.size, t.size) for t in conv_layers(mc)
    }


@pytest.mark.parametrize("bad", [48, 16, 512])
def test_unsupported_n(bad):
    with pytest.raises(ValueError, match="N="):
        PtychoModel(N=bad)


@pytest.mark.parametrize(
    "n,gs,kw",
    [
        (32, 1, {}),
        (64, 2, {}),
        (32, 2, {"object_big": False}),
        (32, 2, {"generator": "cnn"}),
        (32, 2, {"pad_object": False, "generator": "cnn"}),
        (32, 2, {"object_big": False, "generator": "cnn"}),
        (32, 1, {"probe_big": False, "generator": "cnn"}),
    ],
)
def test_output_shapes_and_dtypes(n, gs, kw):
    torch.manual_seed(0)
    m = PtychoModel(N=n, gridsize=gs, n_filters_scale=1, intensity_scale=2.5, **kw)
    x = torch.rand(3, gs * gs, n, n)
    off = torch.randn(3, gs * gs, 2) * 2
    out = m(x, off)
    for t in out:
        assert t.shape == (3, gs * gs, n, n)
    assert out.obj.dtype == torch.complex64
    assert out.amplitude.dtype == torch.float32
    assert torch.allclose(out.intensity, out.amplitude**2)
    assert m.diffraction_to_obj(x, off).shape == (3, gs * gs, n, n)


def test_pad_object_confines_object_without_probe_big():
    m = PtychoModel(
        N=32, gridsize=1, n_filters_scale=1, probe_big=False, object_big=False, generator="cnn"
    )
    obj = m.diffraction_to_obj(torch.rand(2, 1, 32, 32))
    inner = torch.zeros(32, 32, dtype=torch.bool)
    inner[8:24, 8:24] = True
    assert torch.all(obj[..., ~inner] == 0)
    assert torch.all(obj.abs()[..., inner] > 0)


@pytest.mark.parametrize("act", ["sigmoid", "swish", "softplus", "relu"])
def test_amp_activation_and_phase_range(act):
    torch.manual_seed(1)
    m = PtychoModel(
        N=32, gridsize=1, n_filters_scale=1, amp_activation=act, probe_big=False, object_big=False
    )
    obj = m.diffraction_to_obj(torch.rand(4, 1, 32, 32) * 5)
    ph = torch.angle(obj[..., 8:24, 8:24])
    assert torch.all(ph.abs() <= math.pi + 1e-5)
    amp = obj.abs()[..., 8:24, 8:24]
    if act == "sigmoid":
        assert torch.all(amp < 1)


def test_intensity_scale_divides_input_and_multiplies_output():
    """Model(s, s·X) gives the same object as model(1, X) and an amplitude s times larger."""
    torch.manual_seed(2)
    a = PtychoModel(N=32, gridsize=1, n_filters_scale=1, intensity_scale=1.0)
    b = PtychoModel(N=32, gridsize=1, n_filters_scale=1, intensity_scale=7.0)
    sd = {k: v for k, v in a.state_dict().items() if k != "log_intensity_scale"}
    b.load_state_dict(sd, strict=False)
    x = torch.rand(2, 1, 32, 32)
    oa, ob = a(x), b(7.0 * x)
    torch.testing.assert_close(ob.obj, oa.obj, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ob.amplitude, 7.0 * oa.amplitude, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "flag,names",
    [
        ("probe_trainable", ("probe_real", "probe_imag")),
        ("intensity_scale_trainable", ("log_intensity_scale",)),
    ],
)
def test_trainable_probe_and_scale_change_after_a_step(flag, names):
    torch.manual_seed(3)
    probe = (np.ones((32, 32)) * np.exp(0.3j)).astype(np.complex64)
    kw = {flag: True}
    m = PtychoModel(N=32, gridsize=1, n_filters_scale=1, probe=probe, intensity_scale=3.0, **kw)
    frozen = PtychoModel(N=32, gridsize=1, n_filters_scale=1, probe=probe, intensity_scale=3.0)
    for name in names:
        assert isinstance(getattr(m, name), torch.nn.Parameter) and getattr(m, name).requires_grad
        assert not getattr(frozen, name).requires_grad
    before = {n: getattr(m, n).detach().clone() for n in names}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(4, 1, 32, 32) * 3
    out = m(x)
    loss = torch.mean(out.intensity - x**2 * torch.log(out.intensity + 1e-12))
    loss.backward()
    opt.step()
    for n in names:
        assert not torch.equal(before[n], getattr(m, n).detach())
    assert all(p.requires_grad is False for n, p in frozen.named_parameters() if n in names)


def test_channels_last_is_only_a_memory_layout():
    torch.manual_seed(4)
    a = PtychoModel(N=32, gridsize=2, n_filters_scale=1, channels_last=True)
    b = PtychoModel(N=32, gridsize=2, n_filters_scale=1, channels_last=False)
    b.load_state_dict(a.state_dict())
    x, off = torch.rand(2, 4, 32, 32) * 3, torch.randn(2, 4, 2)
    # Only the summation order of the convs differs. The physics stages' projections divide by
    # |Ψ| + ε and amplify that float32 rounding: worst element 3.1e-4 of ~0.5 measured on an
    # AMD EPYC dev box (1 of 8,192), so 1e-3; a layout bug (a wrong permute) moves values by O(1).
    torch.testing.assert_close(a(x, off).amplitude, b(x, off).amplitude, rtol=1e-3, atol=1e-3)


# ----------------------------------------------------------------------------- merge weights
def _wide_probe(n=32):
    from ptycho_core.physics import normalize_probe
    from ptycho_core.simulation import beamline_probe

    return normalize_probe(beamline_probe(n))


@pytest.mark.parametrize(
    "merge_weights,model_type,sigma,mask",
    [
        ("probe", "pinn", 0.0, False),
        ("probe", "pinn", 1.0, True),
        ("probe", "supervised", 0.0, False),
        ("centre", "pinn", 0.0, False),
    ],
)
def test_object_big_merge_uses_the_configured_weights(
    monkeypatch, merge_weights, model_type, sigma, mask
):
    """specs/model.md: 'probe' weights the merge by the forward model's illumination intensity
    (peak 1), a supervised model (no illumination) by 1 everywhere, 'centre' by the centre N/2
    square; the model's merged patches are the oracle's merge of its raw patches (no physics
    stages after it: those are PhysicsStagesConformance's)."""
    from ptycho_core import physics as ref
    from ptycho_torch import model as model_mod

    probe = _wide_probe()
    mc = ModelConfig(
        N=32,
        gridsize=2,
        n_filters_scale=1,
        physics_stages=0,
        model_type=model_type,
        merge_weights=merge_weights,
        gaussian_smoothing_sigma=sigma,
        probe_mask=mask,
    )
    torch.manual_seed(5)
    m = build_model(mc, probe=probe, intensity_scale=2.0)
    seen = {}
    real_merge = model_mod.physics.object_big_merge

    def spy(patches, offsets, weight=None):
        seen.update(patches=patches.detach().numpy(), weight=weight)
        return real_merge(patches, offsets, weight)

    monkeypatch.setattr(model_mod.physics, "object_big_merge", spy)
    x, off = torch.rand(2, 4, 32, 32) * 3, torch.randn(2, 4, 2) * 3
    with torch.no_grad():
        got = m.diffraction_to_obj(x, off).numpy()
    if merge_weights == "centre":
        want_w = ref.center_mask(32)
    elif model_type == "supervised":
        want_w = np.ones((32, 32))
    else:
        want_w = ref.merge_weight(probe, sigma, mask)
    np.testing.assert_allclose(seen["weight"].numpy(), want_w, atol=1e-6)
    want = ref.object_big_merge(seen["patches"], off.numpy(), want_w)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_trainable_probe_gets_no_gradient_through_the_merge_weights():
    """The merge weights follow the current probe but are detached (specs/model.md): the probe
    is learned through the forward model only."""
    torch.manual_seed(6)
    mc = ModelConfig(N=32, gridsize=2, n_filters_scale=1)
    m = build_model(mc, probe=_wide_probe(), intensity_scale=2.0, probe_trainable=True)
    x, off = torch.rand(2, 4, 32, 32) * 3, torch.randn(2, 4, 2) * 3
    (m.diffraction_to_obj(x, off).abs() ** 2).sum().backward()
    assert m.probe_real.grad is None and m.probe_imag.grad is None
    m.zero_grad()
    m(x, off).intensity.sum().backward()  # through the forward model it does learn
    assert m.probe_real.grad is not None and float(m.probe_real.grad.abs().sum()) > 0
    # ... and a changed probe changes the weights (they are not frozen at build time)
    w0 = m.merge_weight().clone()
    with torch.no_grad():
        m.probe_real.mul_(torch.linspace(0.5, 1.5, 32))
    assert not torch.allclose(m.merge_weight(), w0)


def test_a_bundle_without_merge_weights_reconstructs_as_before(tmp_path):
    """A bundle written before ModelConfig.merge_weights (no key in its manifest) was trained
    with the centre merge: it loads as merge_weights='centre' and gives the same patches as
    the model that wrote it; read as 'probe' it would not."""
    from ptycho_core.config import TrainingConfig
    from ptycho_core.testing import bundle_without_model_key
    from ptycho_torch.bundle import load_bundle, save_bundle

    old_mc = ModelConfig(N=32, gridsize=2, n_filters_scale=1, merge_weights="centre")
    torch.manual_seed(7)
    old = build_model(old_mc, probe=_wide_probe(), intensity_scale=2.0).eval()
    cfg = TrainingConfig(model=old_mc, output_dir=tmp_path)
    path = save_bundle(tmp_path / "wts.h5.zip", old, cfg, normalization={"norm_factor": 1.0})
    legacy = bundle_without_model_key(path, "merge_weights", tmp_path / "legacy" / "wts.h5.zip")

    loaded = load_bundle(legacy)
    assert loaded.model_config.merge_weights == "centre" and loaded.model.merge_weights == "centre"
    x, off = torch.rand(3, 4, 32, 32) * 3, torch.randn(3, 4, 2) * 3
    with torch.no_grad():
        want = old.diffraction_to_obj(x, off)
        torch.testing.assert_close(loaded.model.diffraction_to_obj(x, off), want, rtol=0, atol=0)
        loaded.model.merge_weights = "probe"
        assert (loaded.model.diffraction_to_obj(x, off) - want).abs().max() > 1e-3


def test_a_bundle_without_generator_loads_the_cnn_generator(tmp_path):
    """A bundle written before ModelConfig.generator (no key in its manifest) holds the CNN
    generator's weights: it loads as generator='cnn' and gives the same patches as the model
    that wrote it (specs/model.md, legacy rule); read as the new default it would not load."""
    from ptycho_core.config import TrainingConfig
    from ptycho_core.errors import BundleError
    from ptycho_core.testing import bundle_without_model_key
    from ptycho_torch.bundle import load_bundle, save_bundle

    old_mc = ModelConfig(N=32, gridsize=2, n_filters_scale=1, generator="cnn")
    torch.manual_seed(8)
    old = build_model(old_mc, probe=_wide_probe(), intensity_scale=2.0).eval()
    cfg = TrainingConfig(model=old_mc, output_dir=tmp_path)
    path = save_bundle(tmp_path / "wts.h5.zip", old, cfg, normalization={"norm_factor": 1.0})
    legacy = bundle_without_model_key(path, "generator", tmp_path / "legacy" / "wts.h5.zip")

    loaded = load_bundle(legacy)
    assert loaded.model_config.generator == "cnn" and loaded.model.generator == "cnn"
    x, off = torch.rand(3, 4, 32, 32) * 3, torch.randn(3, 4, 2) * 3
    with torch.no_grad():
        want = old.diffraction_to_obj(x, off)
        torch.testing.assert_close(loaded.model.diffraction_to_obj(x, off), want, rtol=0, atol=0)
    fourier = build_model(
        ModelConfig(N=32, gridsize=2, n_filters_scale=1), probe=None, intensity_scale=2.0
    )
    with pytest.raises(BundleError, match="fourier_conv1"):
        fourier.load_weight_arrays(old.weight_arrays(), legacy)


def test_training_and_inference_run_their_own_projection_counts(monkeypatch):
    """specs/model.md: the training model (``forward``) runs PROJECTION_STEPS data projections
    per stage, the inference model ``inference_projection_steps`` (through the same convs)."""
    from ptycho_core.architecture import PROJECTION_STEPS
    from ptycho_torch import model as model_mod

    mc = ModelConfig(N=32, n_filters_scale=1, physics_stages=2, inference_projection_steps=5)
    torch.manual_seed(7)
    m = build_model(mc, probe=_wide_probe(), intensity_scale=2.0)
    calls = []
    real = model_mod.physics.data_projection

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(model_mod.physics, "data_projection", spy)
    x, off = torch.rand(2, 4, 32, 32) * 3, torch.randn(2, 4, 2) * 3
    with torch.no_grad():
        trained = m(x, off).obj
        assert len(calls) == 2 * PROJECTION_STEPS
        inferred = m.diffraction_to_obj(x, off)
        assert len(calls) == 2 * PROJECTION_STEPS + 2 * 5
        same = m.diffraction_to_obj(x, off, PROJECTION_STEPS)
    torch.testing.assert_close(same, trained)
    assert float((inferred - trained).abs().max()) > 1e-3
