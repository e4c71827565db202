"""``PtychoPINN_Lightning``: the model handle the Ptychodus "PtychoPINN-Torch" entry names
(``specs/torch-backend.md``, "Ptychodus entry"); re-exported as
``ptycho_torch.model.PtychoPINN_Lightning``.

Ptychodus uses the name in two ways: ``load_from_checkpoint(path, **configs)`` to open the
model file it recorded (here: a ptycho PyTorch bundle under any file name), and as the class
of a new model to train, whose ``loss_name`` / ``val_loss_name`` are the metrics its loss
callback reads. The handle holds a loaded bundle or the configs of a model to build; the
network itself is :class:`ptycho_torch.model.PtychoModel`, trained by
:mod:`ptycho_torch.workflows`. Imports nothing of torch at module level (``model`` imports this
module).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ptycho_core.engine import LoadedBundle

__all__ = ["PtychoPINN_Lightning"]


class PtychoPINN_Lightning:
    """A ptycho PyTorch model as Ptychodus sees it.

    Attributes: ``loss_name`` / ``val_loss_name`` (the per-epoch metrics the Lightning module
    logs), ``configs`` (the :mod:`ptycho_torch.config_params` objects it was made with),
    ``bundle`` (a :class:`ptycho_core.engine.LoadedBundle` once loaded or trained, else None),
    ``bundle_path``.
    """

    loss_name = "train_loss"
    val_loss_name = "val_loss"

    def __init__(self, bundle: LoadedBundle | None = None, **configs: Any) -> None:
        self.configs = dict(configs)
        self.bundle = bundle
        self.bundle_path: Path | None = None if bundle is None else bundle.path

    @classmethod
    def load_from_checkpoint(
        cls, checkpoint_path: str | Path, **configs: Any
    ) -> PtychoPINN_Lightning:
        """Load the ptycho PyTorch bundle at ``checkpoint_path`` (any name; validated, nothing
        unpickled). Another backend's bundle, a Lightning/torch checkpoint (e.g. of the original
        PtychoPINN) or any other file → :class:`ptycho_core.errors.BundleError` (``ValueError``)
        saying what the file is."""
        from ptycho_torch.api._mapping import check_model_file
        from ptycho_torch.bundle import load_bundle

        check_model_file(checkpoint_path)
        return cls(load_bundle(checkpoint_path), **configs)
