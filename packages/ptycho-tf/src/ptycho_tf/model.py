"""The PtychoPINN network in Keras 3 (ADR-002, ``specs/model.md``).

:func:`build_models` returns two functional models sharing every layer:

* ``autoencoder`` — the *training* model: inputs ``{"x": (B, N, N, C) float32 s·X,
  "offsets": (B, C, 2) float32 pixels}``; outputs ``[obj (B, N, N, C) complex64,
  amplitude (B, N, N, C) float32 s·A (photon amplitude), intensity (B, N, N, C) float32 (s·A)²]``.
* ``diffraction_to_obj`` — the *inference* model: same inputs, output the complex object patches.
  With physics stages it runs ``ModelConfig.inference_projection_steps`` projections per stage
  (training: :data:`~ptycho_core.architecture.PROJECTION_STEPS`), through the same convs.

The convolutions are built by iterating core's layer table
(:func:`ptycho_core.architecture.conv_layers`) and carry exactly its ADR-002 names
(``enc0_conv1`` …), channels and order; the scalar / probe weights
live in the ``intensity_scale`` and ``forward_model`` layers as ``log_intensity_scale``,
``probe_real``, ``probe_imag``. :func:`weight_mapping` lists ``(adr_name, variable)`` in ADR row
order so a torch state dict maps one-to-one (torch ``(out, in, kh, kw)`` ↔ Keras
``(kh, kw, in, out)``).

No global state: every call builds fresh layers from the explicit config; two models with
different configs coexist in one process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from ptycho_core.architecture import (
    PROJECTION_REGULARIZATION,
    PROJECTION_SOFTENING,
    PROJECTION_STEPS,
    conv_layers,
    encoder_levels,
    inference_projection_steps,
    physics_stages,
)
from ptycho_tf.layers import (
    BorderCombine,
    ChannelTranslate,
    ComplexFromPolar,
    DataProjection,
    ForwardModel,
    FourierLift,
    IntensityScale,
    Modulus,
    ObjectMerge,
    PatternsToBatch,
    PiTanh,
    ProjectionRun,
    Square,
    StageCorrection,
    StageFeatures,
)

__all__ = ["PtychoModels", "build_models", "weight_mapping"]

log = logging.getLogger(__name__)


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

    def weight_arrays(self) -> dict[str, np.ndarray]:
        """Every weight as ``{ADR-002 name: float32 array}`` in the canonical layout of
        :mod:`ptycho_core.convert` (kernels as torch's ``(out, in, 3, 3)``). A supervised model
        has no probe weights; its ``probe_real``/``probe_imag`` are ones and zeros."""
        out = {}
        for name, var in weight_mapping(self):
            a = np.asarray(var.numpy(), np.float32)
            # np.array, not ascontiguousarray: that would turn the 0-d scale into shape (1,)
            out[name] = np.array(a.transpose(3, 2, 0, 1) if a.ndim == 4 else a, order="C")
        if self.forward_layer is None:
            n = int(self.model_config.N)
            out["probe_real"], out["probe_imag"] = (
                np.ones((n, n), np.float32),
                np.zeros((n, n), np.float32),
            )
        return out

    def load_weight_arrays(self, arrays: Mapping[str, np.ndarray], where: object) -> None:
        """Assign every weight from canonical arrays, strictly (a missing, unexpected or
        differently shaped array is a :class:`~ptycho_core.errors.BundleError` naming ``where``;
        nothing is assigned then). A supervised model ignores ``probe_real``/``probe_imag``."""
        from ptycho_core.engine import state_mismatch, weights_mismatch_error

        mapping = weight_mapping(self)
        expected = {}
        for name, var in mapping:
            shape = tuple(var.shape)
            expected[name] = np.empty(
                (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape, np.uint8
            )
        given = {k: np.asarray(v) for k, v in arrays.items()}
        if self.forward_layer is None:
            given = {k: v for k, v in given.items() if k not in ("probe_real", "probe_imag")}
        mismatch = state_mismatch(expected, given)
        if mismatch:
            raise weights_mismatch_error(where, mismatch)
        for name, var in mapping:
            a = np.asarray(given[name], np.float32)
            var.assign(a.transpose(2, 3, 1, 0) if a.ndim == 4 else a)


def _make_convs(mc: Any) -> dict[str, keras.layers.Conv2D]:
    """One ``Conv2D`` per row of :func:`ptycho_core.architecture.conv_layers`, in table order:
    3×3, stride 1, "same", bias, ``out_channels`` filters. Activation ReLU, except the heads:
    ``amp_head`` ``mc.amp_activation``, ``amp_border_head`` swish, phase heads linear (the
    ``π·tanh`` follows as its own layer), and the linear ``fourier_conv2`` and stage heads."""
    convs = {}
    for row in conv_layers(mc):
        act: str | None = "relu"
        if row.name == "fourier_conv2" or (
            row.name.startswith(("phase", "stage")) and row.name.endswith("head")
        ):
            act = None
        elif row.name == "amp_head":
            act = mc.amp_activation
        elif row.name == "amp_border_head":
            act = "swish"
        convs[row.name] = keras.layers.Conv2D(
            row.out_channels, 3, padding="same", activation=act, name=row.name
        )
    return convs


def _decoder(branch: str, z, mc, convs: dict[str, keras.layers.Conv2D]):
    """Bottleneck → ``(B, N, N, C_out)`` activated amplitude or phase (ADR-002 head rules)."""
    x = z
    for j in range(encoder_levels(mc.N) - 1):
        x = convs[f"{branch}_dec{j}_conv2"](convs[f"{branch}_dec{j}_conv1"](x))
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{branch}_dec{j}_up")(x)

    def head(t, name):
        t = convs[name](t)
        return PiTanh(name=f"{name}_act")(t) if branch == "phase" else t

    if not mc.pad_object:
        x = convs[f"{branch}_up_conv2"](convs[f"{branch}_up_conv1"](x))
        x = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{branch}_up_up")(x)
        return head(x, f"{branch}_head")
    out = head(x, f"{branch}_head")
    out = keras.layers.ZeroPadding2D(mc.N // 4, name=f"{branch}_head_pad")(out)
    if mc.probe_big:
        b = convs[f"{branch}_border_conv2"](convs[f"{branch}_border_conv1"](x))
        b = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{branch}_border_up")(b)
        out = BorderCombine(name=f"{branch}_combine")(out, head(b, f"{branch}_border_head"))
    return out


def _fourier_generator(h, mc: Any, convs: dict[str, keras.layers.Conv2D]):
    """The ``'fourier'`` generator (``specs/model.md``): normalised diffraction
    ``(B, N, N, C)`` → activated amplitude and phase ``(B, N, N, C_out)`` each."""
    h = PatternsToBatch(name="fourier_patterns")(h)
    h = convs["fourier_conv2"](convs["fourier_conv1"](h))
    h = FourierLift(int(mc.gridsize) ** 2, name="fourier_lift")(h)
    levels = encoder_levels(mc.N)
    feats = []
    for i in range(levels + 1):
        if i:
            h = keras.layers.MaxPooling2D(2, name=f"enc{i - 1}_pool")(h)
        h = convs[f"enc{i}_conv2"](convs[f"enc{i}_conv1"](h))
        feats.append(h)
    out = []
    for branch in ("amp", "phase"):
        h = feats[-1]
        for i in reversed(range(levels)):
            up = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"{branch}_dec{i}_up")
            h = keras.layers.Concatenate(name=f"{branch}_dec{i}_skip")([up(h), feats[i]])
            h = convs[f"{branch}_dec{i}_conv2"](convs[f"{branch}_dec{i}_conv1"](h))
        h = convs[f"{branch}_head"](h)
        out.append(PiTanh(name="phase_head_act")(h) if branch == "phase" else h)
    return out[0], out[1]


def _merge(obj, offsets, mc: Any, forward: ForwardModel | None, weight=None, name="object_merge"):
    """The ``object_big`` merge with the weights of ``mc.merge_weights`` (``specs/model.md``):
    the forward layer's probe intensity for a ``pinn`` model (``weight``, or computed here),
    every pixel 1 for a supervised one (no illumination), or the centre square for
    ``'centre'``."""
    if mc.merge_weights == "centre":
        return ObjectMerge("centre", name=name)(obj, offsets)
    if forward is None:
        return ObjectMerge("uniform", name=name)(obj, offsets)
    if weight is None:
        weight = forward(obj, merge_weight=True)
    return ObjectMerge("probe", name=name)(obj, offsets, weight)


def _physics_stages(
    obj, x_norm, offsets, mc: Any, forward: ForwardModel, convs, steps: int, prefix: str = ""
):
    """The physics stages after the merge (``specs/model.md``): per stage, ``steps`` data
    projections against ``x_norm`` (``x / s``), each merged, then the learned correction from
    the projected and the incoming patches, merged. The corrections' convs are ``convs`` (shared
    by every chain built); ``prefix`` names the weightless layers of a second chain, whose
    projections run as one :class:`ProjectionRun` loop per stage."""
    weight = None if mc.merge_weights == "centre" else forward(obj, merge_weight=True)
    illum = forward(obj, illumination=True)
    for s in range(physics_stages(mc)):
        before = obj
        if prefix:  # the inference chain: one graph loop, whatever the count
            mode = "centre" if mc.merge_weights == "centre" else "probe"
            run = ProjectionRun(
                steps,
                PROJECTION_REGULARIZATION,
                PROJECTION_SOFTENING,
                weights=mode,
                name=f"{prefix}stage{s}_projections",
            )
            obj = run(obj, x_norm, illum, offsets, weight)
        else:  # the training chain: one named layer per projection, as bundles have had
            for k in range(steps):
                project = DataProjection(
                    PROJECTION_REGULARIZATION, PROJECTION_SOFTENING, name=f"stage{s}_projection{k}"
                )
                obj = _merge(
                    project(obj, x_norm, illum),
                    offsets,
                    mc,
                    forward,
                    weight,
                    name=f"stage{s}_merge{k}",
                )
        h = StageFeatures(name=f"{prefix}stage{s}_features")(obj, before)
        d = convs[f"stage{s}_head"](convs[f"stage{s}_conv2"](convs[f"stage{s}_conv1"](h)))
        obj = StageCorrection(name=f"{prefix}stage{s}_correction")(obj, d)
        obj = _merge(obj, offsets, mc, forward, weight, name=f"{prefix}stage{s}_merge")
    return obj


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
    convs = _make_convs(mc)

    x_in = keras.Input((n, n, c), name="x", dtype="float32")
    off_in = keras.Input((c, 2), name="offsets", dtype="float32")
    scale = IntensityScale(intensity_scale, intensity_scale_trainable, name="intensity_scale")

    h = x_norm = scale(x_in, inverse=True)
    if mc.generator == "fourier":
        amp, phase = _fourier_generator(h, mc, convs)
    else:
        for i in range(encoder_levels(n)):
            h = convs[f"enc{i}_conv2"](convs[f"enc{i}_conv1"](h))
            h = keras.layers.MaxPooling2D(2, name=f"enc{i}_pool")(h)
        amp = _decoder("amp", h, mc, convs)
        phase = _decoder("phase", h, mc, convs)
    obj = ComplexFromPolar(name="object_patch")(amp, phase)

    forward = None
    if mc.model_type == "pinn":
        if probe is None:
            raise ValueError("a 'pinn' model needs the normalised probe (N, N) complex")
        forward = ForwardModel(
            n, mc.gaussian_smoothing_sigma, mc.probe_mask, probe_trainable, name="forward_model"
        )
        forward.set_probe(probe)
    inferred = None  # the inference model's output, where it differs from training's
    if c > 1:
        if mc.object_big:
            obj = _merge(obj, off_in, mc, forward)
            if forward is not None and physics_stages(mc):
                merged = obj
                obj = _physics_stages(merged, x_norm, off_in, mc, forward, convs, PROJECTION_STEPS)
                steps = inference_projection_steps(mc)
                if steps != PROJECTION_STEPS:  # the same convs, longer projections between them
                    inferred = _physics_stages(
                        merged, x_norm, off_in, mc, forward, convs, steps, prefix="inference_"
                    )
        else:
            obj = ChannelTranslate(name="channel_translate")(obj, off_in)

    if forward is not None:
        pred_amp = scale(forward(obj))
    else:
        pred_amp = Modulus(name="modulus")(obj)
    pred_int = Square(name="intensity")(pred_amp)
    inputs = {"x": x_in, "offsets": off_in}
    auto = keras.Model(inputs, [obj, pred_amp, pred_int], name="autoencoder")
    d2o = keras.Model(inputs, obj if inferred is None else inferred, name="diffraction_to_obj")
    log.debug("built %s model N=%d C=%d: %d parameters", mc.model_type, n, c, auto.count_params())
    return PtychoModels(auto, d2o, scale, forward, mc)


def weight_mapping(models: PtychoModels) -> list[tuple[str, Any]]:
    """``[(adr_name, keras_variable), ...]`` in ADR-002 row order: per conv ``<name>.weight``
    (kernel ``(3, 3, in, out)``) and ``<name>.bias``, then ``log_intensity_scale``,
    ``probe_real``, ``probe_imag`` (the probe pair only for ``pinn`` models)."""
    out = []
    for row in conv_layers(models.model_config):
        layer = models.autoencoder.get_layer(row.name)
        out += [(f"{row.name}.weight", layer.kernel), (f"{row.name}.bias", layer.bias)]
    out.append(("log_intensity_scale", models.intensity_scale_layer.log_intensity_scale))
    if models.forward_layer is not None:
        out += [
            ("probe_real", models.forward_layer.probe_real),
            ("probe_imag", models.forward_layer.probe_imag),
        ]
    return out
