"""Train and reconstruct end to end with the PyTorch backend (``specs/training.md``).

Data preparation, grouping, batching and stitching come from :mod:`ptycho_core.workflow`; this
module adds the torch model, the Lightning trainer and the bundle.

Multi-device: with ``strategy='ddp'`` Lightning re-launches the calling script once per extra
device, so every rank runs :func:`train`; only global rank 0 writes ``history.csv`` and the
bundle. With ``strategy='ddp_spawn'`` the calling process collects rank 0's weights and writes.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from ptycho_core.bundle import BUNDLE_NAME
from ptycho_core.config import InferenceConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_core.errors import ConfigError
from ptycho_core.io import ScanData
from ptycho_core.workflow import prepare_inference, prepare_training, run_inference
from ptycho_torch.bundle import LoadedBundle, load_bundle, save_bundle
from ptycho_torch.data import PtychoDataModule, grouped_to_tensors
from ptycho_torch.losses import PtychoLoss
from ptycho_torch.model import PtychoModel, build_model
from ptycho_torch.training import PtychoLightningModule, build_trainer

__all__ = ["NAME", "train", "reconstruct", "build_training_run", "inference_device", "make_predict"]

log = logging.getLogger(__name__)
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
    execution: PyTorchExecutionConfig | None = None,
    *,
    train_data: ScanData | None = None,
    **trainer_overrides: Any,
) -> tuple[Any, PtychoLightningModule, PtychoDataModule, pl.Trainer]:
    """Prepare data, seed, build model, loss, LightningModule, DataModule and Trainer (no fit).

    Seeding happens immediately before the model is built, so one seed gives identical initial
    weights (and, on CPU with ``deterministic``, an identical loss curve).
    """
    execution = execution or PyTorchExecutionConfig()
    prepared = prepare_training(config, train_data)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(int(config.seed), workers=True, verbose=False)
    model = build_model(
        config.model,
        probe=prepared.probe,
        intensity_scale=prepared.intensity_scale,
        probe_trainable=config.probe_trainable,
        intensity_scale_trainable=config.intensity_scale_trainable,
    )
    loss = PtychoLoss(
        config.nll_weight,
        config.mae_weight,
        config.realspace_weight,
        supervised=config.model.model_type == "supervised",
    )
    gt = loss.needs_ground_truth
    train_t = grouped_to_tensors(prepared.train, with_ground_truth=gt)
    val_t = (
        grouped_to_tensors(prepared.val, with_ground_truth=gt) if prepared.val is not None else None
    )
    dm = PtychoDataModule(
        train_t, val_t, batch_size=config.batch_size, execution=execution, seed=config.seed
    )
    monitor = "val_loss" if dm.has_validation else "train_loss"
    module = PtychoLightningModule(
        model,
        loss,
        learning_rate=execution.learning_rate,
        scheduler=execution.scheduler,
        max_epochs=config.nepochs,
        monitor=monitor,
    )
    trainer = build_trainer(
        execution,
        max_epochs=config.nepochs,
        output_dir=out,
        has_validation=dm.has_validation,
        history_path=out / "history.csv",
        **trainer_overrides,
    )
    return prepared, module, dm, trainer


def _history_from_csv(path: Path) -> dict[str, list[float]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    keys = list(rows[0]) if rows else []
    return {k: [float(r[k]) if r[k] not in ("", None) else math.nan for r in rows] for k in keys}


def train(
    config: TrainingConfig,
    execution: PyTorchExecutionConfig | None = None,
    *,
    train_data: ScanData | None = None,
    test_data: ScanData | None = None,
    ckpt_path: str | Path | None = None,
) -> dict[str, Any]:
    """Train a model and write ``<output_dir>/wts.h5.zip`` and ``history.csv`` (rank 0 only).

    ``ckpt_path`` resumes from a Lightning checkpoint (e.g. ``<output_dir>/checkpoints/last.ckpt``).
    With test data (``test_data`` or ``config.test_data_file``) the trained model also
    reconstructs it; that result is under ``"reconstruction"``.

    Returns ``backend``, ``bundle_path``, ``history`` (dict of lists: ``train_loss``,
    ``val_loss``, ``lr``, components), ``intensity_scale``, ``norm_factor``, ``nphotons``,
    ``timings`` (s), ``config``, ``global_rank``.
    """
    execution = execution or PyTorchExecutionConfig()
    t0 = time.perf_counter()
    prepared, module, dm, trainer = build_training_run(config, execution, train_data=train_data)
    t_fit = time.perf_counter()
    trainer.fit(
        module,
        datamodule=dm,
        ckpt_path=str(ckpt_path) if ckpt_path is not None else None,
        weights_only=True,
    )  # checkpoints hold tensors and primitives only; never unpickle objects
    fit_s = time.perf_counter() - t_fit
    out = Path(config.output_dir)
    hist_cb = trainer.callbacks[0] if trainer.callbacks else None
    history = hist_cb.history() if hist_cb is not None and getattr(hist_cb, "rows", None) else {}
    if not history and (out / "history.csv").exists():  # ddp_spawn: rank 0 ran in a child process
        history = _history_from_csv(out / "history.csv")
    bundle_path = out / BUNDLE_NAME
    model: PtychoModel = module.model.cpu()
    if trainer.is_global_zero:
        save_bundle(
            bundle_path,
            model,
            config,
            normalization=prepared.normalization(),
            extra={
                "epochs_trained": len(history.get("train_loss", [])),
                "history": {
                    k: [None if not math.isfinite(v) else v for v in vals]
                    for k, vals in history.items()
                },
            },
        )
    n_patterns = len(prepared.train) * config.model.C * max(1, len(history.get("train_loss", [])))
    timings = dict(
        prepared.timings,
        fit_s=fit_s,
        train_s=time.perf_counter() - t0,
        patterns_per_s=n_patterns / fit_s if fit_s > 0 else math.nan,
    )
    result: dict[str, Any] = {
        "backend": NAME,
        "bundle_path": bundle_path,
        "history": history,
        "intensity_scale": float(model.intensity_scale.detach()),
        "norm_factor": prepared.norm_factor,
        "nphotons": prepared.nphotons,
        "timings": timings,
        "config": config.to_dict(),
        "global_rank": int(trainer.global_rank),
    }
    if trainer.is_global_zero and (test_data is not None or config.test_data_file is not None):
        inf_cfg = InferenceConfig(
            model=config.model,
            model_path=bundle_path,
            test_data_file=config.test_data_file,
            neighbor_count=config.neighbor_count,
            output_dir=config.output_dir,
            backend=NAME,
        )
        result["reconstruction"] = reconstruct(inf_cfg, execution, data=test_data)
    return result


def make_predict(model: PtychoModel, device: torch.device):
    """``predict(batch) -> (B, C, N, N) complex64`` NumPy for
    :func:`ptycho_core.workflow.run_inference`."""
    model = model.to(device).eval()

    @torch.inference_mode()
    def predict(batch: Any) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch.diffraction, dtype=np.float32)).to(device)
        off = torch.from_numpy(np.ascontiguousarray(batch.offsets, dtype=np.float32)).to(device)
        return model.diffraction_to_obj(x, off).cpu().numpy()

    return predict


def reconstruct(
    config: InferenceConfig,
    execution: PyTorchExecutionConfig | None = None,
    *,
    data: ScanData | None = None,
    bundle: LoadedBundle | None = None,
) -> dict[str, Any]:
    """Reconstruct a scan with a trained bundle (``config.model_path``: the archive or its folder).

    Groups every position, predicts in chunks of ``execution.inference_batch_size`` and stitches
    each chunk as it arrives, so memory stays bounded. Returns the keys of
    :data:`ptycho_core.workflow.RESULT_KEYS` (``backend == "pytorch"``) plus ``norm_factor`` and
    ``intensity_scale``.
    """
    execution = execution or PyTorchExecutionConfig()
    t0 = time.perf_counter()
    if bundle is None:
        if config.model_path is None:
            raise ConfigError(
                "InferenceConfig.model_path = None is invalid; allowed: a wts.h5.zip bundle "
                "(or the folder holding one)"
            )
        bundle = load_bundle(config.model_path)
    load_s = time.perf_counter() - t0
    prepared = prepare_inference(config, bundle.manifest, data)
    predict = make_predict(bundle.model, inference_device(execution.accelerator))
    result = run_inference(prepared, predict, execution.inference_batch_size, NAME)
    result["timings"]["load_bundle_s"] = load_s
    result["timings"]["total_s"] = time.perf_counter() - t0
    return result
