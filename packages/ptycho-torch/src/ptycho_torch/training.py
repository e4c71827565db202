"""Lightning training (``specs/training.md``): a LightningModule that only orchestrates, and
Trainer builders.

The network and physics are the plain ``nn.Module`` :class:`ptycho_torch.model.PtychoModel`; the
loss is :class:`ptycho_torch.losses.PtychoLoss`. Everything runtime-related comes from a
:class:`ptycho_core.config.PyTorchExecutionConfig` through :func:`build_trainer`, which tests
inspect without running a fit.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from ptycho_core.workflow import write_history_csv
from ptycho_torch.losses import PtychoLoss
from ptycho_torch.model import PtychoModel

__all__ = [
    "PtychoLightningModule",
    "HistoryCallback",
    "build_callbacks",
    "build_logger",
    "build_trainer",
    "PLATEAU_FACTOR",
    "PLATEAU_PATIENCE",
    "MIN_LR",
]

log = logging.getLogger(__name__)

PLATEAU_FACTOR = 0.5
PLATEAU_PATIENCE = 2
MIN_LR = 1e-4
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "lr")


class PtychoLightningModule(pl.LightningModule):
    """Runs the model and the loss on batches, logs ``train_*``/``val_*`` metrics, builds Adam
    and the learning-rate schedule. Holds no physics of its own."""

    def __init__(
        self,
        model: PtychoModel,
        loss: PtychoLoss,
        *,
        learning_rate: float = 1e-3,
        scheduler: str = "plateau",
        max_epochs: int = 50,
        monitor: str = "val_loss",
    ) -> None:
        super().__init__()
        self.model, self.loss_fn = model, loss
        self.learning_rate, self.scheduler_name = float(learning_rate), scheduler
        self.max_epochs, self.monitor = int(max_epochs), monitor

    def forward(self, x: torch.Tensor, offsets: torch.Tensor | None = None):
        return self.model(x, offsets)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        out = self.model(batch["x"], batch["offsets"])
        terms = self.loss_fn(out, batch["x"], batch.get("Y"))
        bs = batch["x"].shape[0]
        for name, value in terms.items():
            key = f"{stage}_{name}"
            self.log(
                key,
                value.detach(),
                on_step=False,
                on_epoch=True,
                batch_size=bs,
                sync_dist=True,
                prog_bar=name == "loss",
            )
        return terms["loss"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.learning_rate)
        name = self.scheduler_name
        if name == "none":
            return opt
        if name == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                mode="min",
                factor=PLATEAU_FACTOR,
                patience=PLATEAU_PATIENCE,
                min_lr=min(MIN_LR, self.learning_rate),
            )
            return {
                "optimizer": opt,
                "lr_scheduler": {
                    "scheduler": sched,
                    "monitor": self.monitor,
                    "interval": "epoch",
                    "strict": True,
                },
            }
        if name == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=max(1, self.max_epochs), eta_min=min(MIN_LR, self.learning_rate)
            )
        elif name == "step":
            sched = torch.optim.lr_scheduler.StepLR(
                opt, step_size=max(1, self.max_epochs // 3), gamma=0.5
            )
        else:
            raise ValueError(
                f"scheduler={name!r} is not one of ('plateau', 'none', 'cosine', 'step')"
            )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def _metric(metrics: dict[str, Any], key: str) -> float:
    v = metrics.get(key)
    return float(v) if v is not None else math.nan


class HistoryCallback(Callback):
    """Collects one row per epoch (``epoch``, ``train_loss``, ``val_loss``, ``lr`` and every other
    ``train_*``/``val_*`` component) in :attr:`rows`; global rank 0 rewrites ``history.csv``
    atomically after every epoch, so an interrupted run keeps the epochs it finished."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {
            "epoch": float(trainer.current_epoch),
            "train_loss": _metric(m, "train_loss"),
            "val_loss": _metric(m, "val_loss"),
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
        }
        for key in sorted(m):
            if key.startswith(("train_", "val_")) and key not in row:
                row[key] = _metric(m, key)
        self.rows.append(row)
        if self.path is not None and trainer.is_global_zero:
            hist = self.history()
            hist.pop("epoch")
            write_history_csv(self.path, hist)

    def state_dict(self) -> dict[str, Any]:
        """Rows so far, so a run resumed from a checkpoint continues its history."""
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]

    def history(self) -> dict[str, list[float]]:
        """Dict of lists (``epoch``, ``train_loss``, ``val_loss``, ``lr``, components)."""
        keys: list[str] = list(HISTORY_COLUMNS)
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        return {k: [r.get(k, math.nan) for r in self.rows] for k in keys}


