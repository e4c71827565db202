"""Train and reconstruct end to end with the PyTorch backend (``specs/training.md``).

The skeleton — data preparation, loss specification, history, bundle, timings, results — is
:mod:`ptycho_core.engine`'s; this module supplies its hooks (:class:`TorchHooks`): the torch
model, the Lightning fit and the ``state_dict.pt`` weight entry.

Multi-device: with ``strategy='ddp'`` Lightning re-launches the calling script once per extra
device, so every rank runs :func:`train`; only global rank 0 writes ``history.csv`` and the
bundle. With ``strategy='ddp_spawn'`` the calling process collects rank 0's weights and writes;
its history is read back from the ``history.csv`` rank 0 wrote.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ptycho_core import engine
from ptycho_core.config import ExecutionConfig, InferenceConfig, TrainingConfig
from ptycho_core.errors import BundleError
from ptycho_core.io import ScanData
from ptycho_core.training import HistoryRecorder, LossSpec, monitored_metric
from ptycho_core.workflow import PreparedTraining, Reconstruction, prepare_training
from ptycho_torch.data import PtychoDataModule, grouped_to_tensors
from ptycho_torch.losses import PtychoLoss
from ptycho_torch.model import PtychoModel, build_model
from ptycho_torch.training import PtychoLightningModule, build_trainer

__all__ = [
    "HOOKS",
    "NAME",
    "TorchHooks",
    "build_training_run",
    "inference_device",
    "reconstruct",
    "train",
]

NAME = "pytorch"


def inference_device(accelerator: str) -> torch.device:
    """The device for inference from an execution ``accelerator`` (``auto``: CUDA, MPS, else
    CPU)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError(f"accelerator={accelerator!r} selected but CUDA is not available")
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if accelerator == "mps" or (accelerator == "auto" and mps is not None and mps.is_available()):
        return torch.device("mps")
    if accelerator == "tpu":
        raise RuntimeError("accelerator='tpu' is supported for training through Lightning only")
    return torch.device("cpu")


def build_training_run(
    config: TrainingConfig,
    execution: ExecutionConfig | None = None,
    *,
    train_data: ScanData | None = None,
    prepared: PreparedTraining | None = None,
    loss: LossSpec | None = None,
    history: HistoryRecorder | None = None,
    callbacks: Sequence[Callback] = (),
    **trainer_overrides: Any,
) -> tuple[PreparedTraining, PtychoLightningModule, PtychoDataModule, pl.Trainer]:
    """Seed, build model, loss, LightningModule, DataModule and Trainer (no fit).

    ``prepared`` (else :func:`ptycho_core.workflow.prepare_training` of ``train_data``),
    ``loss`` (else the config's :class:`LossSpec`) and ``history`` (else an in-memory recorder)
    are the engine's pieces; ``callbacks`` are appended to the trainer's. Seeding happens
    immediately before the model is built, so one seed gives identical initial weights (and, on
    CPU with ``deterministic``, an identical loss curve).
    """
    execution = execution or ExecutionConfig()
    if prepared is None:
        prepared = prepare_training(config, train_data)
    loss = loss if loss is not None else LossSpec.from_training_config(config)
    pl.seed_everything(int(config.seed), workers=True, verbose=False)
    model = build_model(
        config.model,
        probe=prepared.probe,
        intensity_scale=prepared.intensity_scale,
        probe_trainable=config.probe_trainable,
        intensity_scale_trainable=config.intensity_scale_trainable,
    )
    gt = loss.needs_ground_truth
    val = prepared.val
    dm = PtychoDataModule(
        grouped_to_tensors(prepared.train, with_ground_truth=gt),
        grouped_to_tensors(val, with_ground_truth=gt) if val is not None else None,
        batch_size=config.batch_size,
        execution=execution,
        seed=config.seed,
    )
    module = PtychoLightningModule(
        model,
        PtychoLoss(loss),
        learning_rate=execution.learning_rate,
        scheduler=execution.scheduler,
        max_epochs=config.nepochs,
        monitor=monitored_metric("val_loss", dm.has_validation),
    )
    trainer = build_trainer(
        execution,
        max_epochs=config.nepochs,
        output_dir=config.output_dir,
        has_validation=dm.has_validation,
        history=history,
        callbacks=callbacks,
        **trainer_overrides,
    )
    return prepared, module, dm, trainer


