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

import io
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ptycho_core import engine, runtime
from ptycho_core.config import MIXED_DTYPES, ExecutionConfig
from ptycho_core.errors import BundleError
from ptycho_core.training import monitored_metric
from ptycho_torch import NAME, SUPPORT
from ptycho_torch.data import PtychoDataModule, grouped_to_tensors
from ptycho_torch.losses import PtychoLoss
from ptycho_torch.model import PtychoModel, build_model
from ptycho_torch.training import PtychoLightningModule, build_trainer, torch_devices

__all__ = [
    "HOOKS",
    "NAME",
    "TorchHooks",
    "build_training_run",
    "reconstruct",
    "train",
]


def build_training_run(
    request: engine.FitRequest, *, callbacks: Sequence[Callback] = (), **trainer_overrides: Any
) -> tuple[PtychoLightningModule, PtychoDataModule, pl.Trainer]:
    """Seed, then build the model (:func:`ptycho_core.engine.build_initial_model`), the
    LightningModule, DataModule and Trainer for ``request`` (no fit); ``callbacks`` are appended
    to the trainer's. Seeding immediately before the model is built gives one seed identical
    initial weights (and, on CPU with ``deterministic``, an identical loss curve)."""
    config, execution, prepared = request.config, request.execution, request.prepared
    pl.seed_everything(int(config.seed), workers=True, verbose=False)
    model = engine.build_initial_model(HOOKS, request)
    gt, val = request.loss.needs_ground_truth, prepared.val
    dm = PtychoDataModule(
        grouped_to_tensors(prepared.train, with_ground_truth=gt),
        None if val is None else grouped_to_tensors(val, with_ground_truth=gt),
        batch_size=config.batch_size,
        execution=execution,
        seed=config.seed,
    )
    module = PtychoLightningModule(
        model,
        PtychoLoss(request.loss),
        execution,
        max_epochs=config.nepochs,
        monitor=monitored_metric("val_loss", dm.has_validation),
    )
    trainer = build_trainer(
        execution,
        max_epochs=config.nepochs,
        output_dir=request.output_dir,
        has_validation=dm.has_validation,
        history=request.history,
        callbacks=callbacks,
        **trainer_overrides,
    )
    return module, dm, trainer


class TorchHooks:
    """:class:`ptycho_core.engine.BackendHooks` for PyTorch + Lightning."""

    name = NAME
    #: ``torch.save`` of a plain ``{ADR-002 name: tensor}`` dict (nothing else pickled).
    weights_entry = "state_dict.pt"

    build_model = staticmethod(build_model)

    def __init__(self, callbacks: Sequence[Callback] = ()) -> None:
        #: Extra Lightning callbacks for every fit (e.g. Ptychodus's loss collector).
        self.callbacks = tuple(callbacks)

    def fit(self, request: engine.FitRequest) -> engine.FitOutcome:
        """Lightning fit (resuming from ``request.resume_from``); checkpoints hold tensors and
        primitives only and are read with ``weights_only=True``."""
        module, dm, trainer = build_training_run(request, callbacks=self.callbacks)
        if request.initial_weights is not None:  # adaptation: continue from these weights
            self.weights_from_bytes(module.model, request.initial_weights, "initial_weights")
            module.model.train()
        t0 = time.perf_counter()
        resume = request.resume_from
        trainer.fit(
            module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True
        )
        fit_s = time.perf_counter() - t0
        return engine.FitOutcome(
            model=module.model.cpu(),
            fit_s=fit_s,
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
        if not isinstance(state, dict) or not all(map(torch.is_tensor, state.values())):
            raise BundleError(f"{where}: is not a plain dict of tensors")
        mismatch = engine.state_mismatch(model.state_dict(), state)
        if mismatch:
            raise engine.weights_mismatch_error(where, mismatch)
        try:
            model.load_state_dict(state, strict=True)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise engine.weights_mismatch_error(where, exc) from exc
        model.eval()

    def model_probe(self, model: PtychoModel) -> np.ndarray:
        return model.probe.detach().cpu().numpy().astype(np.complex64)

    def model_intensity_scale(self, model: PtychoModel) -> float:
        return float(model.intensity_scale.detach().cpu())

    def inference_shard(self, execution: ExecutionConfig) -> Any:
        """Multi-process inference (:mod:`ptycho_torch.distributed`); None for one process."""
        from ptycho_torch.distributed import inference_shard

        return inference_shard(execution)

    def make_predict(self, model: PtychoModel, execution: ExecutionConfig) -> engine.Predict:
        """``predict(batch) -> (B, C, N, N) complex64`` NumPy on the first device of
        ``execution.accelerator`` (:func:`ptycho_core.runtime.first_device`), under autocast
        for a mixed ``execution.precision`` and through ``torch.compile`` with ``compile``."""
        present = torch_devices()
        runtime.check_execution(execution, SUPPORT, present, training=False)
        device = torch.device(runtime.first_device(execution.accelerator, present, NAME))
        model = model.to(device).eval()
        net = model.diffraction_to_obj
        if execution.compile:
            net = torch.compile(net)
        dtype = getattr(torch, MIXED_DTYPES.get(execution.precision, "float32"))

        @torch.inference_mode()
        def predict(batch: Any) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(batch.diffraction, dtype=np.float32))
            off = torch.from_numpy(np.ascontiguousarray(batch.offsets, dtype=np.float32))
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                obj = net(x.to(device), off.to(device))
            return obj.to(torch.complex64).cpu().numpy()

        return predict


HOOKS = TorchHooks()
#: ``train(config, execution=None, *, train_data=None, test_data=None, resume_from=None)``:
#: :func:`ptycho_core.engine.train` with :data:`HOOKS` (``resume_from``: a Lightning checkpoint,
#: e.g. ``<output_dir>/checkpoints/last.ckpt``).
train = partial(engine.train, HOOKS)
#: ``reconstruct(config, execution=None, *, data=None, bundle=None, ...)``:
#: :func:`ptycho_core.engine.reconstruct` with :data:`HOOKS`.
reconstruct = partial(engine.reconstruct, HOOKS)
