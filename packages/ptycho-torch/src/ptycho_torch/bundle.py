"""Model bundles ``wts.h5.zip`` for the PyTorch backend (``specs/data-contracts.md``).

Writing, reading and validating are :func:`ptycho_core.engine.save_bundle` /
:func:`ptycho_core.engine.load_bundle` (one rule for both backends: ``model_config`` required,
``training_config`` optional, the manifest's ``intensity_scale`` must agree with the weights).
The torch-specific part is the weight entry ``state_dict.pt`` — ``torch.save`` of a plain
``{name: tensor}`` dict with the ADR-002 names, read back with ``torch.load(weights_only=True)``
(:class:`ptycho_torch.workflows.TorchHooks`). Nothing is unpickled or executed when loading.
"""

from __future__ import annotations

from functools import partial

from ptycho_core import engine
from ptycho_core.engine import LoadedBundle
from ptycho_torch.workflows import HOOKS

__all__ = ["STATE_DICT_ENTRY", "LoadedBundle", "load_bundle", "save_bundle"]

STATE_DICT_ENTRY = HOOKS.weights_entry

#: ``save_bundle(path, model, training_config, *, normalization, extra=None) -> Path``: write a
#: :class:`~ptycho_torch.model.PtychoModel` to ``path`` (usually ``<output_dir>/wts.h5.zip``),
#: atomically.
save_bundle = partial(engine.save_bundle, HOOKS)
#: ``load_bundle(path) -> LoadedBundle``: read a PyTorch bundle (or the folder holding one) and
#: rebuild its model in eval mode; ``BundleBackendMismatchError`` for another backend's bundle,
#: ``BundleError`` for a damaged or inconsistent one.
load_bundle = partial(engine.load_bundle, HOOKS)
