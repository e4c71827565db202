"""The network against ADR-002 (specs/model.md): names, order, shapes, parameter count,
activations, trainable probe / intensity scale."""

import math

import numpy as np
import pytest
import torch

from ptycho_torch.model import PtychoModel


def adr_layers(n, gridsize, k, object_big=True, probe_big=True, pad_object=True):
    """The ADR-002 table, written out again from the spec text (not from the code under test)."""
    L = {32: 2, 64: 3, 128: 4, 256: 5}[n]
    C = gridsize**2
    c_out = C if object_big else 1
    f = [128 * k // 2 ** (L - 1 - i) for i in range(L)]
    g = [32 * k * 2 ** (L - 2 - j) for j in range(L - 1)]
    rows = []
    prev = C
    for i in range(L):
        rows += [(f"enc{i}_conv1", prev, f[i]), (f"enc{i}_conv2", f[i], f[i])]
        prev = f[i]
    for br in ("amp", "phase"):
        prev = f[-1]
        for j in range(L - 1):
            rows += [(f"{br}_dec{j}_conv1", prev, g[j]), (f"{br}_dec{j}_conv2", g[j], g[j])]
            prev = g[j]
    rows += [("amp_head", 32 * k, c_out), ("phase_head", 32 * k, c_out)]
    if not pad_object:
        for br in ("amp", "phase"):
            rows += [(f"{br}_up_conv1", 32 * k, 32 * k), (f"{br}_up_conv2", 32 * k, 32 * k)]
    elif probe_big:
        for br in ("amp", "phase"):
            rows += [
                (f"{br}_border_conv1", 32 * k, 32 * k),
                (f"{br}_border_conv2", 32 * k, 32 * k),
                (f"{br}_border_head", 32 * k, c_out),
            ]
    return rows


def expected_count(n, gridsize, k, **kw):
    return (
        sum((9 * cin + 1) * cout for _, cin, cout in adr_layers(n, gridsize, k, **kw))
        + 1
        + 2 * n * n
    )


CASES = [
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


@pytest.mark.parametrize("n,gs,k,kw", CASES)
def test_layers_names_order_shapes_and_param_count(n, gs, k, kw):
    m = PtychoModel(N=n, gridsize=gs, n_filters_scale=k, **kw)
    rows = adr_layers(n, gs, k, **kw)
    sd = m.state_dict()
    keys = list(sd)
    expect_keys = [f"{name}.{p}" for name, _, _ in rows for p in ("weight", "bias")]
    expect_keys += ["log_intensity_scale", "probe_real", "probe_imag"]
    assert keys == expect_keys
    for name, cin, cout in rows:
        assert tuple(sd[f"{name}.weight"].shape) == (cout, cin, 3, 3)
        assert tuple(sd[f"{name}.bias"].shape) == (cout,)
    assert tuple(sd["log_intensity_scale"].shape) == ()
    assert tuple(sd["probe_real"].shape) == (n, n)
    count = sum(p.numel() for p in m.parameters())
    exp = expected_count(n, gs, k, **kw)
    print(f"N={n} gridsize={gs} k={k} {kw}: {count} parameters (ADR-002 arithmetic: {exp})")
    assert count == exp


def test_default_n64_param_count_printed():
    m = PtychoModel(N=64, gridsize=1, n_filters_scale=2)
    n_params = sum(p.numel() for p in m.parameters())
    print(f"default N=64 gridsize=1 k=2 parameter count: {n_params}")
    # Spelled out by hand: encoder 32k,64k,128k with k=2 -> 64,128,256 filters.
    enc = (
        (9 * 1 + 1) * 64
        + (9 * 64 + 1) * 64
        + (9 * 64 + 1) * 128
        + (9 * 128 + 1) * 128
        + (9 * 128 + 1) * 256
        + (9 * 256 + 1) * 256
    )
    dec = 2 * ((9 * 256 + 1) * 128 + (9 * 128 + 1) * 128 + (9 * 128 + 1) * 64 + (9 * 64 + 1) * 64)
    heads = 2 * (9 * 64 + 1) * 1
    border = 2 * ((9 * 64 + 1) * 64 * 2 + (9 * 64 + 1) * 1)
    assert n_params == enc + dec + heads + border + 1 + 2 * 64 * 64


@pytest.mark.parametrize("bad", [48, 16, 512])
def test_unsupported_n(bad):
    with pytest.raises(ValueError, match="N="):
        PtychoModel(N=bad)


@pytest.mark.parametrize(
    "n,gs,kw",
    [
        (32, 1, {}),
        (64, 2, {}),
        (32, 2, {"pad_object": False}),
        (32, 2, {"object_big": False}),
        (32, 1, {"probe_big": False}),
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
    m = PtychoModel(N=32, gridsize=1, n_filters_scale=1, probe_big=False, object_big=False)
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
    torch.testing.assert_close(a(x, off).amplitude, b(x, off).amplitude, rtol=1e-4, atol=1e-4)
