"""Model bundles ``wts.h5.zip`` for the PyTorch backend (``specs/data-contracts.md``).

Writing, reading and validating are :func:`ptycho_core.engine.save_bundle` /
:func:`ptycho_core.engine.load_bundle` (one rule for both backends: ``model_config`` required,
``training_config`` optional, the manifest's ``intensity_scale`` must agree with the weights).
The torch-specific part is the weight entry ``state_dict.pt`` — ``torch.save`` of a plain
``{name: tensor}`` dict with the ADR-002 names, read back with ``torch.load(weights_only=True)``
(:class:`ptycho_torch.workflows.TorchHooks`). Nothing is unpickled or executed when loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptycho_core import engine
from ptycho_core.config import TrainingConfig
from ptycho_core.engine import LoadedBundle
from ptycho_torch.model import PtychoModel
from ptycho_torch.workflows import HOOKS

__all__ = ["STATE_DICT_ENTRY", "LoadedBundle", "load_bundle", "save_bundle"]

STATE_DICT_ENTRY = HOOKS.weights_entry


def save_bundle(
    path: str | Path,
    model: PtychoModel,
    training_config: TrainingConfig,
    *,
    normalization: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` (usually ``<output_dir>/wts.h5.zip``) atomically
    (:func:`ptycho_core.engine.save_bundle`)."""
    return engine.save_bundle(
        HOOKS, path, model, training_config, normalization=normalization, extra=extra
    )


def load_bundle(path: str | Path) -> LoadedBundle:
    """Read a PyTorch bundle (or the folder holding one) and rebuild its model in eval mode
    (:func:`ptycho_core.engine.load_bundle`): ``BundleBackendMismatchError`` for another
    backend's bundle, ``BundleError`` for a damaged or inconsistent one."""
    return engine.load_bundle(HOOKS, path)
