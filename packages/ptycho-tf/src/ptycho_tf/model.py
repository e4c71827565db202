"""The PtychoPINN network in Keras 3 (ADR-002, ``specs/model.md``).

:func:`build_models` returns two functional models sharing every layer:

* ``autoencoder`` — the *training* model: inputs ``{"x": (B, N, N, C) float32 s·X,
  "offsets": (B, C, 2) float32 pixels}``; outputs ``[obj (B, N, N, C) complex64,
  amplitude (B, N, N, C) float32 s·A (photon amplitude), intensity (B, N, N, C) float32 (s·A)²]``.
* ``diffraction_to_obj`` — the *inference* model: same inputs, output the complex object patches.

Convolution layers carry exactly the ADR-002 names (``enc0_conv1`` …); the scalar / probe weights
live in the ``intensity_scale`` and ``forward_model`` layers as ``log_intensity_scale``,
``probe_real``, ``probe_imag``. :func:`weight_mapping` lists ``(adr_name, variable)`` in ADR row
order so a torch state dict maps one-to-one (torch ``(out, in, kh, kw)`` ↔ Keras
``(kh, kw, in, out)``).

No global state: every call builds fresh layers from the explicit config; two models with
different configs coexist in one process.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ptycho_tf.layers import (
    BorderCombine,
    ChannelTranslate,
    ComplexFromPolar,
    ForwardModel,
    IntensityScale,
    Modulus,
    ObjectMerge,
    PiTanh,
    Square,
)

__all__ = [
    "SUPPORTED_N",
    "PtychoModels",
    "conv_layer_specs",
    "build_models",
    "weight_mapping",
    "conv_flops_per_group",
]

log = logging.getLogger(__name__)

SUPPORTED_N = (32, 64, 128, 256)


def conv_layer_specs(model_config: Any) -> list[tuple[str, int, int, int]]:
    """``[(name, in_channels, out_channels, spatial_size), ...]`` of every 3×3 conv, ADR-002
    row order (amp before phase). ``spatial_size`` is the side (pixels) the conv runs at."""
    n, k = int(model_config.N), int(model_config.n_filters_scale)
    if n not in SUPPORTED_N:
        raise ValueError(f"N={n} is not supported; the model supports N in {SUPPORTED_N}")
    levels = int(round(math.log2(n / 8)))
    c = model_config.gridsize**2
    c_out = c if model_config.object_big else 1
    specs = []
    cin = c
    for i in range(levels):
        f = 128 * k // 2 ** (levels - 1 - i)
        specs += [(f"enc{i}_conv1", cin, f, n >> i), (f"enc{i}_conv2", f, f, n >> i)]
        cin = f
    bottleneck = cin
    for branch in ("amp", "phase"):
        cin = bottleneck
        for j in range(levels - 1):
            g = 32 * k * 2 ** (levels - 2 - j)
            specs += [
                (f"{branch}_dec{j}_conv1", cin, g, 8 << j),
                (f"{branch}_dec{j}_conv2", g, g, 8 << j),
            ]
            cin = g
    top = 32 * k
    head_size = n // 2 if model_config.pad_object else n
    specs += [("amp_head", top, c_out, head_size), ("phase_head", top, c_out, head_size)]
    if not model_config.pad_object:
        for branch in ("amp", "phase"):
            specs += [
                (f"{branch}_up_conv1", top, top, n // 2),
                (f"{branch}_up_conv2", top, top, n // 2),
            ]
    elif model_config.probe_big:
        for branch in ("amp", "phase"):
            specs += [
                (f"{branch}_border_conv1", top, top, n // 2),
                (f"{branch}_border_conv2", top, top, n // 2),
                (f"{branch}_border_head", top, c_out, n),
            ]
    return specs


def conv_flops_per_group(model_config: Any) -> int:
    """Forward FLOPs (2 per multiply-add) of all convs for one group (one input sample)."""
    return int(
        sum(2 * 9 * cin * cout * s * s for _, cin, cout, s in conv_layer_specs(model_config))
    )


@dataclass
class PtychoModels:
    """The two functional models (sharing layers) and handles on the special layers."""

    autoencoder: keras.Model
    diffraction_to_obj: keras.Model
    intensity_scale_layer: IntensityScale
    forward_layer: ForwardModel | None
    model_config: Any

    @property
    def intensity_scale(self) -> float:
        """Current ``s`` (float)."""
        return float(self.intensity_scale_layer.scale().numpy())

    @property
    def probe(self) -> np.ndarray:
        """Current probe ``(N, N)`` complex64 (the normalised probe for ``pinn`` models)."""
        if self.forward_layer is None:
            raise AttributeError("a supervised model has no probe")
        return self.forward_layer.probe().numpy()


def _conv(name: str, filters: int, activation: str | None = "relu") -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, 3, padding="same", activation=activation, name=name)


def _decoder(branch: str, z, mc, specs: dict[str, tuple[int, int, int]]):
    """Bottleneck → ``(B, N, N, C_out)`` activated amplitude or phase (ADR-002 head rules)."""
    levels = int(round(math.log2(mc.N / 8)))
    x = z
    for j in range(levels - 1):
        for part in ("conv1", "conv2"):
            name = f"{branch}_dec{j}_{part}"
            x = _conv(name, specs[name][1])(x)
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{branch}_dec{j}_up")(x)

    def head(t, name, amp_act):
        filters = specs[name][1]
        if branch == "amp":
            return _conv(name, filters, activation=amp_act)(t)
        return PiTanh(name=f"{name}_act")(_conv(name, filters, activation=None)(t))

    if not mc.pad_object:
        for part in ("conv1", "conv2"):
            name = f"{branch}_up_{part}"
            x = _conv(name, specs[name][1])(x)
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{branch}_up_up")(x)
        return head(x, f"{branch}_head", mc.amp_activation)
    out = head(x, f"{branch}_head", mc.amp_activation)
    out = keras.layers.ZeroPadding2D(mc.N // 4, name=f"{branch}_head_pad")(out)
    if mc.probe_big:
        b = x
        for part in ("conv1", "conv2"):
            name = f"{branch}_border_{part}"
            b = _conv(name, specs[name][1])(b)
        b = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{branch}_border_up")(b)
        b = head(b, f"{branch}_border_head", "swish")
        out = BorderCombine(name=f"{branch}_combine")(out, b)
    return out


def build_models(
    model_config: Any,
    *,
    probe: np.ndarray | None = None,
    intensity_scale: float = 1.0,
    probe_trainable: bool = False,
    intensity_scale_trainable: bool = False,
) -> PtychoModels:
    """Build ``autoencoder`` and ``diffraction_to_obj`` for a :class:`ModelConfig`.

    probe: ``(N, N)`` complex, the *normalised* probe ``P̃`` (required for ``pinn``; ignored
    for ``supervised``). intensity_scale: ``s > 0``. Seed with ``keras.utils.set_random_seed``
    *before* calling this for reproducible initial weights.
    """
    mc = model_config
    n, c = int(mc.N), int(mc.gridsize) ** 2
    specs = {name: (cin, cout, size) for name, cin, cout, size in conv_layer_specs(mc)}
    levels = int(round(math.log2(n / 8)))

    x_in = keras.Input((n, n, c), name="x", dtype="float32")
    off_in = keras.Input((c, 2), name="offsets", dtype="float32")
    scale = IntensityScale(intensity_scale, intensity_scale_trainable, name="intensity_scale")

    h = scale(x_in, inverse=True)
    for i in range(levels):
        for part in ("conv1", "conv2"):
            name = f"enc{i}_{part}"
            h = _conv(name, specs[name][1])(h)
        h = keras.layers.MaxPooling2D(2, name=f"enc{i}_pool")(h)
    amp = _decoder("amp", h, mc, specs)
    phase = _decoder("phase", h, mc, specs)
    obj = ComplexFromPolar(name="object_patch")(amp, phase)
    if c > 1:
        if mc.object_big:
            obj = ObjectMerge(name="object_merge")(obj, off_in)
        else:
            obj = ChannelTranslate(name="channel_translate")(obj, off_in)

    forward = None
    if mc.model_type == "pinn":
        forward = ForwardModel(
            n, mc.gaussian_smoothing_sigma, mc.probe_mask, probe_trainable, name="forward_model"
        )
        pred_amp = scale(forward(obj))
        if probe is None:
            raise ValueError("a 'pinn' model needs the normalised probe (N, N) complex")
        forward.set_probe(probe)
    else:
        pred_amp = Modulus(name="modulus")(obj)
    pred_int = Square(name="intensity")(pred_amp)
    inputs = {"x": x_in, "offsets": off_in}
    auto = keras.Model(inputs, [obj, pred_amp, pred_int], name="autoencoder")
    d2o = keras.Model(inputs, obj, name="diffraction_to_obj")
    log.debug("built %s model N=%d C=%d: %d parameters", mc.model_type, n, c, auto.count_params())
    return PtychoModels(auto, d2o, scale, forward, mc)


def weight_mapping(models: PtychoModels) -> list[tuple[str, Any]]:
    """``[(adr_name, keras_variable), ...]`` in ADR-002 row order: per conv ``<name>.weight``
    (kernel ``(3, 3, in, out)``) and ``<name>.bias``, then ``log_intensity_scale``,
    ``probe_real``, ``probe_imag`` (the probe pair only for ``pinn`` models)."""
    out = []
    for name, *_ in conv_layer_specs(models.model_config):
        layer = models.autoencoder.get_layer(name)
        out += [(f"{name}.weight", layer.kernel), (f"{name}.bias", layer.bias)]
    out.append(("log_intensity_scale", models.intensity_scale_layer.log_intensity_scale))
    if models.forward_layer is not None:
        out += [
            ("probe_real", models.forward_layer.probe_real),
            ("probe_imag", models.forward_layer.probe_imag),
        ]
    return out
