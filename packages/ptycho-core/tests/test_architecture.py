"""The ADR-002 layer table (``specs/model.md``), checked against tables written out by hand.

Every expected row below was derived on paper from the ADR formulas (``L = log2(N/8)``,
``f_i = 128k / 2^(L−1−i)`` at ``N/2^i``, ``g_j = 32k · 2^(L−2−j)`` at ``8·2^j``, heads
``32k → C_out``), not from the code under test.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ptycho_core.architecture import (
    ConvLayer,
    conv_flops_per_group,
    conv_layers,
    decoder_levels,
    encoder_levels,
    parameter_count,
    physics_stages,
    scalar_weights,
)
from ptycho_core.config import ModelConfig
from ptycho_core.errors import ConfigError


def _rows(cfg) -> list[tuple[str, int, int, int]]:
    return [(layer.name, layer.in_channels, layer.out_channels, layer.size) for layer in cfg]


# N=64, gridsize=2 (C=4), k=2, object_big (C_out=4): L=3, f=(64, 128, 256), g=(128, 64).
ENCODER_64_G2_K2 = [
    ("enc0_conv1", 4, 64, 64),
    ("enc0_conv2", 64, 64, 64),
    ("enc1_conv1", 64, 128, 32),
    ("enc1_conv2", 128, 128, 32),
    ("enc2_conv1", 128, 256, 16),
    ("enc2_conv2", 256, 256, 16),
]
DECODERS_64_K2 = [
    ("amp_dec0_conv1", 256, 128, 8),
    ("amp_dec0_conv2", 128, 128, 8),
    ("amp_dec1_conv1", 128, 64, 16),
    ("amp_dec1_conv2", 64, 64, 16),
    ("phase_dec0_conv1", 256, 128, 8),
    ("phase_dec0_conv2", 128, 128, 8),
    ("phase_dec1_conv1", 128, 64, 16),
    ("phase_dec1_conv2", 64, 64, 16),
]
FULL_64_G2_K2 = (
    ENCODER_64_G2_K2
    + DECODERS_64_K2
    + [
        ("amp_head", 64, 4, 32),
        ("phase_head", 64, 4, 32),
        ("amp_border_conv1", 64, 64, 32),
        ("amp_border_conv2", 64, 64, 32),
        ("amp_border_head", 64, 4, 64),
        ("phase_border_conv1", 64, 64, 32),
        ("phase_border_conv2", 64, 64, 32),
        ("phase_border_head", 64, 4, 64),
    ]
)


def _cfg(**kw) -> ModelConfig:
    base = dict(
        N=64,
        gridsize=2,
        n_filters_scale=2,
        object_big=True,
        probe_big=True,
        pad_object=True,
        generator="cnn",
        physics_stages=0,
    )
    return ModelConfig(**(base | kw))


# The 'fourier' generator, N=64, gridsize=2 (C=4), k=2: w = 16k = 32; the lift takes one pattern
# at a time (1 channel in) to m = 4k = 8 complex channels (fourier_conv2 outputs 2m = 16), so the
# encoder gets 2m·C = 64; L = 3, encoder levels 0..3 with 32·2^i channels at 64/2^i, decoder
# level i takes (upsampled 32·2^(i+1)) + (skip 32·2^i) channels.
FOURIER_64_G2_K2 = [
    ("fourier_conv1", 1, 64, 64),
    ("fourier_conv2", 64, 16, 64),
    ("enc0_conv1", 64, 32, 64),
    ("enc0_conv2", 32, 32, 64),
    ("enc1_conv1", 32, 64, 32),
    ("enc1_conv2", 64, 64, 32),
    ("enc2_conv1", 64, 128, 16),
    ("enc2_conv2", 128, 128, 16),
    ("enc3_conv1", 128, 256, 8),
    ("enc3_conv2", 256, 256, 8),
    ("amp_dec2_conv1", 384, 128, 16),
    ("amp_dec2_conv2", 128, 128, 16),
    ("amp_dec1_conv1", 192, 64, 32),
    ("amp_dec1_conv2", 64, 64, 32),
    ("amp_dec0_conv1", 96, 32, 64),
    ("amp_dec0_conv2", 32, 32, 64),
    ("phase_dec2_conv1", 384, 128, 16),
    ("phase_dec2_conv2", 128, 128, 16),
    ("phase_dec1_conv1", 192, 64, 32),
    ("phase_dec1_conv2", 64, 64, 32),
    ("phase_dec0_conv1", 96, 32, 64),
    ("phase_dec0_conv2", 32, 32, 64),
    ("amp_head", 32, 4, 64),
    ("phase_head", 32, 4, 64),
]


def test_fourier_table_n64_gridsize2():
    assert _rows(conv_layers(_cfg(generator="fourier"))) == FOURIER_64_G2_K2


# Physics stages (specs/model.md), N=64, gridsize=2 (C=4), k=2: per stage, 4C = 16 channels in
# (projected object re, im, then the stage's input re, im), w = 16k = 32 wide, 2C = 8 out
# (correction re, im), all at 64 × 64; appended after every other conv.
STAGES_64_G2_K2 = [
    row
    for s in range(3)
    for row in (
        (f"stage{s}_conv1", 16, 32, 64),
        (f"stage{s}_conv2", 32, 32, 64),
        (f"stage{s}_head", 32, 8, 64),
    )
]


def test_physics_stages_table_and_default():
    assert ModelConfig().physics_stages == 3
    assert physics_stages(_cfg(physics_stages=3)) == 3
    rows = _rows(conv_layers(_cfg(generator="fourier", physics_stages=3)))
    assert rows == FOURIER_64_G2_K2 + STAGES_64_G2_K2
    assert _rows(conv_layers(_cfg(physics_stages=3))) == FULL_64_G2_K2 + STAGES_64_G2_K2
    assert _rows(conv_layers(_cfg(generator="fourier", physics_stages=1))) == (
        FOURIER_64_G2_K2 + STAGES_64_G2_K2[:3]
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"gridsize": 1},  # one pattern: no overlap to project against
        {"object_big": False},  # no merge
        {"model_type": "supervised"},  # no probe, no diffraction loss
    ],
)
def test_physics_stages_only_for_overlap_constrained_pinn_models(kw):
    cfg = _cfg(generator="fourier", physics_stages=3, **kw)
    assert physics_stages(cfg) == 0
    assert not [r for r in conv_layers(cfg) if r.name.startswith("stage")]


def test_physics_stages_must_be_a_non_negative_integer():
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ConfigError, match="physics_stages"):
            ModelConfig(physics_stages=bad)
    # a table reader given something looser still refuses a negative count
    with pytest.raises(ValueError, match="physics_stages"):
        physics_stages(SimpleNamespace(gridsize=2, object_big=True, physics_stages=-1))


def test_fourier_is_the_default_and_ignores_pad_object_and_probe_big():
    assert ModelConfig().generator == "fourier"
    for kw in ({"pad_object": False}, {"probe_big": False}):
        assert _rows(conv_layers(_cfg(generator="fourier", **kw))) == FOURIER_64_G2_K2


def test_fourier_n32_gridsize1_k1_object_big_false():
    # w = 16, m = 4·1 = 4 (fourier_conv2 → 8), L = 2: levels 16, 32, 64 channels at 32, 16, 8.
    rows = _rows(conv_layers(_cfg(N=32, gridsize=1, n_filters_scale=1, generator="fourier")))
    assert rows == [
        ("fourier_conv1", 1, 32, 32),
        ("fourier_conv2", 32, 8, 32),
        ("enc0_conv1", 8, 16, 32),
        ("enc0_conv2", 16, 16, 32),
        ("enc1_conv1", 16, 32, 16),
        ("enc1_conv2", 32, 32, 16),
        ("enc2_conv1", 32, 64, 8),
        ("enc2_conv2", 64, 64, 8),
        ("amp_dec1_conv1", 96, 32, 16),
        ("amp_dec1_conv2", 32, 32, 16),
        ("amp_dec0_conv1", 48, 16, 32),
        ("amp_dec0_conv2", 16, 16, 32),
        ("phase_dec1_conv1", 96, 32, 16),
        ("phase_dec1_conv2", 32, 32, 16),
        ("phase_dec0_conv1", 48, 16, 32),
        ("phase_dec0_conv2", 16, 16, 32),
        ("amp_head", 16, 1, 32),
        ("phase_head", 16, 1, 32),
    ]
    one = _cfg(N=32, gridsize=2, n_filters_scale=1, generator="fourier", object_big=False)
    assert [r.out_channels for r in conv_layers(one) if r.name.endswith("head")] == [1, 1]


def test_fourier_parameter_count_by_hand():
    # Σ (9·in + 1)·out over FOURIER_64_G2_K2, plus 1 + 2·64² for the scale and the probe.
    convs = sum((9 * cin + 1) * cout for _, cin, cout, _ in FOURIER_64_G2_K2)
    assert parameter_count(_cfg(generator="fourier")) == convs + 1 + 2 * 64 * 64


def test_full_table_n64_gridsize2():
    assert _rows(conv_layers(_cfg())) == FULL_64_G2_K2


def test_pad_object_false_has_up_convs_and_full_size_heads():
    expected = (
        ENCODER_64_G2_K2
        + DECODERS_64_K2
        + [
            ("amp_head", 64, 4, 64),
            ("phase_head", 64, 4, 64),
            ("amp_up_conv1", 64, 64, 32),
            ("amp_up_conv2", 64, 64, 32),
            ("phase_up_conv1", 64, 64, 32),
            ("phase_up_conv2", 64, 64, 32),
        ]
    )
    assert _rows(conv_layers(_cfg(pad_object=False))) == expected
    # probe_big does not matter without pad_object
    assert _rows(conv_layers(_cfg(pad_object=False, probe_big=False))) == expected


def test_probe_big_false_has_no_border_branch():
    expected = (
        ENCODER_64_G2_K2 + DECODERS_64_K2 + [("amp_head", 64, 4, 32), ("phase_head", 64, 4, 32)]
    )
    assert _rows(conv_layers(_cfg(probe_big=False))) == expected


def test_object_big_false_heads_have_one_channel():
    rows = dict((r[0], r[1:]) for r in _rows(conv_layers(_cfg(object_big=False))))
    assert rows["enc0_conv1"] == (4, 64, 64)  # the input still has C = 4 channels
    assert rows["amp_head"] == (64, 1, 32) and rows["phase_head"] == (64, 1, 32)
    assert rows["amp_border_head"] == (64, 1, 64) and rows["phase_border_head"] == (64, 1, 64)


def test_n32_gridsize1_k1():
    # L=2, f=(64, 128), g0=32 at 8, heads 32 -> 1 at 16, border at 16 -> 32.
    expected = [
        ("enc0_conv1", 1, 64, 32),
        ("enc0_conv2", 64, 64, 32),
        ("enc1_conv1", 64, 128, 16),
        ("enc1_conv2", 128, 128, 16),
        ("amp_dec0_conv1", 128, 32, 8),
        ("amp_dec0_conv2", 32, 32, 8),
        ("phase_dec0_conv1", 128, 32, 8),
        ("phase_dec0_conv2", 32, 32, 8),
        ("amp_head", 32, 1, 16),
        ("phase_head", 32, 1, 16),
        ("amp_border_conv1", 32, 32, 16),
        ("amp_border_conv2", 32, 32, 16),
        ("amp_border_head", 32, 1, 32),
        ("phase_border_conv1", 32, 32, 16),
        ("phase_border_conv2", 32, 32, 16),
        ("phase_border_head", 32, 1, 32),
    ]
    assert (
        _rows(conv_layers(ModelConfig(N=32, gridsize=1, n_filters_scale=1, generator="cnn")))
        == expected
    )


def test_n128_spot_checks():
    # L=4, k=2: f=(32, 64, 128, 256) at 128, 64, 32, 16; g=(256, 128, 64) at 8, 16, 32.
    rows = {
        r[0]: r[1:] for r in _rows(conv_layers(ModelConfig(N=128, gridsize=1, generator="cnn")))
    }
    assert rows["enc0_conv1"] == (1, 32, 128)
    assert rows["enc1_conv1"] == (32, 64, 64)
    assert rows["enc3_conv2"] == (256, 256, 16)
    assert "enc4_conv1" not in rows
    assert rows["amp_dec0_conv1"] == (256, 256, 8)
    assert rows["phase_dec1_conv1"] == (256, 128, 16)
    assert rows["amp_dec2_conv2"] == (64, 64, 32)
    assert "amp_dec3_conv1" not in rows
    assert rows["amp_head"] == (64, 1, 64)
    assert rows["phase_border_head"] == (64, 1, 128)
    assert len(rows) == 8 + 2 * 6 + 2 + 6


def test_levels():
    assert [encoder_levels(n) for n in (32, 64, 128, 256)] == [2, 3, 4, 5]
    assert [decoder_levels(n) for n in (32, 64, 128, 256)] == [1, 2, 3, 4]


def test_parameter_count_by_hand():
    # Σ (9·in + 1)·out over FULL_64_G2_K2, worked out on paper:
    # encoder 2368 + 36928 + 73856 + 147584 + 295168 + 590080 = 1_145_984
    # decoders 2 × (295040 + 147584 + 73792 + 36928) = 1_106_688
    # heads 2 × 2308 = 4616; border 2 × (36928 + 36928 + 2308) = 152_328
    # convs 2_409_616, + 1 + 2·64² = 8193 for the scale and the probe.
    assert parameter_count(_cfg()) == 2_417_809
    assert sum(layer.n_params for layer in conv_layers(_cfg())) == 2_409_616


def test_n_params_and_flops_of_one_layer():
    enc0 = conv_layers(_cfg())[0]
    assert enc0 == ConvLayer("enc0_conv1", 4, 64, 64)
    assert enc0.n_params == 9 * 4 * 64 + 64  # weights + biases = 2368
    # 2 FLOPs per multiply-add · 3·3 taps · 4 in · 64 out · 64² pixels
    assert enc0.flops_per_sample == 18_874_368


def test_conv_flops_per_group_by_hand():
    # 18 · Σ in·out·size² over FULL_64_G2_K2:
    # encoder 68_157_440, decoders 2 × 6_291_456, heads 524_288, border 2 × 9_437_184
    assert conv_flops_per_group(_cfg()) == 18 * 100_139_008


def test_scalar_weights():
    assert scalar_weights(_cfg()) == [
        ("log_intensity_scale", ()),
        ("probe_real", (64, 64)),
        ("probe_imag", (64, 64)),
    ]


@pytest.mark.parametrize("n", [16, 48, 96, 512])
def test_unsupported_n_is_rejected(n):
    with pytest.raises(ValueError, match=f"N={n}"):
        encoder_levels(n)
    fake = SimpleNamespace(
        N=n, gridsize=1, n_filters_scale=1, object_big=True, probe_big=True, pad_object=True
    )
    with pytest.raises(ValueError, match=f"N={n}"):
        conv_layers(fake)
    with pytest.raises(ConfigError, match="N"):
        ModelConfig(N=n)


@pytest.mark.parametrize("k", [0, -1, 1.5])
def test_bad_n_filters_scale_is_rejected(k):
    fake = SimpleNamespace(
        N=64, gridsize=1, n_filters_scale=k, object_big=True, probe_big=True, pad_object=True
    )
    with pytest.raises(ValueError, match="n_filters_scale"):
        conv_layers(fake)
    with pytest.raises(ValueError, match="n_filters_scale"):
        parameter_count(fake)
    with pytest.raises(ConfigError, match="n_filters_scale"):
        ModelConfig(n_filters_scale=k)


@pytest.mark.parametrize("g", [0, -2])
def test_bad_gridsize_is_rejected(g):
    fake = SimpleNamespace(
        N=64, gridsize=g, n_filters_scale=1, object_big=True, probe_big=True, pad_object=True
    )
    with pytest.raises(ValueError, match="gridsize"):
        conv_layers(fake)
