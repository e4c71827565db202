"""The PtychoPINN network in PyTorch (ADR-002, ``specs/model.md``).

One plain ``nn.Module`` holds exactly the layers of ADR-002, built by iterating the one layer
table :func:`ptycho_core.architecture.conv_layers` (names and row order, amp before phase), so
``state_dict()`` keys are ``enc0_conv1.weight``, ``amp_dec0_conv1.bias``, …,
``log_intensity_scale``, ``probe_real``, ``probe_imag`` and map one-to-one onto the Keras model's
weights. Data layout is ``(B, C, N, N)``.

Two entry points:

* :meth:`PtychoModel.forward` — the *training* ("autoencoder") model: returns the complex object
  patches, the predicted amplitude ``s·A`` and the predicted intensity ``(s·A)²``.
* :meth:`PtychoModel.diffraction_to_obj` — the *inference* model: complex object patches only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ptycho_core.architecture import (
    INFERENCE_PROJECTION_STEPS,
    PROJECTION_REGULARIZATION,
    PROJECTION_SOFTENING,
    PROJECTION_STEPS,
    conv_flops_per_group,
    conv_layers,
    encoder_levels,
    scalar_weights,
)
from ptycho_core.architecture import inference_projection_steps as inference_steps
from ptycho_core.architecture import physics_stages as stage_count
from ptycho_core.config import GENERATORS, MERGE_WEIGHTS, SUPPORTED_N
from ptycho_torch import physics
from ptycho_torch._ptychodus_module import PtychoPINN_Lightning  # Ptychodus 1.7 imports it here

__all__ = ["SUPPORTED_N", "ModelOutput", "PtychoModel", "PtychoPINN_Lightning", "build_model"]

_AMP_ACTIVATIONS = ("sigmoid", "swish", "softplus", "relu")


class ModelOutput(NamedTuple):
    """Outputs of the training model (all ``(B, C, N, N)``).

    obj: complex64 object patches; amplitude: float32 predicted amplitude in photon-count units
    (``s·A``); intensity: float32 predicted counts ``amplitude²``.
    """

    obj: torch.Tensor
    amplitude: torch.Tensor
    intensity: torch.Tensor


def _amp_activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "sigmoid":
        return torch.sigmoid(x)
    if name == "swish":
        return F.silu(x)
    if name == "softplus":
        return F.softplus(x)
    if name == "relu":
        return F.relu(x)
    raise ValueError(f"amp_activation={name!r} is not one of {_AMP_ACTIVATIONS}")


def _up2(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class PtychoModel(nn.Module):
    """Encoder, amplitude and phase decoders, object_big merge and forward model.

    Parameters
    ----------
    N, gridsize, n_filters_scale, model_type, amp_activation, object_big, probe_big, pad_object,
    probe_mask, gaussian_smoothing_sigma, merge_weights, generator, physics_stages:
        As :class:`ptycho_core.config.ModelConfig`.
    probe:
        ``(N, N)`` complex, the *normalised* probe ``P̃`` (``specs/physics.md``).
    intensity_scale:
        ``s`` (> 0); stored as the weight ``log_intensity_scale``.
    probe_trainable, intensity_scale_trainable:
        Make ``probe_real``/``probe_imag`` or ``log_intensity_scale`` trainable
        (``requires_grad``); they are ``nn.Parameter`` either way so the state dict is complete.
    """

    _center: torch.Tensor  # (N, N) float32 buffer: the centre N/2 square

    def __init__(
        self,
        *,
        N: int,
        gridsize: int = 1,
        n_filters_scale: int = 2,
        model_type: str = "pinn",
        amp_activation: str = "sigmoid",
        object_big: bool = True,
        probe_big: bool = True,
        pad_object: bool = True,
        probe_mask: bool = False,
        gaussian_smoothing_sigma: float = 0.0,
        merge_weights: str = "probe",
        generator: str = "fourier",
        physics_stages: int = 3,
        inference_projection_steps: int = INFERENCE_PROJECTION_STEPS,
        probe: np.ndarray | torch.Tensor | None = None,
        intensity_scale: float = 1.0,
        probe_trainable: bool = False,
        intensity_scale_trainable: bool = False,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if amp_activation not in _AMP_ACTIVATIONS:
            raise ValueError(f"amp_activation={amp_activation!r} is not one of {_AMP_ACTIVATIONS}")
        if model_type not in ("pinn", "supervised"):
            raise ValueError(f"model_type={model_type!r} is not one of ('pinn', 'supervised')")
        if not intensity_scale > 0:
            raise ValueError(f"intensity_scale={intensity_scale!r} must be > 0")
        if merge_weights not in MERGE_WEIGHTS:
            raise ValueError(f"merge_weights={merge_weights!r} is not one of {MERGE_WEIGHTS}")
        if generator not in GENERATORS:
            raise ValueError(f"generator={generator!r} is not one of {GENERATORS}")
        self.merge_weights, self.generator = merge_weights, generator
        self.N, self.gridsize, self.C = int(N), int(gridsize), int(gridsize) ** 2
        self.model_type, self.amp_activation = model_type, amp_activation
        self.object_big, self.probe_big, self.pad_object = (
            bool(object_big),
            bool(probe_big),
            bool(pad_object),
        )
        self.probe_mask, self.gaussian_smoothing_sigma = (
            bool(probe_mask),
            float(gaussian_smoothing_sigma),
        )
        self.n_filters_scale = n_filters_scale
        self.levels = encoder_levels(self.N)
        self.physics_stages = int(physics_stages)
        self.n_stages = stage_count(self)  # 0 unless overlap-constrained (specs/model.md)
        self.inference_projection_steps = int(inference_projection_steps)
        inference_steps(self)  # validated: >= 1
        # The convs of ptycho_core.architecture's table, registered in its order (specs/model.md).
        self.layers = conv_layers(self)
        for layer in self.layers:
            conv = nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=1)
            self.add_module(layer.name, conv)
        self.log_intensity_scale = nn.Parameter(
            torch.tensor(math.log(float(intensity_scale)), dtype=torch.float32),
            requires_grad=bool(intensity_scale_trainable),
        )
        if probe is None:
            probe = np.ones((self.N, self.N), np.complex64)
        probe_t = torch.as_tensor(np.asarray(probe, dtype=np.complex64))
        if tuple(probe_t.shape) != (self.N, self.N):
            raise ValueError(f"probe shape {tuple(probe_t.shape)} does not match N={self.N}")
        self.probe_real = nn.Parameter(
            probe_t.real.clone().float(), requires_grad=bool(probe_trainable)
        )
        self.probe_imag = nn.Parameter(
            probe_t.imag.clone().float(), requires_grad=bool(probe_trainable)
        )
        self.register_buffer("_center", physics.center_mask(self.N), persistent=False)
        # NHWC convolutions are markedly faster with oneDNN on CPU (and neutral-to-better on GPU);
        # the memory format never shows in the state dict (bundles store contiguous tensors).
        self.channels_last = bool(channels_last)
        if self.channels_last:
            for layer in self.layers:
                for param in self.get_submodule(layer.name).parameters():
                    if param.dim() == 4:
                        param.data = param.data.contiguous(memory_format=torch.channels_last)

    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """The state dict in the order of :func:`ptycho_core.architecture.conv_layers` (weight,
        bias per conv), then :func:`ptycho_core.architecture.scalar_weights`
        (``log_intensity_scale``, ``probe_real``, ``probe_imag``); torch alone would list own
        parameters before submodules."""
        sd = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for name, _ in scalar_weights(self):
            key = prefix + name
            if key in sd:
                sd.move_to_end(key)
        return sd

    # -- canonical weights (ptycho_core.convert) ----------------------------------------------
    def weight_arrays(self) -> dict[str, np.ndarray]:
        """Every weight as ``{ADR-002 name: float32 NumPy array}`` in state-dict order: the
        canonical layout of :mod:`ptycho_core.convert` (copies, on the CPU)."""
        return {
            k: v.detach().cpu().contiguous().numpy().copy() for k, v in self.state_dict().items()
        }

    def load_weight_arrays(self, arrays: Mapping[str, np.ndarray], where: object) -> None:
        """Assign every weight from canonical arrays (:meth:`weight_arrays`' names and shapes),
        strictly: any missing, unexpected or differently shaped array is a
        :class:`~ptycho_core.errors.BundleError` naming ``where``; nothing is assigned then."""
        from ptycho_core.engine import state_mismatch, weights_mismatch_error

        expected = self.state_dict()
        mismatch = state_mismatch(expected, {k: np.asarray(v) for k, v in arrays.items()})
        if mismatch:
            raise weights_mismatch_error(where, mismatch)
        state = {k: torch.from_numpy(np.array(arrays[k], np.float32)) for k in expected}
        self.load_state_dict(state, strict=True)

    # -- pieces -------------------------------------------------------------------------------
    @property
    def intensity_scale(self) -> torch.Tensor:
        """``s`` as a 0-d float32 tensor."""
        return torch.exp(self.log_intensity_scale)

    @property
    def probe(self) -> torch.Tensor:
        """The normalised probe ``(N, N)`` complex64."""
        return torch.complex(self.probe_real, self.probe_imag)

    def merge_weight(self) -> torch.Tensor:
        """The ``object_big`` merge weight ``(N, N)`` float32 (``specs/model.md``).

        ``'centre'``: the centre ``N/2`` square. ``'probe'``: the intensity of the current
        illumination normalised to peak 1, from the *detached* probe (the probe is learned
        through the forward model only); a supervised model has no illumination and weights
        every pixel 1.
        """
        if self.merge_weights == "centre":
            return self._center
        if self.model_type == "supervised":
            return torch.ones_like(self._center)
        return physics.merge_weight(
            self.probe.detach(), self.gaussian_smoothing_sigma, self.probe_mask
        )

    def _conv_relu(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.get_submodule(name)(x))

    def lift(self, x: torch.Tensor) -> torch.Tensor:
        """The ``'fourier'`` generator's lift (``specs/model.md``): ``(B, C, N, N)`` normalised
        diffraction → ``(B, 2m·C, N, N)`` real-space features (``m = 4k``,
        :func:`ptycho_core.architecture.fourier_channels`).

        Each pattern of the group goes alone through the same two convolutions, which give
        ``m`` complex diffraction-space channels (real parts, then imaginary parts); each is
        taken to real space by ``N·ifft2(ifftshift(·))`` — the inverse of the forward model's
        ``|fftshift(fft2(ψ))| / N`` with the phases the network chose. Output channels:
        pattern by pattern, real parts then imaginary parts.
        """
        b, c, n, _ = x.shape
        f = x.reshape(b * c, 1, n, n)
        f = self.get_submodule("fourier_conv2")(self._conv_relu("fourier_conv1", f))
        f = f.float()  # under bf16 autocast the convs give bfloat16; the FFT needs float32
        m = f.shape[1] // 2
        z = torch.complex(f[:, :m].contiguous(), f[:, m:].contiguous())
        r = torch.fft.ifft2(torch.fft.ifftshift(z, dim=(-2, -1))) * self.N
        out = torch.cat([r.real, r.imag], 1).reshape(b, c * 2 * m, n, n)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def encode(self, x: torch.Tensor) -> Any:
        """``(B, C, N, N)`` normalised diffraction → the ``'cnn'`` generator's
        ``(B, f_{L−1}, 8, 8)`` bottleneck, or the ``'fourier'`` generator's list of
        encoder features ``[(B, w·2^i, N/2^i, N/2^i) for i = 0..L]`` (skips, then bottleneck)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.generator == "fourier":
            h = self.lift(x)
            feats = []
            for i in range(self.levels + 1):
                if i:
                    h = F.max_pool2d(h, 2)
                h = self._conv_relu(f"enc{i}_conv2", self._conv_relu(f"enc{i}_conv1", h))
                feats.append(h)
            return feats
        for i in range(self.levels):
            x = self._conv_relu(f"enc{i}_conv1", x)
            x = self._conv_relu(f"enc{i}_conv2", x)
            x = F.max_pool2d(x, 2)
        return x

    def _decode(self, branch: str, z: Any) -> torch.Tensor:
        """Bottleneck (or the ``'fourier'`` encoder's features) → ``(B, C_out, N, N)``
        activated amplitude or phase."""
        act = (
            (lambda t: _amp_activation(self.amp_activation, t))
            if branch == "amp"
            else (lambda t: math.pi * torch.tanh(t))
        )
        if self.generator == "fourier":
            h = z[-1]
            for i in reversed(range(self.levels)):
                h = torch.cat([_up2(h), z[i]], 1)
                h = self._conv_relu(f"{branch}_dec{i}_conv1", h)
                h = self._conv_relu(f"{branch}_dec{i}_conv2", h)
            return act(self.get_submodule(f"{branch}_head")(h)).contiguous()
        x = z
        for j in range(self.levels - 1):
            x = self._conv_relu(f"{branch}_dec{j}_conv1", x)
            x = self._conv_relu(f"{branch}_dec{j}_conv2", x)
            x = _up2(x)
        if not self.pad_object:  # one more upsampling block to N×N, then the head
            x = self._conv_relu(f"{branch}_up_conv1", x)
            x = _up2(self._conv_relu(f"{branch}_up_conv2", x))
            return act(self.get_submodule(f"{branch}_head")(x)).contiguous()
        q = self.N // 4
        out = F.pad(act(self.get_submodule(f"{branch}_head")(x)), (q, q, q, q))
        if self.probe_big:
            border_act = F.silu if branch == "amp" else (lambda t: math.pi * torch.tanh(t))
            b = self._conv_relu(f"{branch}_border_conv1", x)
            b = _up2(self._conv_relu(f"{branch}_border_conv2", b))
            b = border_act(self.get_submodule(f"{branch}_border_head")(b))
            out = out + (1.0 - self._center) * b
        return out.contiguous()

    def diffraction_to_obj(
        self,
        x_scaled: torch.Tensor,
        offsets: torch.Tensor | None = None,
        projection_steps: int | None = None,
    ) -> torch.Tensor:
        """The inference model: ``s·X (B, C, N, N)`` float32 → complex64 object patches
        ``(B, C, N, N)``.

        projection_steps: data projections per physics stage (default
        ``inference_projection_steps``; :meth:`forward`, the training model, passes
        :data:`PROJECTION_STEPS`).

        offsets: ``(B, C, 2)`` ``(dx, dy)`` pixels of each channel from the group centre (needed
        when ``C > 1``). With ``object_big`` the ``C`` predicted patches are merged per sample
        (weights :meth:`merge_weight`) and re-extracted; without it the single predicted patch
        is translated to each channel.
        """
        if (
            x_scaled.ndim != 4
            or x_scaled.shape[1] != self.C
            or tuple(x_scaled.shape[-2:]) != (self.N, self.N)
        ):
            raise ValueError(
                f"expected input (B, {self.C}, {self.N}, {self.N}), got {tuple(x_scaled.shape)}"
            )
        x = x_scaled / self.intensity_scale
        z = self.encode(x)
        # float32 from here on: under bf16 autocast the heads give bfloat16, which neither
        # torch.complex nor the FFTs of the merge and the forward model take
        amp = self._decode("amp", z).float()
        phase = self._decode("phase", z).float()
        # not torch.polar: its backward takes the amplitude to be >= 0 (it differentiates
        # through sgn(result)), and the swish border branch of probe_big gives negative
        # amplitudes, whose gradient then had the wrong sign (found by the parity tests).
        obj = torch.complex(amp * torch.cos(phase), amp * torch.sin(phase))
        if self.C == 1:
            return obj
        if offsets is None:
            raise ValueError("offsets (B, C, 2) are required when gridsize > 1")
        offsets = offsets.to(device=obj.device, dtype=amp.dtype)
        if not self.object_big:
            return physics.translate(obj.expand(-1, self.C, -1, -1), -offsets)
        weight = self.merge_weight()
        obj = physics.object_big_merge(obj, offsets, weight)
        if self.n_stages:
            # the probe is learned through the forward model only, as for the merge weight
            illum = physics.illuminate(
                self.probe.detach(), self.gaussian_smoothing_sigma, self.probe_mask
            )
            amplitude = x.float()
            steps = (
                self.inference_projection_steps if projection_steps is None else projection_steps
            )
            for s in range(self.n_stages):
                obj = self._physics_stage(s, obj, amplitude, illum, offsets, weight, steps)
        return obj

    def _physics_stage(
        self,
        s: int,
        obj: torch.Tensor,
        amplitude: torch.Tensor,
        illum: torch.Tensor,
        offsets: torch.Tensor,
        weight: torch.Tensor,
        steps: int,
    ) -> torch.Tensor:
        """Physics stage ``s`` (``specs/model.md``): ``steps`` data projections of the merged
        group against ``amplitude`` under ``illum``, each merged again, then the
        learned correction from the projected and the incoming object, merged. ``(B, C, N, N)``
        complex → the same."""
        before = obj
        for _ in range(steps):
            obj = physics.data_projection(
                obj, amplitude, illum, PROJECTION_REGULARIZATION, PROJECTION_SOFTENING
            )
            obj = physics.object_big_merge(obj, offsets, weight)
        h = torch.cat([obj.real, obj.imag, before.real, before.imag], 1)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        h = self._conv_relu(f"stage{s}_conv2", self._conv_relu(f"stage{s}_conv1", h))
        d = self.get_submodule(f"stage{s}_head")(h).float()
        c = self.C
        correction = torch.complex(d[:, :c].contiguous(), d[:, c:].contiguous())
        return physics.object_big_merge(obj + correction, offsets, weight)

    def forward(self, x_scaled: torch.Tensor, offsets: torch.Tensor | None = None) -> ModelOutput:
        """The training model: object patches, predicted amplitude ``s·A`` and intensity ``(s·A)²``.

        For ``model_type='supervised'`` amplitude and intensity are those of the object patch
        itself (no forward model); the loss compares the patch with ground truth.
        """
        obj = self.diffraction_to_obj(x_scaled, offsets, PROJECTION_STEPS)
        if self.model_type == "supervised":
            amp = obj.abs()
            return ModelOutput(obj, amp, amp * amp)
        amp = physics.forward_model(obj, self.probe, self.gaussian_smoothing_sigma, self.probe_mask)
        amp = amp * self.intensity_scale
        return ModelOutput(obj, amp, amp * amp)

    def conv_flops_per_pattern(self) -> int:
        """Forward FLOPs (2 per multiply-add) of all convs for one group
        (:func:`ptycho_core.architecture.conv_flops_per_group`)."""
        return conv_flops_per_group(self)


def build_model(
    model_config: Any,
    *,
    probe: np.ndarray | None,
    intensity_scale: float,
    probe_trainable: bool = False,
    intensity_scale_trainable: bool = False,
    channels_last: bool = True,
) -> PtychoModel:
    """Build a :class:`PtychoModel` from a :class:`ptycho_core.config.ModelConfig`."""
    mc = model_config
    return PtychoModel(
        N=mc.N,
        gridsize=mc.gridsize,
        n_filters_scale=mc.n_filters_scale,
        model_type=mc.model_type,
        amp_activation=mc.amp_activation,
        object_big=mc.object_big,
        probe_big=mc.probe_big,
        pad_object=mc.pad_object,
        probe_mask=mc.probe_mask,
        gaussian_smoothing_sigma=mc.gaussian_smoothing_sigma,
        merge_weights=mc.merge_weights,
        generator=mc.generator,
        physics_stages=mc.physics_stages,
        inference_projection_steps=inference_steps(mc),
        probe=probe,
        intensity_scale=intensity_scale,
        probe_trainable=probe_trainable,
        intensity_scale_trainable=intensity_scale_trainable,
        channels_last=channels_last,
    )
