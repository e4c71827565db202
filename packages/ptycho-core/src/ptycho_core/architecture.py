"""The network's layer table (ADR-002, ``specs/model.md``), once, for both backends.

Both backends build their convolutions by iterating :func:`conv_layers`; each backend's tests
assert only "my layers == this table", and core's tests check the table against the ADR by hand.
Nothing here imports a framework.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from ptycho_core.config import SUPPORTED_N, ModelConfig

__all__ = [
    "ConvLayer",
    "conv_layers",
    "fourier_channels",
    "fourier_width",
    "conv_flops_per_group",
    "decoder_levels",
    "encoder_levels",
    "parameter_count",
    "physics_stages",
    "PROJECTION_STEPS",
    "INFERENCE_PROJECTION_STEPS",
    "inference_projection_steps",
    "PROJECTION_REGULARIZATION",
    "PROJECTION_SOFTENING",
    "scalar_weights",
]

#: Data projections per physics stage in training (``specs/model.md``, "Physics stages").
PROJECTION_STEPS = 3
#: Data projections per physics stage at inference, ``ModelConfig.inference_projection_steps``'s
#: default: the trained corrections keep helping when the projections between them run longer,
#: at no training cost (measured: ``specs/training.md``, "Inference projections").
INFERENCE_PROJECTION_STEPS: int = ModelConfig.inference_projection_steps
#: ``α`` of a projection's object update ``P̄·Δψ / (|P|² + α·max|P|²)``.
PROJECTION_REGULARIZATION = 0.05
#: ``ε`` of a projection's far-field update ``Ψ' = Ψ·(A + ε)/(|Ψ| + ε)``, in normalised
#: amplitude units (a pattern's rms amplitude is 1/2): where the far field is nearly zero its
#: phase is unknown, and the update stays bounded there.
PROJECTION_SOFTENING = 0.01


@dataclass(frozen=True)
class ConvLayer:
    """One 3×3, stride-1, "same"-padded convolution with bias.

    ``name`` the ADR-002 name (``enc0_conv1``, ``amp_head``, …); ``in_channels`` →
    ``out_channels``; ``size`` the side in pixels of the square feature map it runs on.
    """

    name: str
    in_channels: int
    out_channels: int
    size: int

    @property
    def n_params(self) -> int:
        """Weights plus biases: ``(9·in + 1)·out``."""
        return (9 * self.in_channels + 1) * self.out_channels

    @property
    def flops_per_sample(self) -> int:
        """Forward FLOPs for one sample (two per multiply-add)."""
        return 2 * 9 * self.in_channels * self.out_channels * self.size * self.size


def _positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int`` when it is a whole number >= 1 (NumPy integers included)."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
        and float(value) == int(float(value))
        and float(value) >= 1
    )
    if not ok:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")
    return int(value)


def encoder_levels(n: int) -> int:
    """``L = log2(N / 8)``: the encoder's number of levels (the bottleneck is 8×8)."""
    if n not in SUPPORTED_N:
        raise ValueError(f"N={n} is not supported; the model supports N in {SUPPORTED_N}")
    return int(round(math.log2(n / 8)))


def decoder_levels(n: int) -> int:
    """``L − 1``: each decoder's number of levels before the head stage."""
    return encoder_levels(n) - 1


def fourier_width(model_config: Any) -> int:
    """``w = 16·k``: the channels of the ``'fourier'`` generator's first level (``k`` =
    ``n_filters_scale``); level ``i`` has ``w·2^i``."""
    return 16 * _positive_int(model_config.n_filters_scale, "n_filters_scale")


def fourier_channels(model_config: Any) -> int:
    """``m = 4·k``: the complex diffraction-space channels the ``'fourier'`` generator lifts
    to real space per pattern (``fourier_conv2`` outputs ``2m``: real parts, then imaginary
    parts; the encoder gets ``2m·C``)."""
    return 4 * _positive_int(model_config.n_filters_scale, "n_filters_scale")


def _fourier_layers(model_config: Any) -> list[ConvLayer]:
    """The ``'fourier'`` generator (``specs/model.md``): lift, U-Net encoder, two decoders with
    skips (amplitude, then phase), two full-size heads."""
    n = int(model_config.N)
    levels = encoder_levels(n)
    c = _positive_int(model_config.gridsize, "gridsize") ** 2
    c_out = c if model_config.object_big else 1
    w, m = fourier_width(model_config), fourier_channels(model_config)
    layers = [  # the lift: each pattern of the group alone, through the same two convs
        ConvLayer("fourier_conv1", 1, 2 * w, n),
        ConvLayer("fourier_conv2", 2 * w, 2 * m, n),
    ]
    cin = 2 * m * c  # per pattern: the lifted real parts, then imaginary parts
    for i in range(levels + 1):
        layers += [
            ConvLayer(f"enc{i}_conv1", cin, w << i, n >> i),
            ConvLayer(f"enc{i}_conv2", w << i, w << i, n >> i),
        ]
        cin = w << i
    for branch in ("amp", "phase"):
        for i in reversed(range(levels)):
            layers += [
                ConvLayer(f"{branch}_dec{i}_conv1", (w << (i + 1)) + (w << i), w << i, n >> i),
                ConvLayer(f"{branch}_dec{i}_conv2", w << i, w << i, n >> i),
            ]
    layers += [ConvLayer("amp_head", w, c_out, n), ConvLayer("phase_head", w, c_out, n)]
    return layers