def build_logger(execution: Any, output_dir: str | Path) -> Any:
    """The Lightning logger for ``execution.logger_backend``: ``csv`` (default) → CSVLogger under
    ``<output_dir>/logs``; ``tensorboard``/``mlflow`` when installed (else a warning and CSV);
    ``none`` → ``False`` (no logger)."""
    name = execution.logger_backend
    if name == "none":
        return False
    if name == "tensorboard":
        if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
            from lightning.pytorch.loggers import TensorBoardLogger

            return TensorBoardLogger(save_dir=str(output_dir), name="logs")
        log.warning(
            "logger_backend='tensorboard' selected but tensorboard is not installed; using CSV"
        )
    elif name == "mlflow":
        if importlib.util.find_spec("mlflow"):
            from lightning.pytorch.loggers import MLFlowLogger

            return MLFlowLogger(experiment_name="ptycho", save_dir=str(Path(output_dir) / "mlruns"))
        log.warning("logger_backend='mlflow' selected but mlflow is not installed; using CSV")
    return CSVLogger(save_dir=str(output_dir), name="logs")


def build_callbacks(
    execution: Any,
    output_dir: str | Path,
    *,
    has_validation: bool = True,
    history_path: str | Path | None = None,
) -> list[Callback]:
    """History, EarlyStopping (patience from ``execution``) and, with ``enable_checkpointing``, a
    ModelCheckpoint under ``<output_dir>/checkpoints`` (``last.ckpt`` + top-k by the monitor).

    Without a validation split the monitors fall back from ``val_*`` to ``train_*``.
    """

    def monitored(metric: str) -> str:
        return metric if has_validation or not metric.startswith("val_") else "train_" + metric[4:]

    cbs: list[Callback] = [HistoryCallback(history_path)]
    cbs.append(
        EarlyStopping(
            monitor=monitored("val_loss"), mode="min", patience=int(execution.early_stop_patience)
        )
    )
    if execution.enable_checkpointing:
        metric = monitored(execution.checkpoint_monitor_metric)
        cbs.append(
            ModelCheckpoint(
                dirpath=str(Path(output_dir) / "checkpoints"),
                filename="epoch{epoch:03d}-" + metric.replace("/", "_") + "{" + metric + ":.4g}",
                auto_insert_metric_name=False,
                monitor=metric,
                mode=execution.checkpoint_mode,
                save_top_k=int(execution.checkpoint_save_top_k),
                save_last=True,
            )
        )
    return cbs


def build_trainer(
    execution: Any,
    *,
    max_epochs: int,
    output_dir: str | Path,
    has_validation: bool = True,
    history_path: str | Path | None = None,
    **overrides: Any,
) -> pl.Trainer:
    """A ``lightning.pytorch.Trainer`` honouring every field of ``execution`` that shapes
    training."""
    kwargs: dict[str, Any] = dict(
        accelerator=execution.accelerator,
        strategy=execution.strategy,
        devices=list(execution.devices)
        if isinstance(execution.devices, tuple)
        else execution.devices,
        deterministic=bool(execution.deterministic),
        gradient_clip_val=execution.gradient_clip_val,
        accumulate_grad_batches=int(execution.accum_steps),
        enable_progress_bar=bool(execution.enable_progress_bar),
        enable_checkpointing=bool(execution.enable_checkpointing),
        enable_model_summary=False,
        max_epochs=int(max_epochs),
        logger=build_logger(execution, output_dir),
        callbacks=build_callbacks(
            execution, output_dir, has_validation=has_validation, history_path=history_path
        ),
        default_root_dir=str(output_dir),
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # metrics are epoch-level; this only silences Lightning's hint
    )
    if not has_validation:
        kwargs["limit_val_batches"] = 0
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)
