"""A framework-free backend with the behaviour the run-folder tests need: epochs that take time
(so a signal can arrive mid-epoch), a checkpoint after every epoch (``checkpoints/last.ckpt``,
JSON) and resuming from one. It runs the core skeleton (``ptycho_core.engine``), so bundles,
``history.csv`` and results are real.

In-process: :func:`install` (with pytest's ``monkeypatch``). As a program (what the signal tests
start): ``python -m cli_fake_backend ARGS…`` runs ``ptycho ARGS…`` with this backend; it prints
``EPOCH <e> START`` / ``EPOCH <e> END`` and ``PREDICT`` on stdout. ``FAKE_EPOCH_S``,
``FAKE_PREDICT_S`` (seconds) and ``FAKE_FAIL_AT`` (epoch whose end raises RuntimeError) set the
behaviour.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core import engine
from ptycho_core.backends import BACKEND_NAMES, check_backend_name
from ptycho_core.bundle import load_npy_bytes, npy_bytes
from ptycho_core.io import atomic_write

CKPT = "last.ckpt"  # the name ptycho_cli.runfolder.LAST_CHECKPOINT gives "pytorch"


class SlowHooks:
    """:class:`ptycho_core.engine.BackendHooks` whose model is a dict; the loss of epoch ``e``
    is ``1/(e+1)``, so an uninterrupted and a resumed run have the same history."""

    weights_entry = "fake_weights.npy"
    PATCH_VALUE = 0.8 * np.exp(0.3j)

    def __init__(self, name: str) -> None:
        self.name = name

    def build_model(self, model_config, *, probe, intensity_scale, **_: Any) -> dict[str, Any]:
        return {"config": model_config, "probe": np.asarray(probe), "scale": float(intensity_scale)}

    def fit(self, request: engine.FitRequest) -> engine.FitOutcome:
        cfg, prepared = request.config, request.prepared
        epoch_s = float(os.environ.get("FAKE_EPOCH_S", "0"))
        fail_at = int(os.environ.get("FAKE_FAIL_AT", "-1"))
        model = self.build_model(
            cfg.model, probe=prepared.probe, intensity_scale=prepared.intensity_scale
        )
        first = 0
        if request.resume_from is not None:
            state = json.loads(Path(request.resume_from).read_text(encoding="utf-8"))
            request.history.load_state_dict(state["history"])
            model["scale"] = float(state["scale"])
            first = int(state["epoch"]) + 1
        ckpt_dir = Path(request.output_dir) / "checkpoints"
        for epoch in range(first, cfg.nepochs):
            print(f"EPOCH {epoch} START", flush=True)
            time.sleep(epoch_s)
            model["scale"] *= 1.01  # "training" changes the weights a little every epoch
            request.history.record(
                epoch, train_loss=1.0 / (epoch + 1), val_loss=2.0 / (epoch + 2), lr=1e-3
            )
            if request.execution.enable_checkpointing:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                state = {
                    "epoch": epoch,
                    "scale": model["scale"],
                    "history": request.history.state_dict(),
                }
                with atomic_write(ckpt_dir / CKPT, "w") as fh:
                    json.dump(state, fh)
            print(f"EPOCH {epoch} END", flush=True)
            if epoch == fail_at:
                raise RuntimeError(f"fake failure at the end of epoch {epoch}")
        return engine.FitOutcome(model=model, fit_s=1e-3)

    def weights_to_bytes(self, model: dict[str, Any]) -> bytes:
        return npy_bytes(np.array([model["scale"]], np.float64))

    def weights_from_bytes(self, model: dict[str, Any], data: bytes, where: str) -> None:
        model["scale"] = float(load_npy_bytes(data, name=where)[0])

    def model_probe(self, model: dict[str, Any]) -> np.ndarray:
        return model["probe"]

    def model_intensity_scale(self, model: dict[str, Any]) -> float:
        return model["scale"]

    def make_predict(self, model: dict[str, Any], execution: Any):
        n = model["config"].N
        predict_s = float(os.environ.get("FAKE_PREDICT_S", "0"))

        def predict(batch) -> np.ndarray:
            print("PREDICT", flush=True)
            time.sleep(predict_s)
            g, c = batch.indices.shape
            return np.full((g, c, n, n), self.PATCH_VALUE, np.complex64)

        return predict


def backend_module(name: str) -> types.ModuleType:
    module = types.ModuleType(f"slow_{name}_backend")
    hooks = SlowHooks(name)
    module.NAME = name
    module.hooks = hooks

    def train(config, execution=None, *, train_data=None, test_data=None, resume_from=None):
        return engine.train(
            hooks,
            config,
            execution,
            train_data=train_data,
            test_data=test_data,
            resume_from=resume_from,
        )

    def reconstruct(config, execution=None, *, data=None, **_: Any):
        return engine.reconstruct(hooks, config, execution, data=data)

    module.train = train
    module.reconstruct = reconstruct
    return module


def install(monkeypatch: Any = None) -> dict[str, types.ModuleType]:
    """Make ``ptycho_cli.dispatch`` load these backends (``accelerator=auto`` → cpu)."""
    from ptycho_cli import dispatch

    modules = {n: backend_module(n) for n in BACKEND_NAMES}

    def load_backend(name: str) -> types.ModuleType:
        check_backend_name(name)
        return modules[name]

    def resolve(accel: str, backend: str) -> str:
        return "cpu" if accel == "auto" else accel

    if monkeypatch is not None:
        monkeypatch.setattr(dispatch, "load_backend", load_backend)
        monkeypatch.setattr(dispatch, "resolve_accelerator", resolve)
    else:
        dispatch.load_backend = load_backend
        dispatch.resolve_accelerator = resolve
    return modules


def history_rows(path: Path) -> list[dict[str, float]]:
    """``history.csv`` as float rows (NaN for empty cells)."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return [
            {k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


if __name__ == "__main__":
    from ptycho_cli.main import main

    install()
    sys.exit(main(sys.argv[1:]))
