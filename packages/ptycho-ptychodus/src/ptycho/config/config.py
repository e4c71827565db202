"""``ptycho.config.config``: the mutable, lenient config classes Ptychodus builds in its GUI
process and pickles to the child (``specs/ptychodus.md``).

They only *carry* Ptychodus's settings: no validation on construction (Ptychodus builds a
training config with ``N = 0`` and assigns ``model.N`` later). The child maps them to
``ptycho_core``'s validated configs (:mod:`ptycho._settings`), logging every setting that is
ignored or changed. Unknown keywords are kept in ``unknown`` (logged), not rejected, so another
Ptychodus release that passes one more setting still works.

This module imports no framework and nothing outside the standard library (Ptychodus imports it
in its GUI process).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "InferenceConfig",
    "ModelConfig",
    "TrainingConfig",
    "update_legacy_dict",
]

logger = logging.getLogger(__name__)


class _Lenient:
    """Keyword constructor for the dataclasses below: known fields set (defaults otherwise),
    unknown keywords kept in ``self.unknown`` and logged."""

    unknown: dict[str, Any]

    def __init__(self, **kwargs: Any) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name == "unknown":
                continue
            if f.name in kwargs:
                value = kwargs.pop(f.name)
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(self, f.name, value)
        if kwargs:
            logger.info("%s: keeping unknown setting(s) %s", type(self).__name__, sorted(kwargs))
        self.unknown = kwargs


@dataclass(init=False)
class ModelConfig(_Lenient):
    """Architecture settings (Ptychodus group ``PtychoPINNModel``). ``N`` in pixels; 0 means
    "the pattern size of the data" (Ptychodus's training config)."""

    N: int = 64
    gridsize: int = 1
    n_filters_scale: int = 2
    model_type: str = "pinn"
    amp_activation: str = "sigmoid"
    object_big: bool = True
    probe_big: bool = True
    probe_mask: bool = False
    pad_object: bool = True
    probe_scale: float = 4.0
    gaussian_smoothing_sigma: float = 0.0
    unknown: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(init=False)
class TrainingConfig(_Lenient):
    """Training settings (Ptychodus group ``PtychoPINNTraining``); ``nphotons`` and
    ``positions_provided`` are carried but not used (``specs/ptychodus.md``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train_data_file: Path | None = None
    test_data_file: Path | None = None
    batch_size: int = 16
    nepochs: int = 50
    mae_weight: float = 0.0
    nll_weight: float = 1.0
    realspace_mae_weight: float = 0.0
    realspace_weight: float = 0.0
    nphotons: float = 1e9
    positions_provided: bool = True
    probe_trainable: bool = False
    intensity_scale_trainable: bool = False
    output_dir: Path = Path("training_outputs")
    unknown: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(init=False)
class InferenceConfig(_Lenient):
    """Inference settings; ``model_path``, ``test_data_file`` and ``output_dir`` are not used
    (Ptychodus passes the model folder and the data directly)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    model_path: Path | None = None
    test_data_file: Path | None = None
    debug: bool = False
    output_dir: Path = Path("inference_outputs")
    unknown: dict[str, Any] = field(default_factory=dict, repr=False)


def _flat(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "unknown":
            out.update(value)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(_flat(value))
        else:
            out[f.name] = str(value) if isinstance(value, Path) else value
    return out


def update_legacy_dict(cfg: dict[str, Any], config: Any) -> None:
    """Flatten ``config`` (its nested ``model`` too) into ``cfg`` (``ptycho.params.cfg``).

    Paths become ``str``. Nothing in ptycho computes from ``cfg``: it records what Ptychodus
    asked for, for the messages of the child (``specs/ptychodus.md``).
    """
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(
            f"update_legacy_dict: expected a ptycho.config.config instance, got "
            f"{type(config).__name__}"
        )
    cfg.update(_flat(config))
