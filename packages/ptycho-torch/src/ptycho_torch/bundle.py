"""Model bundles ``wts.h5.zip`` for the PyTorch backend (``specs/data-contracts.md``), via
:mod:`ptycho_core.bundle`.

Archive entries: ``manifest.json`` (backend ``pytorch``), ``probe.npy`` (the normalised probe the
model holds, complex64 ``(N, N)``) and ``state_dict.pt`` — ``torch.save`` of a plain
``{name: tensor}`` dict with the ADR-002 names, read back with ``torch.load(weights_only=True)``.
Nothing is unpickled or executed when loading.
"""

from __future__ import annotations

import io
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptycho_core import bundle as core_bundle
from ptycho_core.config import ModelConfig, TrainingConfig
from ptycho_core.errors import BundleError
from ptycho_torch.model import PtychoModel, build_model

__all__ = [
    "NAME",
    "STATE_DICT_ENTRY",
    "state_dict_bytes",
    "save_bundle",
    "load_bundle",
    "LoadedBundle",
]

log = logging.getLogger(__name__)

NAME = "pytorch"
STATE_DICT_ENTRY = "state_dict.pt"
PROBE_ENTRY = "probe.npy"
MODEL_NAMES = ["autoencoder", "diffraction_to_obj"]


def state_dict_bytes(model: torch.nn.Module) -> bytes:
    """``torch.save`` of ``{name: cpu tensor}`` (no module objects, nothing else pickled)."""
    plain = OrderedDict(
        (k, v.detach().cpu().contiguous().clone()) for k, v in model.state_dict().items()
    )
    buf = io.BytesIO()
    torch.save(plain, buf)
    return buf.getvalue()


def save_bundle(
    path: str | Path,
    model: PtychoModel,
    training_config: TrainingConfig,
    *,
    normalization: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` (usually ``<output_dir>/wts.h5.zip``) atomically.

    normalization: JSON-safe facts (``norm_factor`` α, ``nphotons``, …) stored in the manifest.
    The manifest's intensity scale is the model's current ``s`` (trained when trainable).
    """
    s = float(model.intensity_scale.detach().cpu())
    manifest = core_bundle.make_manifest(
        NAME,
        training_config.model,
        training_config,
        s,
        dict(normalization),
        list(MODEL_NAMES),
        extra=extra,
    )
    probe = model.probe.detach().cpu().numpy().astype(np.complex64)
    files = {PROBE_ENTRY: core_bundle.npy_bytes(probe), STATE_DICT_ENTRY: state_dict_bytes(model)}
    path = Path(path)
    core_bundle.write_bundle(path, manifest, files)
    log.info("wrote bundle %s", path)
    return path


class LoadedBundle:
    """A loaded bundle: ``model`` (eval mode), ``manifest`` dict, ``model_config``,
    ``training_config`` and ``intensity_scale``."""

    def __init__(
        self,
        model: PtychoModel,
        manifest: dict[str, Any],
        model_config: ModelConfig,
        training_config: TrainingConfig | None,
        intensity_scale: float,
    ) -> None:
        self.model, self.manifest = model, manifest
        self.model_config, self.training_config = model_config, training_config
        self.intensity_scale = intensity_scale


def _manifest_configs(manifest: dict[str, Any]) -> tuple[ModelConfig, TrainingConfig | None]:
    tc = manifest.get("training_config")
    mc = manifest.get("model_config")
    training = TrainingConfig.from_dict(tc) if isinstance(tc, dict) else None
    if isinstance(mc, dict):
        model = ModelConfig.from_dict(mc)
    elif training is not None:
        model = training.model
    else:
        raise BundleError("bundle manifest has no model configuration")
    return model, training


def load_bundle(path: str | Path, *, map_location: str | torch.device = "cpu") -> LoadedBundle:
    """Read a PyTorch bundle and rebuild its model.

    Raises :class:`ptycho_core.errors.BundleBackendMismatchError` for a bundle of another backend
    and :class:`ptycho_core.errors.BundleError` for a damaged one (missing entry, bad tensors,
    weights that do not fit the architecture in the manifest).
    """
    path = core_bundle.bundle_file(path)  # the archive, or the folder holding it
    bundle = core_bundle.read_bundle(path, expected_backend=NAME)
    manifest = bundle.manifest
    model_config, training_config = _manifest_configs(manifest)
    for entry in (STATE_DICT_ENTRY, PROBE_ENTRY):
        if entry not in bundle.files:
            raise BundleError(f"{path}: bundle has no {entry!r} entry")
    try:
        state = torch.load(
            io.BytesIO(bundle.files[STATE_DICT_ENTRY]), map_location=map_location, weights_only=True
        )
    except Exception as exc:  # any unpickling refusal or corruption is a bundle error
        raise BundleError(
            f"{path}: {STATE_DICT_ENTRY} cannot be read as a tensor dict ({exc})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"{path}: {STATE_DICT_ENTRY} is not a plain dict of tensors")
    probe = core_bundle.load_npy_bytes(bundle.files[PROBE_ENTRY])
    s_key = "log_intensity_scale"
    s = (
        float(torch.exp(state[s_key]))
        if s_key in state
        else float(manifest.get("intensity_scale", 1.0))
    )
    tc = training_config
    model = build_model(
        model_config,
        probe=probe,
        intensity_scale=s,
        probe_trainable=bool(tc.probe_trainable) if tc else False,
        intensity_scale_trainable=bool(tc.intensity_scale_trainable) if tc else False,
    )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(
            f"{path}: weights do not match the architecture in the manifest ({exc})"
        ) from exc
    model.eval()
    return LoadedBundle(model, manifest, model_config, training_config, s)
