"""Ptychodus's PtychoPINN settings → ``ptycho_core`` configs (``specs/ptychodus.md``).

One logged line per setting that is ignored or changed. Framework-free.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ptycho_core.config import ModelConfig, TrainingConfig
from ptycho_core.io import ScanData

__all__ = ["ARCHITECTURE_KEYS", "log_inference_settings", "model_config", "training_config"]

logger = logging.getLogger(__name__)

#: Model settings mapped 1:1 (Ptychodus name = ptycho name).
ARCHITECTURE_KEYS: tuple[str, ...] = (
    "gridsize",
    "n_filters_scale",
    "model_type",
    "amp_activation",
    "object_big",
    "probe_big",
    "probe_mask",
    "pad_object",
    "probe_scale",
    "gaussian_smoothing_sigma",
)
#: Ptychodus activation names that ptycho spells differently.
_ACTIVATIONS = {"silu": "swish"}
#: The neighbour count of training when the gridsize does not need more (ptycho's default).
_TRAIN_NEIGHBORS = TrainingConfig().neighbor_count


def _activation(name: Any) -> Any:
    key = str(name).lower()
    if key in _ACTIVATIONS:
        logger.info(
            "Ptychodus AmpActivation %r → ptycho amp_activation %r", name, _ACTIVATIONS[key]
        )
        return _ACTIVATIONS[key]
    return name


def model_config(legacy: Any, n: int) -> ModelConfig:
    """A validated :class:`ModelConfig` from Ptychodus's model settings (``legacy``, a
    ``ptycho.config.config.ModelConfig``) with ``N = n``, the data's pattern size."""
    given = int(getattr(legacy, "N", 0) or 0)
    if given not in (0, n):
        logger.warning("Ptychodus model N = %d ignored: the patterns are %d × %d", given, n, n)
    values = {k: getattr(legacy, k) for k in ARCHITECTURE_KEYS if hasattr(legacy, k)}
    values["model_type"] = str(values.get("model_type", "pinn")).lower()
    if "amp_activation" in values:
        values["amp_activation"] = _activation(values["amp_activation"])
    return ModelConfig(N=n, **values)


def training_config(legacy: Any, train: ScanData, output_dir: Path) -> TrainingConfig:
    """A validated ``tensorflow`` :class:`TrainingConfig` from Ptychodus's training settings
    (``legacy``, a ``ptycho.config.config.TrainingConfig``) for the scan ``train``.

    Mapped 1:1: ``batch_size``, ``nepochs``, ``nll_weight``, ``mae_weight``,
    ``realspace_weight``, ``probe_trainable``, ``intensity_scale_trainable`` and the model
    settings. Ignored (logged): ``nphotons`` (estimated from the counts), ``positions_provided``
    (positions are always used), ``realspace_mae_weight`` when non-zero, the data file paths
    (the data arrive as arrays), unknown settings.
    """
    model = model_config(legacy.model, train.N)
    nphotons = getattr(legacy, "nphotons", None)
    if nphotons is not None:
        logger.info(
            "Ptychodus NumPhotons = %g ignored: ptycho estimates the photon count from the counts",
            float(nphotons),
        )
    if not getattr(legacy, "positions_provided", True):
        logger.info("Ptychodus PositionsProvided = False ignored: ptycho always uses positions")
    rs_mae = float(getattr(legacy, "realspace_mae_weight", 0.0) or 0.0)
    if rs_mae:
        logger.warning(
            "Ptychodus RealspaceMAEWeight = %g ignored: ptycho has no such loss term", rs_mae
        )
    for name in ("train_data_file", "test_data_file"):
        if getattr(legacy, name, None) not in (None, Path(), Path(".")):
            logger.info("TrainingConfig.%s ignored: the data are passed as RawData", name)
    for key in sorted(getattr(legacy, "unknown", {}) or {}):
        logger.info("Ptychodus training setting %r ignored: no ptycho equivalent", key)
    neighbors = max(_TRAIN_NEIGHBORS, model.C - 1)
    return TrainingConfig(
        model=model,
        batch_size=int(legacy.batch_size),
        nepochs=int(legacy.nepochs),
        nll_weight=float(legacy.nll_weight),
        mae_weight=float(legacy.mae_weight),
        realspace_weight=float(legacy.realspace_weight),
        probe_trainable=bool(legacy.probe_trainable),
        intensity_scale_trainable=bool(legacy.intensity_scale_trainable),
        neighbor_count=neighbors,
        output_dir=output_dir,
        backend="tensorflow",
    )


def log_inference_settings(cfg: dict[str, Any], bundle_model: ModelConfig, where: object) -> None:
    """One line per Ptychodus model setting in ``cfg`` that differs from the bundle's
    architecture: at inference the bundle decides (its value is used)."""
    wanted = dict(cfg)
    if "amp_activation" in wanted:
        wanted["amp_activation"] = _ACTIVATIONS.get(
            str(wanted["amp_activation"]).lower(), wanted["amp_activation"]
        )
    if "model_type" in wanted:
        wanted["model_type"] = str(wanted["model_type"]).lower()
    for key in ARCHITECTURE_KEYS:
        if key in wanted and wanted[key] != getattr(bundle_model, key):
            logger.info(
                "Ptychodus setting %s = %r ignored: the bundle %s has %s = %r, which is used",
                key,
                cfg[key],
                where,
                key,
                getattr(bundle_model, key),
            )