def _history_from_csv(path: Path) -> dict[str, list[float]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keys = list(rows[0]) if rows else []
    return {k: [float(r[k]) if r[k] not in ("", None) else math.nan for r in rows] for k in keys}


class TorchHooks:
    """:class:`ptycho_core.engine.BackendHooks` for PyTorch + Lightning."""

    name = NAME
    #: ``torch.save`` of a plain ``{ADR-002 name: tensor}`` dict (nothing else pickled).
    weights_entry = "state_dict.pt"

    build_model = staticmethod(build_model)

    def fit(self, request: engine.FitRequest) -> engine.FitOutcome:
        """Lightning fit (resuming from ``request.resume_from``); checkpoints hold tensors and
        primitives only and are read with ``weights_only=True``."""
        _, module, dm, trainer = build_training_run(
            request.config,
            request.execution,
            prepared=request.prepared,
            loss=request.loss,
            history=request.history,
        )
        t0 = time.perf_counter()
        resume = request.resume_from
        trainer.fit(
            module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True
        )
        fit_s = time.perf_counter() - t0
        csv_path = request.output_dir / engine.HISTORY_NAME
        spawned = not request.history.rows and csv_path.exists()  # ddp_spawn: rank 0 in a child
        return engine.FitOutcome(
            model=module.model.cpu(),
            fit_s=fit_s,
            history=_history_from_csv(csv_path) if spawned else None,
            is_global_zero=bool(trainer.is_global_zero),
            global_rank=int(trainer.global_rank),
        )

    def weights_to_bytes(self, model: PtychoModel) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}, buf
        )
        return buf.getvalue()

    def weights_from_bytes(self, model: PtychoModel, data: bytes, where: str) -> None:
        """``torch.load(weights_only=True)`` (nothing is unpickled or executed) and a strict
        ``load_state_dict``; the model is left in eval mode."""
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # any unpickling refusal or corruption
            raise BundleError(f"{where}: cannot be read as a tensor dict ({exc})") from exc
        tensors = isinstance(state, dict) and all(
            isinstance(v, torch.Tensor) for v in state.values()
        )
        if not tensors:
            raise BundleError(f"{where}: is not a plain dict of tensors")
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise BundleError(
                f"{where}: weights do not match the architecture in the manifest ({exc})"
            ) from exc
        model.eval()

    def model_probe(self, model: PtychoModel) -> np.ndarray:
        return model.probe.detach().cpu().numpy().astype(np.complex64)

    def model_intensity_scale(self, model: PtychoModel) -> float:
        return float(model.intensity_scale.detach().cpu())

    def make_predict(self, model: PtychoModel, execution: ExecutionConfig) -> engine.Predict:
        """``predict(batch) -> (B, C, N, N) complex64`` NumPy on
        :func:`inference_device` ``(execution.accelerator)``."""
        device = inference_device(execution.accelerator)
        model = model.to(device).eval()

        @torch.inference_mode()
        def predict(batch: Any) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(batch.diffraction, dtype=np.float32))
            off = torch.from_numpy(np.ascontiguousarray(batch.offsets, dtype=np.float32))
            return model.diffraction_to_obj(x.to(device), off.to(device)).cpu().numpy()

        return predict


HOOKS = TorchHooks()


def train(
    config: TrainingConfig,
    execution: ExecutionConfig | None = None,
    *,
    train_data: ScanData | None = None,
    test_data: ScanData | None = None,
    ckpt_path: str | Path | None = None,
) -> engine.TrainResult:
    """:func:`ptycho_core.engine.train` with :data:`HOOKS`; ``ckpt_path`` resumes from a
    Lightning checkpoint (e.g. ``<output_dir>/checkpoints/last.ckpt``)."""
    return engine.train(
        HOOKS, config, execution, train_data=train_data, test_data=test_data, resume_from=ckpt_path
    )


def reconstruct(
    config: InferenceConfig,
    execution: ExecutionConfig | None = None,
    *,
    data: ScanData | None = None,
    bundle: engine.LoadedBundle | None = None,
) -> Reconstruction:
    """:func:`ptycho_core.engine.reconstruct` with :data:`HOOKS`."""
    return engine.reconstruct(HOOKS, config, execution, data=data, bundle=bundle)