def physics_stages(model_config: Any) -> int:
    """The physics stages the model for ``model_config`` runs after its merge: its
    ``physics_stages`` (default 0 when absent) for an overlap-constrained model (``gridsize >
    1``, ``object_big``, ``model_type`` ``'pinn'``, default ``'pinn'``), else 0 — a projection
    needs the merge's overlap (one pattern alone drifts: ``specs/training.md``) and the probe."""
    stages = int(getattr(model_config, "physics_stages", 0))
    if stages < 0:
        raise ValueError(f"physics_stages={stages} must be >= 0")
    c = _positive_int(model_config.gridsize, "gridsize") ** 2
    pinn = getattr(model_config, "model_type", "pinn") == "pinn"
    return stages if c > 1 and model_config.object_big and pinn else 0


def inference_projection_steps(model_config: Any) -> int:
    """Data projections per physics stage in the *inference* model for ``model_config``: its
    ``inference_projection_steps`` (:data:`PROJECTION_STEPS` when absent: the count the stages
    trained with). Training always runs :data:`PROJECTION_STEPS`."""
    steps = int(getattr(model_config, "inference_projection_steps", PROJECTION_STEPS))
    if steps < 1:
        raise ValueError(f"inference_projection_steps={steps} must be >= 1")
    return steps


def _stage_layers(model_config: Any) -> list[ConvLayer]:
    """The learned corrections of the physics stages: per stage ``s``, ``stage{s}_conv1``
    (``4C`` → ``w``: the projected object's real and imaginary parts, then those of the
    stage's input), ``stage{s}_conv2`` (``w`` → ``w``) and ``stage{s}_head`` (``w`` → ``2C``:
    real, then imaginary parts of the correction), ``w = 16·k``, all at ``N × N``."""
    n = int(model_config.N)
    c = _positive_int(model_config.gridsize, "gridsize") ** 2
    w = fourier_width(model_config)
    layers = []
    for s in range(physics_stages(model_config)):
        layers += [
            ConvLayer(f"stage{s}_conv1", 4 * c, w, n),
            ConvLayer(f"stage{s}_conv2", w, w, n),
            ConvLayer(f"stage{s}_head", w, 2 * c, n),
        ]
    return layers


def conv_layers(model_config: Any) -> list[ConvLayer]:
    """Every convolution of the model for ``model_config`` (a :class:`ModelConfig` or anything
    with ``N``, ``gridsize``, ``n_filters_scale``, ``object_big``, ``probe_big``,
    ``pad_object`` and optionally ``generator``, default ``'cnn'``, ``physics_stages``,
    default 0, and ``model_type``, default ``'pinn'``), in the ADR-002 row order (amplitude
    before phase; the physics stages' corrections last)."""
    if getattr(model_config, "generator", "cnn") == "fourier":
        return _fourier_layers(model_config) + _stage_layers(model_config)
    return _cnn_layers(model_config) + _stage_layers(model_config)


def _cnn_layers(model_config: Any) -> list[ConvLayer]:
    """The ``'cnn'`` generator (ADR-002's original table)."""
    n = int(model_config.N)
    k = _positive_int(model_config.n_filters_scale, "n_filters_scale")
    levels = encoder_levels(n)
    c = _positive_int(model_config.gridsize, "gridsize") ** 2
    c_out = c if model_config.object_big else 1
    layers: list[ConvLayer] = []
    cin = c
    for i in range(levels):
        f = 128 * k // 2 ** (levels - 1 - i)
        layers += [
            ConvLayer(f"enc{i}_conv1", cin, f, n >> i),
            ConvLayer(f"enc{i}_conv2", f, f, n >> i),
        ]
        cin = f
    bottleneck = cin
    for branch in ("amp", "phase"):
        cin = bottleneck
        for j in range(levels - 1):
            g = 32 * k * 2 ** (levels - 2 - j)
            layers += [
                ConvLayer(f"{branch}_dec{j}_conv1", cin, g, 8 << j),
                ConvLayer(f"{branch}_dec{j}_conv2", g, g, 8 << j),
            ]
            cin = g
    top = 32 * k
    head = n // 2 if model_config.pad_object else n
    layers += [ConvLayer("amp_head", top, c_out, head), ConvLayer("phase_head", top, c_out, head)]
    if not model_config.pad_object:
        for branch in ("amp", "phase"):
            layers += [
                ConvLayer(f"{branch}_up_conv1", top, top, n // 2),
                ConvLayer(f"{branch}_up_conv2", top, top, n // 2),
            ]
    elif model_config.probe_big:
        for branch in ("amp", "phase"):
            layers += [
                ConvLayer(f"{branch}_border_conv1", top, top, n // 2),
                ConvLayer(f"{branch}_border_conv2", top, top, n // 2),
                ConvLayer(f"{branch}_border_head", top, c_out, n),
            ]
    return layers


def scalar_weights(model_config: Any) -> list[tuple[str, tuple[int, ...]]]:
    """The non-convolution weights, after the convs: ``log_intensity_scale`` ``()`` and the probe
    as ``probe_real``, ``probe_imag`` ``(N, N)`` (float32)."""
    n = int(model_config.N)
    return [("log_intensity_scale", ()), ("probe_real", (n, n)), ("probe_imag", (n, n))]


def parameter_count(model_config: Any) -> int:
    """Σ over convs ``(9·in + 1)·out``, plus ``1 + 2N²`` for the scale and the probe."""
    n = int(model_config.N)
    return sum(layer.n_params for layer in conv_layers(model_config)) + 1 + 2 * n * n


def conv_flops_per_group(model_config: Any) -> int:
    """Forward FLOPs of all convolutions for one group (one input sample)."""
    return sum(layer.flops_per_sample for layer in conv_layers(model_config))
