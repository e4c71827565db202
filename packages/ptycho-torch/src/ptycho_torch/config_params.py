"""Config holders of the Ptychodus "PtychoPINN-Torch" entry (``specs/torch-backend.md``,
"Ptychodus entry").

Ptychodus 1.7 builds these five classes in its GUI process from its own settings (about 90
keywords, named after the original PtychoPINN's configs), pickles them to a spawned child, and
the child hands them to :mod:`ptycho_torch.api.base_api`, which maps them onto
``ptycho_core`` configs. So they are deliberately *lenient*: keyword-only, every keyword is kept
as an attribute (unknown ones too; nothing is validated here), attributes stay assignable
(Ptychodus reassigns ``training_config.n_devices``), and the classes live at module level so they
pickle. Validation happens once, in the mapping, with ``ptycho_core``'s rules.

This module imports no framework (Ptychodus imports it in its GUI process).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["DataConfig", "DatagenConfig", "InferenceConfig", "ModelConfig", "TrainingConfig"]


class _Lenient:
    """Keyword-only attribute bag with class defaults (:attr:`DEFAULTS`)."""

    #: Defaults of the keywords the mapping reads; any other keyword is stored as given.
    DEFAULTS: ClassVar[dict[str, Any]] = {}

    def __init__(self, **kwargs: Any) -> None:
        for key, value in {**self.DEFAULTS, **kwargs}.items():
            setattr(self, key, value)

    def to_dict(self) -> dict[str, Any]:
        """Every attribute, as given (a shallow copy)."""
        return dict(vars(self))

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()))
        return f"{type(self).__name__}({items})"


class DataConfig(_Lenient):
    """Data settings: ``N`` (pattern size in pixels; the data decide), ``C`` (patterns per
    group, a square), ``K`` (neighbours searched per group), ``probe_scale``, ``grid_size``
    ``(rows, cols)``."""

    DEFAULTS: ClassVar[dict[str, Any]] = {
        "N": None,
        "C": 1,
        "K": 6,
        "grid_size": (1, 1),
        "probe_scale": 4.0,
    }


class ModelConfig(_Lenient):
    """Model settings: ``mode`` (``'Unsupervised'`` → physics-informed, ``'Supervised'``),
    ``amp_activation``, ``object_big``, ``probe_big``, ``n_filters_scale``, ``probe_mask``,
    ``loss_function`` (``'Poisson'`` or ``'MAE'``), ``intensity_scale_trainable``."""

    DEFAULTS: ClassVar[dict[str, Any]] = {
        "mode": "Unsupervised",
        "amp_activation": "sigmoid",
        "object_big": True,
        "probe_big": True,
        "n_filters_scale": 2,
        "probe_mask": None,
        "loss_function": "Poisson",
        "intensity_scale_trainable": False,
    }


class TrainingConfig(_Lenient):
    """Training settings: ``epochs``, ``batch_size``, ``learning_rate``, ``device``
    (``'cuda'``/``'cpu'``/``'mps'``), ``n_devices``, ``strategy``, ``num_workers``,
    ``accum_steps``, ``gradient_clip_val`` (None: off), ``scheduler``."""

    DEFAULTS: ClassVar[dict[str, Any]] = {
        "epochs": 50,
        "batch_size": 16,
        "learning_rate": 1e-3,
        "device": "cpu",
        "n_devices": 1,
        "strategy": "auto",
        "num_workers": 0,
        "accum_steps": 1,
        "gradient_clip_val": None,
        "scheduler": "Default",
    }


class InferenceConfig(_Lenient):
    """Inference settings: ``batch_size`` (groups per prediction chunk)."""

    DEFAULTS: ClassVar[dict[str, Any]] = {"batch_size": 64}


class DatagenConfig(_Lenient):
    """Simulation settings of the original PtychoPINN; accepted and unused."""
