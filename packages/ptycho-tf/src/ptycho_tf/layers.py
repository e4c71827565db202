"""Custom Keras 3 layers of the ptycho network (registered, so models serialise without pickles).

Every layer here holds either no weights or exactly the scalar / probe weights of ADR-002
(``log_intensity_scale``, ``probe_real``, ``probe_imag``); the convolutions are stock
``keras.layers.Conv2D``. Data layout is TF's channels-last ``(B, N, N, C)``.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from ptycho_tf import physics

__all__ = [
    "IntensityScale",
    "PiTanh",
    "BorderCombine",
    "FourierLift",
    "PatternsToBatch",
    "ComplexFromPolar",
    "ObjectMerge",
    "DataProjection",
    "StageFeatures",
    "StageCorrection",
    "ChannelTranslate",
    "ForwardModel",
    "Modulus",
    "Square",
]

_PKG = "ptycho_tf"


@keras.saving.register_keras_serializable(package=_PKG)
class IntensityScale(keras.layers.Layer):
    """Holds ``log s`` (weight ``log_intensity_scale``, shape ``()``, float32).

    ``call(x)`` returns ``x · s``; ``call(x, inverse=True)`` returns ``x / s``. The weight is
    trainable only when ``scale_trainable`` (``specs/physics.md``); it is a real tracked variable
    either way.
    """

    def __init__(self, initial_scale: float = 1.0, scale_trainable: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not initial_scale > 0:
            raise ValueError(f"intensity scale must be > 0, got {initial_scale!r}")
        self.initial_scale = float(initial_scale)
        self.scale_trainable = bool(scale_trainable)
        self.log_intensity_scale = self.add_weight(
            name="log_intensity_scale",
            shape=(),
            dtype="float32",
            initializer=keras.initializers.Constant(math.log(self.initial_scale)),
            trainable=self.scale_trainable,
        )

    def scale(self) -> tf.Tensor:
        """``s`` as a scalar float32 tensor."""
        return tf.exp(tf.convert_to_tensor(self.log_intensity_scale))

    def call(self, x, inverse: bool = False):
        s = tf.cast(self.scale(), x.dtype)
        return x / s if inverse else x * s

    def compute_output_spec(self, x, inverse: bool = False):
        return keras.KerasTensor(x.shape, dtype=x.dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "initial_scale": self.initial_scale,
            "scale_trainable": self.scale_trainable,
        }


@keras.saving.register_keras_serializable(package=_PKG)
class PiTanh(keras.layers.Layer):
    """Phase activation ``π·tanh(x)`` (radians in ``(−π, π)``)."""

    def call(self, x):
        return math.pi * tf.tanh(x)


@keras.saving.register_keras_serializable(package=_PKG)
class PatternsToBatch(keras.layers.Layer):
    """``(B, N, N, C)`` → ``(B·C, N, N, 1)``: each pattern of a group as its own sample
    (sample-major, as torch's ``reshape(B·C, 1, N, N)``), for the ``'fourier'`` lift."""

    def call(self, x):
        n = int(x.shape[1])
        return tf.reshape(tf.transpose(x, (0, 3, 1, 2)), (-1, n, n, 1))


@keras.saving.register_keras_serializable(package=_PKG)
class FourierLift(keras.layers.Layer):
    """The ``'fourier'`` generator's lift to real space (``specs/model.md``).

    Input ``(B·C, N, N, 2m)`` float32 (:class:`PatternsToBatch` order): ``m`` complex
    diffraction-space channels per pattern (real parts, then imaginary parts, DC at
    ``(N/2, N/2)``). Output ``(B, N, N, 2m·C)`` float32: per pattern, the real parts then the
    imaginary parts of ``N·ifft2(ifftshift(·))`` of each channel.
    """

    def __init__(self, patterns: int, **kwargs):
        super().__init__(**kwargs)
        self.patterns = int(patterns)

    def call(self, f):
        n = int(f.shape[1])
        m = int(f.shape[-1]) // 2
        f = tf.cast(f, tf.float32)  # a mixed-precision policy gives bfloat16; the FFT needs float32
        f = tf.transpose(f, (0, 3, 1, 2))  # channels first: ifft2d acts on the last two axes
        z = tf.complex(f[:, :m], f[:, m:])
        r = tf.signal.ifft2d(tf.signal.ifftshift(z, axes=(-2, -1))) * tf.complex(float(n), 0.0)
        out = tf.reshape(
            tf.concat([tf.math.real(r), tf.math.imag(r)], axis=1), (-1, self.patterns * 2 * m, n, n)
        )
        return tf.transpose(out, (0, 2, 3, 1))

    def get_config(self):
        return {**super().get_config(), "patterns": self.patterns}


@keras.saving.register_keras_serializable(package=_PKG)
class BorderCombine(keras.layers.Layer):
    """``x = padded_head + (1 − centre_mask) · border`` (ADR-002, ``probe_big``).

    Inputs ``(B, N, N, C_out)`` float32 each; the centre mask is the ``N/2`` square ``[N/4, 3N/4)``.
    """

    def call(self, padded, border):
        n = int(padded.shape[1])
        outside = 1.0 - physics.center_mask(n, dtype=padded.dtype)[None, :, :, None]
        return padded + outside * border


@keras.saving.register_keras_serializable(package=_PKG)
class ComplexFromPolar(keras.layers.Layer):
    """``(amplitude, phase) (B, N, N, C) float32 → A·exp(iφ)`` complex64."""

    def call(self, amp, phase):
        return tf.complex(amp * tf.cos(phase), amp * tf.sin(phase))

    def compute_output_spec(self, amp, phase):
        return keras.KerasTensor(amp.shape, dtype="complex64")


def _merge_weight_map(mode: str, patches, weight, layer: str):
    """The weight map :func:`physics.object_big_merge_cl` takes for a merge ``mode``
    (:attr:`ObjectMerge.WEIGHTS`): the given map (``'probe'``), ones (``'uniform'``) or None
    (``'centre'``, the centre square)."""
    if mode == "probe":
        if weight is None:
            raise ValueError(f"{layer}(weights='probe') needs the (N, N) weight map")
        return weight
    if mode == "uniform":
        return tf.ones(patches.shape[1:3], tf.float32)
    return None


@keras.saving.register_keras_serializable(package=_PKG)
class ObjectMerge(keras.layers.Layer):
    """``object_big`` per-sample merge and re-extraction (:func:`physics.object_big_merge_cl`).

    Inputs: patches ``(B, N, N, C)`` complex64, offsets ``(B, C, 2)`` float32 pixels, and for
    ``weights='probe'`` the weight map ``(N, N)`` float32 (:meth:`ForwardModel.call` with
    ``merge_weight=True``). ``weights``: ``'probe'`` (the given map), ``'centre'`` (the centre
    ``N/2`` square) or ``'uniform'`` (every pixel 1: a supervised model, which has no
    illumination, with ``merge_weights='probe'``); ``specs/model.md``.
    """

    WEIGHTS = ("probe", "centre", "uniform")

    def __init__(self, weights: str = "centre", **kwargs):
        super().__init__(**kwargs)
        if weights not in self.WEIGHTS:
            raise ValueError(f"weights={weights!r} is not one of {self.WEIGHTS}")
        self.weights_mode = weights

    def call(self, patches, offsets, weight=None):
        w = _merge_weight_map(self.weights_mode, patches, weight, "ObjectMerge")
        return physics.object_big_merge_cl(patches, offsets, w)

    def compute_output_spec(self, patches, offsets, weight=None):
        return keras.KerasTensor(patches.shape, dtype="complex64")

    def get_config(self):
        return {**super().get_config(), "weights": self.weights_mode}


@keras.saving.register_keras_serializable(package=_PKG)
class DataProjection(keras.layers.Layer):
    """One data projection of a physics stage (:func:`physics.data_projection_cl`,
    ``specs/model.md``). Inputs: patches ``(B, N, N, C)`` complex64, the measured amplitude
    ``(B, N, N, C)`` float32 in normalised units (``x / s``), the illumination ``(N, N)``
    complex64 (:meth:`ForwardModel.call` with ``illumination=True``). Output like the patches."""

    def __init__(self, regularization: float, softening: float, **kwargs):
        super().__init__(**kwargs)
        self.regularization = float(regularization)
        self.softening = float(softening)

    def call(self, patches, amplitude, illumination):
        return physics.data_projection_cl(
            patches, amplitude, illumination, self.regularization, self.softening
        )

    def compute_output_spec(self, patches, amplitude, illumination):
        return keras.KerasTensor(patches.shape, dtype="complex64")

    def get_config(self):
        return {
            **super().get_config(),
            "regularization": self.regularization,
            "softening": self.softening,
        }


@keras.saving.register_keras_serializable(package=_PKG)
class ProjectionRun(keras.layers.Layer):
    """``steps`` data projections of a physics stage, each followed by the ``object_big``
    merge (what :class:`DataProjection` then :class:`ObjectMerge` do), as one graph loop
    (``tf.while_loop``): the inference model's longer runs (``specs/model.md``) trace and
    optimise in the time of one step, where unrolled layers grew the graph with the count.
    Inputs: patches, the measured amplitude and the illumination as for
    :class:`DataProjection`, the offsets and (``weights='probe'``) the weight map as for
    :class:`ObjectMerge`."""

    def __init__(
        self,
        steps: int,
        regularization: float,
        softening: float,
        weights: str = "centre",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(steps) < 1:
            raise ValueError(f"steps={steps!r} must be >= 1")
        if weights not in ObjectMerge.WEIGHTS:
            raise ValueError(f"weights={weights!r} is not one of {ObjectMerge.WEIGHTS}")
        self.steps = int(steps)
        self.regularization = float(regularization)
        self.softening = float(softening)
        self.weights_mode = weights

    def call(self, patches, amplitude, illumination, offsets, weight=None):
        w = _merge_weight_map(self.weights_mode, patches, weight, "ProjectionRun")

        def step(i, obj):
            obj = physics.data_projection_cl(
                obj, amplitude, illumination, self.regularization, self.softening
            )
            return i + 1, physics.object_big_merge_cl(obj, offsets, w)

        _, out = tf.while_loop(lambda i, _: i < self.steps, step, (tf.constant(0), patches))
        return out

    def compute_output_spec(self, patches, amplitude, illumination, offsets, weight=None):
        return keras.KerasTensor(patches.shape, dtype="complex64")

    def get_config(self):
        return {
            **super().get_config(),
            "steps": self.steps,
            "regularization": self.regularization,
            "softening": self.softening,
            "weights": self.weights_mode,
        }


@keras.saving.register_keras_serializable(package=_PKG)
class StageFeatures(keras.layers.Layer):
    """The input of a physics stage's correction: projected and incoming patches
    ``(B, N, N, C)`` complex64 → ``(B, N, N, 4C)`` float32 (projected real, imaginary parts,
    then incoming real, imaginary parts; torch's channel order)."""

    def call(self, projected, before):
        parts = [tf.math.real(projected), tf.math.imag(projected)]
        return tf.concat(parts + [tf.math.real(before), tf.math.imag(before)], axis=-1)

    def compute_output_spec(self, projected, before):
        b, n, m, c = projected.shape
        return keras.KerasTensor((b, n, m, 4 * c), dtype="float32")


@keras.saving.register_keras_serializable(package=_PKG)
class StageCorrection(keras.layers.Layer):
    """``O + (d[..., :C] + i·d[..., C:])``: a physics stage's learned correction ``d``
    ``(B, N, N, 2C)`` (cast to float32) added to the patches ``(B, N, N, C)`` complex64."""

    def call(self, patches, d):
        c = int(patches.shape[-1])
        d = tf.cast(d, tf.float32)
        return patches + tf.complex(d[..., :c], d[..., c:])

    def compute_output_spec(self, patches, d):
        return keras.KerasTensor(patches.shape, dtype="complex64")


@keras.saving.register_keras_serializable(package=_PKG)
class ChannelTranslate(keras.layers.Layer):
    """``object_big=False`` with ``C > 1``: the single predicted patch ``(B, N, N, 1)`` moved to
    each channel by ``−offset_c`` (content of the group frame seen from channel ``c``).
    Output ``(B, N, N, C)`` complex64."""

    def call(self, patch, offsets):
        return physics.translate_channels_cl(patch, -tf.cast(offsets, tf.float32))

    def compute_output_spec(self, patch, offsets):
        b, n, m, _ = patch.shape
        return keras.KerasTensor((b, n, m, offsets.shape[1]), dtype="complex64")


@keras.saving.register_keras_serializable(package=_PKG)
class ForwardModel(keras.layers.Layer):
    """Far-field amplitude of object patches under the probe (``specs/physics.md``), TF layout.

    Weights ``probe_real``, ``probe_imag`` ``(N, N)`` float32 (the normalised probe ``P̃``;
    trainable only when ``probe_trainable``). Input ``(B, N, N, C)`` complex64; output
    ``(B, N, N, C)`` float32, normalised units (multiply by ``s`` for photon amplitude).

    Called with ``merge_weight=True`` it returns instead the ``object_big`` merge weight of
    ``merge_weights='probe'`` (``specs/model.md``): :func:`physics.merge_weight` of the current
    probe, ``(N, N)`` float32, with its gradient stopped (the probe is learned through the
    forward model only); with ``illumination=True`` the illumination of the physics stages'
    projections (:func:`physics.illuminate`, ``(N, N)`` complex64, gradient stopped too). The
    input then only places the call in the functional graph.
    """

    def __init__(
        self,
        N: int,
        gaussian_smoothing_sigma: float = 0.0,
        probe_mask: bool = False,
        probe_trainable: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.N = int(N)
        self.gaussian_smoothing_sigma = float(gaussian_smoothing_sigma)
        self.probe_mask = bool(probe_mask)
        self.probe_trainable = bool(probe_trainable)
        shape = (self.N, self.N)
        self.probe_real = self.add_weight(
            name="probe_real",
            shape=shape,
            dtype="float32",
            initializer="ones",
            trainable=self.probe_trainable,
        )
        self.probe_imag = self.add_weight(
            name="probe_imag",
            shape=shape,
            dtype="float32",
            initializer="zeros",
            trainable=self.probe_trainable,
        )

    def set_probe(self, probe: np.ndarray) -> None:
        """Assign the normalised probe ``(N, N)`` complex."""
        probe = np.asarray(probe)
        if probe.shape != (self.N, self.N):
            raise ValueError(f"probe shape {probe.shape} does not match N={self.N}")
        self.probe_real.assign(np.real(probe).astype(np.float32))
        self.probe_imag.assign(np.imag(probe).astype(np.float32))

    def probe(self) -> tf.Tensor:
        """The probe ``(N, N)`` complex64."""
        return tf.complex(
            tf.convert_to_tensor(self.probe_real), tf.convert_to_tensor(self.probe_imag)
        )

    def call(self, obj, merge_weight: bool = False, illumination: bool = False):
        if merge_weight:
            probe = tf.stop_gradient(self.probe())
            return physics.merge_weight(probe, self.gaussian_smoothing_sigma, self.probe_mask)
        if illumination:
            probe = tf.stop_gradient(self.probe())
            return physics.illuminate(probe, self.gaussian_smoothing_sigma, self.probe_mask)
        return physics.forward_model_cl(
            obj, self.probe(), self.gaussian_smoothing_sigma, self.probe_mask
        )

    def compute_output_spec(self, obj, merge_weight: bool = False, illumination: bool = False):
        if merge_weight:
            return keras.KerasTensor((self.N, self.N), dtype="float32")
        if illumination:
            return keras.KerasTensor((self.N, self.N), dtype="complex64")
        return keras.KerasTensor(obj.shape, dtype="float32")

    def get_config(self):
        return {
            **super().get_config(),
            "N": self.N,
            "gaussian_smoothing_sigma": self.gaussian_smoothing_sigma,
            "probe_mask": self.probe_mask,
            "probe_trainable": self.probe_trainable,
        }


@keras.saving.register_keras_serializable(package=_PKG)
class Modulus(keras.layers.Layer):
    """``|z|``: complex64 ``(B, N, N, C)`` → float32 (supervised model's amplitude output)."""

    def call(self, z):
        return tf.abs(z)

    def compute_output_spec(self, z):
        return keras.KerasTensor(z.shape, dtype="float32")


@keras.saving.register_keras_serializable(package=_PKG)
class Square(keras.layers.Layer):
    """``x²`` (amplitude → intensity, photon counts)."""

    def call(self, x):
        return tf.square(x)
