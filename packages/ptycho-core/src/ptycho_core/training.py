"""Training policy shared by both backends (``specs/training.md``): the learning-rate rules, the
monitor fallback, the per-epoch history and the loss specification.

Everything here is framework-free. A backend translates it into its framework's objects (a
Lightning scheduler and callbacks, Keras callbacks) but never restates a constant or a rule:

* :data:`PLATEAU_FACTOR`, :data:`PLATEAU_PATIENCE`, :func:`min_lr` — reduce-on-plateau;
* :func:`scheduled_lr` — the ``cosine`` and ``step`` schedules as pure functions of the epoch;
* :func:`monitored_metric` — ``val_*`` monitors fall back to ``train_*`` without validation data;
  :func:`unprefixed_name` — a metric's name in logs whose training metrics carry no prefix (Keras);
* :class:`HistoryRecorder` — one row per epoch, ``history.csv`` rewritten atomically each epoch,
  a state that a resumed run continues from, and one INFO progress line per epoch on the
  ``ptycho.progress`` logger (:data:`~ptycho_core.workflow.PROGRESS_LOGGER`; the CLI shows it
  when no live progress bar is drawn, ``specs/cli.md``);
* :class:`LossSpec` — the loss weights, its component names and whether it needs ground truth.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptycho_core.config import SCHEDULERS
from ptycho_core.errors import DataContractError
from ptycho_core.workflow import PROGRESS_LOGGER, write_history_csv

__all__ = [
    "HISTORY_COLUMNS",
    "MIN_LR",
    "PLATEAU_FACTOR",
    "PLATEAU_PATIENCE",
    "STEP_GAMMA",
    "HistoryRecorder",
    "LossSpec",
    "PROGRESS_LOGGER",
    "min_lr",
    "monitored_metric",
    "scheduled_lr",
    "steps_per_epoch",
    "unprefixed_name",
]

#: Reduce-on-plateau: multiply the rate by this factor ...
PLATEAU_FACTOR = 0.5
#: ... after this many epochs without improvement of the monitored loss ...
PLATEAU_PATIENCE = 2
#: ... never below this floor (or the initial rate, when that is lower).
MIN_LR = 1e-4
#: ``step`` schedule: multiply by this every ``max(1, nepochs // 3)`` epochs.
STEP_GAMMA = 0.5
_progress = logging.getLogger(PROGRESS_LOGGER)
#: The leading columns of every history (components follow in sorted order).
HISTORY_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "lr")


def min_lr(lr0: float) -> float:
    """The learning-rate floor of the plateau and cosine schedules for initial rate ``lr0``."""
    return min(MIN_LR, float(lr0))


def scheduled_lr(name: str, lr0: float, epoch: int, nepochs: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under an epoch-wise schedule.

    ``cosine``: ``η_min + (lr0 − η_min)(1 + cos(π e / T))/2`` with ``T = max(1, nepochs)`` and
    ``η_min = min_lr(lr0)``; ``step``: ``lr0 · 0.5^(e // max(1, nepochs // 3))``; ``none``:
    ``lr0``. ``plateau`` depends on the losses, not the epoch: ``ValueError``.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is not one of {SCHEDULERS}")
    lr0 = float(lr0)
    if name == "none":
        return lr0
    if name == "cosine":
        eta = min_lr(lr0)
        t_max = max(1, int(nepochs))
        return eta + (lr0 - eta) * (1 + math.cos(math.pi * int(epoch) / t_max)) / 2
    if name == "step":
        return lr0 * STEP_GAMMA ** (int(epoch) // max(1, int(nepochs) // 3))
    raise ValueError("scheduler='plateau' follows the monitored loss; it has no epoch formula")


def monitored_metric(metric: str, has_validation: bool) -> str:
    """``metric`` when there is validation data, else its ``train_*`` counterpart.

    ``val_loss`` → ``train_loss``; ``train_*`` and other names are returned unchanged.
    """
    if has_validation or not metric.startswith("val_"):
        return metric
    return "train_" + metric[4:]


def steps_per_epoch(n_groups: int, batch_size: int) -> int:
    """Batches in one pass over ``n_groups`` groups (the last one may be short; at least 1)."""
    return max(1, math.ceil(int(n_groups) / int(batch_size)))


def unprefixed_name(metric: str) -> str:
    """The name of ``metric`` in epoch logs whose training metrics carry no prefix (Keras'):
    ``train_loss`` → ``loss``, ``train_<c>`` → ``<c>``, ``val_*`` and others unchanged."""
    return metric[len("train_") :] if metric.startswith("train_") else metric


def _float_or_nan(value: Any) -> float:
    """``float(value)``; NaN for a missing or non-numeric value (±inf is kept: a diverged loss)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class HistoryRecorder:
    """Per-epoch training history, framework-free.

    A backend's epoch-end hook calls :meth:`record` with the epoch's mean losses. Every call
    rewrites ``path`` (``history.csv``) atomically, so an interrupted run keeps the epochs it
    finished; :meth:`state_dict` / :meth:`load_state_dict` carry the rows through a checkpoint
    so that a resumed run continues the same history. ``write`` = False (e.g. on non-zero DDP
    ranks) keeps the rows in memory only.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        write: bool = True,
        total_epochs: int | None = None,
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.write = bool(write)
        self.rows: list[dict[str, float]] = []
        #: Shown in the progress line (``epoch 3/20``) when known.
        self.total_epochs = total_epochs
        self._t_last = time.perf_counter()

    def record(
        self,
        epoch: int,
        *,
        train_loss: Any,
        val_loss: Any = math.nan,
        lr: Any = math.nan,
        components: Mapping[str, Any] | None = None,
    ) -> dict[str, float]:
        """Append the row of ``epoch`` (0-based) and rewrite the CSV. ``components``: extra
        columns, named ``train_<c>`` / ``val_<c>``. Missing values are NaN (empty CSV cells)."""
        row = {
            "epoch": float(epoch),
            "train_loss": _float_or_nan(train_loss),
            "val_loss": _float_or_nan(val_loss),
            "lr": _float_or_nan(lr),
        }
        for key in sorted(components or {}):
            if key not in row:
                row[key] = _float_or_nan((components or {})[key])
        self.rows.append(row)
        if self.path is not None and self.write:
            write_history_csv(self.path, self.history())
        if self.write:  # one line per epoch, from one process only (DDP: rank 0)
            self._log_progress(epoch, row)
        return row

    def record_logs(
        self, epoch: int, logs: Mapping[str, Any], *, lr: Any = math.nan, prefixed: bool = False
    ) -> dict[str, float]:
        """:meth:`record` from a framework's epoch logs (name → scalar). ``prefixed=False``
        (Keras): ``loss`` → ``train_loss``, ``<c>`` → ``train_<c>``, ``val_*`` unchanged, the
        optimizer's ``learning_rate`` dropped (``lr`` is the rate used during the epoch);
        ``prefixed=True`` (Lightning's ``callback_metrics``): the ``train_*``/``val_*`` keys."""
        if prefixed:
            values = {k: v for k, v in logs.items() if k.startswith(("train_", "val_"))}
        else:
            values = {
                k if k.startswith("val_") else f"train_{k}": v
                for k, v in logs.items()
                if k != "learning_rate"
            }
        return self.record(
            epoch,
            train_loss=values.pop("train_loss", math.nan),
            val_loss=values.pop("val_loss", math.nan),
            lr=lr,
            components=values,
        )

    def _log_progress(self, epoch: int, row: Mapping[str, float]) -> None:
        now = time.perf_counter()
        seconds, self._t_last = now - self._t_last, now
        total = f"/{self.total_epochs}" if self.total_epochs else ""
        values = "  ".join(
            f"{key} {row[key]:.4g}"
            for key in ("train_loss", "val_loss", "lr")
            if math.isfinite(row[key])
        )
        _progress.info(
            "epoch %d%s  %s  (%.1f s)",
            epoch + 1,
            total,
            values,
            seconds,
            extra={"progress": "epoch"},
        )

    def history(self) -> dict[str, list[float]]:
        """Dict of lists: ``epoch``, ``train_loss``, ``val_loss``, ``lr``, then the components in
        the order they first appeared."""
        keys = list(HISTORY_COLUMNS)
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        return {k: [r.get(k, math.nan) for r in self.rows] for k in keys}

    def state_dict(self) -> dict[str, Any]:
        """The rows so far (plain floats), for a checkpoint."""
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (a resumed run)."""
        self.rows = [
            {str(k): _float_or_nan(v) for k, v in dict(r).items()} for r in state.get("rows", [])
        ]


@dataclass(frozen=True)
class LossSpec:
    """The training loss, as both backends compute it (``specs/training.md``).

    Physics-informed: ``loss = nll_weight·NLL + mae_weight·MAE + realspace_weight·RS`` with
    ``NLL = mean(I_pred − x²·log(I_pred + eps))`` (``x`` the measured photon-count amplitude),
    ``MAE = mean|A_pred − x|`` and ``RS = mean|O_pred − Y|``. Supervised:
    ``mean||O| − |Y|| + mean|wrap(arg O − arg Y)|``.
    """

    nll_weight: float = 0.0
    mae_weight: float = 1.0
    realspace_weight: float = 0.0
    supervised: bool = False
    eps: float = 1e-12

    def __post_init__(self) -> None:
        for name in ("nll_weight", "mae_weight", "realspace_weight"):
            v = getattr(self, name)
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            if not (ok and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}={v!r} must be a finite number >= 0")
        if not self.eps >= 1e-12:
            raise ValueError(f"eps={self.eps!r} must be >= 1e-12")

    @classmethod
    def from_training_config(cls, config: Any) -> LossSpec:
        return cls(
            float(config.nll_weight),
            float(config.mae_weight),
            float(config.realspace_weight),
            supervised=config.model.model_type == "supervised",
        )

    @property
    def needs_ground_truth(self) -> bool:
        """True when the loss reads ground-truth patches ``Y``."""
        return self.supervised or self.realspace_weight > 0

    @property
    def components(self) -> tuple[str, ...]:
        """Names of the logged components besides the total ``loss``."""
        if self.supervised:
            return ("amp_mae", "phase_mae")
        return ("nll", "mae", "realspace") if self.realspace_weight > 0 else ("nll", "mae")

    def check_ground_truth(self, has_ground_truth: bool, where: str = "<in-memory scan>") -> None:
        """The one place a missing ground truth is reported: :class:`DataContractError` naming
        the data and the setting that asked for it."""
        if self.needs_ground_truth and not has_ground_truth:
            what = (
                "model_type='supervised'"
                if self.supervised
                else f"realspace_weight={self.realspace_weight}"
            )
            raise DataContractError(
                f"{where}: key 'Y': expected ground-truth patches (or an 'objectGuess' to cut "
                f"them from) for {what}, got neither"
            )
