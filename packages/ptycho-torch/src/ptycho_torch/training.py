"""Lightning training (``specs/training.md``): a LightningModule that only orchestrates, and
Trainer builders.

The network and physics are the plain ``nn.Module`` :class:`ptycho_torch.model.PtychoModel`; the
loss is :class:`ptycho_torch.losses.PtychoLoss`. The policy — learning-rate rules, monitor
fallback, history — is :mod:`ptycho_core.training`'s; this module only translates it into
Lightning objects. Everything runtime-related comes from a
:class:`ptycho_core.config.ExecutionConfig` through :func:`build_trainer`, which tests inspect
without running a fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

from ptycho_core import runtime
from ptycho_core.config import ExecutionConfig
from ptycho_core.training import (
    PLATEAU_FACTOR,
    PLATEAU_PATIENCE,
    HistoryRecorder,
    min_lr,
    monitored_metric,
    scheduled_lr,
)
from ptycho_torch import SUPPORT
from ptycho_torch.losses import PtychoLoss
from ptycho_torch.model import PtychoModel

__all__ = [
    "PtychoLightningModule",
    "HistoryCallback",
    "build_callbacks",
    "build_logger",
    "build_trainer",
    "torch_devices",
]


class PtychoLightningModule(pl.LightningModule):
    """Runs the model and the loss on batches, logs ``train_*``/``val_*`` metrics, builds Adam
    and the learning-rate schedule. Holds no physics of its own.

    The rate starts at ``execution.learning_rate``; ``execution.scheduler``: ``plateau`` →
    ``ReduceLROnPlateau`` on ``monitor`` with the core constants; ``cosine`` / ``step`` →
    ``LambdaLR`` following :func:`ptycho_core.training.scheduled_lr` over ``max_epochs``, epoch
    by epoch; ``none`` → a constant rate. A run resumed from a checkpoint starts its first epoch
    at the formula's rate for that epoch and this run's ``max_epochs`` (as the TensorFlow
    backend does), not at the rate the interrupted run, with its own horizon, had set.
    ``execution.compile``: the model is compiled in place (``torch.compile``; its state-dict
    keys are unchanged).
    """

    def __init__(
        self,
        model: PtychoModel,
        loss: PtychoLoss,
        execution: ExecutionConfig,
        *,
        max_epochs: int,
        monitor: str = "val_loss",
    ) -> None:
        super().__init__()
        self.model, self.loss_fn, self.execution = model, loss, execution
        self.max_epochs, self.monitor = int(max_epochs), monitor
        if execution.compile:
            model.compile()

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        out = self.model(batch["x"], batch["offsets"])
        terms = self.loss_fn(out, batch["x"], batch.get("Y"))
        kw: dict[str, Any] = dict(on_step=False, on_epoch=True, sync_dist=True)
        kw["batch_size"] = batch["x"].shape[0]
        self.log(f"{stage}_loss", terms["loss"].detach(), prog_bar=True, **kw)
        self.log_dict({f"{stage}_{k}": v.detach() for k, v in terms.items() if k != "loss"}, **kw)
        return terms["loss"]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_start(self) -> None:
        # Runs after a checkpoint's optimizer state is restored and before the first epoch: an
        # epoch-wise rate is a pure function of the epoch and this run's horizon, so set it
        # here rather than keep the value the interrupted run stepped to.
        name = self.execution.scheduler
        if name in ("plateau", "none"):
            return
        lr = scheduled_lr(
            name, float(self.execution.learning_rate), self.current_epoch, self.max_epochs
        )
        for opt in self.trainer.optimizers:
            for group in opt.param_groups:
                group["lr"] = lr

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        lr0, name = float(self.execution.learning_rate), self.execution.scheduler
        opt = torch.optim.Adam(params, lr=lr0)
        if name == "none":
            return opt
        if name == "plateau":  # Lightning steps it once per epoch on ``monitor`` (strict)
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE, min_lr=min_lr(lr0)
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}

        # A plain function (not a callable object): LambdaLR then stores nothing of it in the
        # checkpoint, which stays loadable with weights_only=True. Unknown names raise here.
        def factor(epoch: int) -> float:
            return scheduled_lr(name, lr0, epoch, self.max_epochs) / lr0

        by_epoch = torch.optim.lr_scheduler.LambdaLR(opt, factor)  # stepped once per epoch
        return {"optimizer": opt, "lr_scheduler": {"scheduler": by_epoch}}


class HistoryCallback(Callback):
    """Feeds a :class:`ptycho_core.training.HistoryRecorder` one row per epoch (``train_loss``,
    ``val_loss``, ``lr`` — the rate used during the epoch — and every other logged
    ``train_*``/``val_*`` component). Only global rank 0 writes ``history.csv``; the
    checkpointed state is the recorder's, so a run resumed from a checkpoint continues its
    history."""

    def __init__(self, recorder: HistoryRecorder) -> None:
        self.recorder, self._lr = recorder, math.nan

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            self.recorder.write = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The rate used during the epoch: Lightning steps epoch schedulers before the epoch-end
        # hooks run.
        self._lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self.recorder.record_logs(trainer.current_epoch, metrics, lr=self._lr, prefixed=True)

    def state_dict(self) -> dict[str, Any]:
        return self.recorder.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.recorder.load_state_dict(state_dict)


def build_logger(execution: ExecutionConfig, output_dir: str | Path) -> Any:
    """The Lightning logger for ``execution.logger_backend``: ``csv`` (default) → CSVLogger under
    ``<output_dir>/logs``; ``tensorboard``/``mlflow`` when installed (else CSV,
    :func:`ptycho_core.runtime.usable_logger`); ``none`` → ``False`` (no logger)."""
    name = runtime.usable_logger(execution.logger_backend)
    if name == "none":
        return False
    if name == "tensorboard":
        return TensorBoardLogger(save_dir=str(output_dir), name="logs")
    if name == "mlflow":
        return MLFlowLogger(experiment_name="ptycho", save_dir=str(Path(output_dir) / "mlruns"))
    return CSVLogger(save_dir=str(output_dir), name="logs")


def build_callbacks(
    execution: ExecutionConfig,
    output_dir: str | Path,
    *,
    has_validation: bool = True,
    history: HistoryRecorder | None = None,
) -> list[Callback]:
    """History (``history``, or an in-memory recorder), EarlyStopping (patience from
    ``execution``) and, with ``enable_checkpointing``, a ModelCheckpoint under
    ``<output_dir>/checkpoints`` (``last.ckpt`` + top-k by the monitor). Monitors follow
    :func:`ptycho_core.training.monitored_metric` (``val_*`` → ``train_*`` without validation).
    """
    stop_on = monitored_metric("val_loss", has_validation)
    cbs: list[Callback] = [
        HistoryCallback(history if history is not None else HistoryRecorder()),
        EarlyStopping(monitor=stop_on, mode="min", patience=int(execution.early_stop_patience)),
    ]
    if execution.enable_checkpointing:
        metric = monitored_metric(execution.checkpoint_monitor_metric, has_validation)
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
    execution: ExecutionConfig,
    *,
    max_epochs: int,
    output_dir: str | Path,
    has_validation: bool = True,
    history: HistoryRecorder | None = None,
    callbacks: Sequence[Callback] = (),
    **overrides: Any,
) -> pl.Trainer:
    """A ``lightning.pytorch.Trainer`` honouring every field of ``execution`` that shapes
    training (checked first by :func:`ptycho_core.runtime.check_execution`, e.g. ``16-mixed``
    on a CPU); ``callbacks`` are appended to :func:`build_callbacks`'s."""
    runtime.check_execution(execution, SUPPORT, torch_devices())
    devices = execution.devices
    kwargs: dict[str, Any] = dict(
        accelerator=execution.accelerator,
        strategy=execution.strategy,
        devices=list(devices) if isinstance(devices, tuple) else devices,
        num_nodes=int(execution.num_nodes),
        precision=execution.precision,
        deterministic=bool(execution.deterministic),
        gradient_clip_val=execution.gradient_clip_val,
        accumulate_grad_batches=int(execution.accum_steps),
        enable_progress_bar=bool(execution.enable_progress_bar),
        enable_checkpointing=bool(execution.enable_checkpointing),
        enable_model_summary=False,
        max_epochs=int(max_epochs),
        logger=build_logger(execution, output_dir),
        callbacks=[
            *build_callbacks(execution, output_dir, has_validation=has_validation, history=history),
            *callbacks,
        ],
        default_root_dir=str(output_dir),
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # metrics are epoch-level; this only silences Lightning's hint
        limit_val_batches=None if has_validation else 0,
    )
    return pl.Trainer(**{**kwargs, **overrides})


def torch_devices() -> dict[str, list[str]]:
    """The devices torch sees, by kind in the order ``auto`` prefers (``cuda``: the current
    CUDA device), for :mod:`ptycho_core.runtime`."""
    mps = getattr(torch.backends, "mps", None)
    return {
        "gpu": ["cuda"] if torch.cuda.is_available() else [],
        "mps": ["mps"] if mps is not None and mps.is_available() else [],
        "cpu": ["cpu"],
    }
