"""The parity tests' child process: ``python worker.py BACKEND TASK SPEC.json``.

It imports exactly one backend (``pytorch`` or ``tensorflow``) and writes its results as plain
NPZ / JSON files, which the framework-free pytest process (and ``benchmarks/bench_parity.py``)
compares. Tasks (``SPEC`` keys in brackets):

* ``make_bundle`` [model_config, seed, scale, out]: a bundle of seeded, non-trivial weights
  (core's initial weights with biases drawn too, a complex probe);
* ``convert`` [source, out]: :func:`ptycho_core.convert.convert_bundle` to this backend;
* ``evaluate`` [bundle, inputs, out, scan]: the inference model's object patches for the saved
  groups, the stitched reconstruction of ``scan`` when given, the training model's Poisson NLL
  and MAE on those groups, and the NLL's gradient for every conv weight (canonical layout);
* ``train`` [config, execution, train, test, out]: the backend's ``train`` (history and the
  held-out reconstruction).

``SPEC`` may instead hold ``{"jobs": [spec, ...]}``: the task runs once per job in this one
process (the framework is imported once).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _modules(backend: str) -> tuple[Any, Any]:
    """(workflows module, bundle module) of ``backend``."""
    if backend == "pytorch":
        import torch

        torch.set_num_threads(1)
        from ptycho_torch import bundle, workflows
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from ptycho_tf import bundle, workflows
    else:
        raise SystemExit(f"unknown backend {backend!r}")
    return workflows, bundle


def _probe(n: int, seed: int) -> np.ndarray:
    """A normalised-looking complex probe: a soft disc with a quadratic phase and some noise."""
    rng = np.random.default_rng([seed, 7])
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r2 = (xx**2 + yy**2) / (n / 4) ** 2
    amp = np.exp(-(r2**2)) + 0.05 * rng.random((n, n))
    return (amp * np.exp(1j * (0.8 * r2 + 0.3 * rng.standard_normal((n, n))))).astype(np.complex64)


def _batch(path: str) -> Any:
    """The :class:`~ptycho_core.grouping.GroupedData` saved field by field in ``path``."""
    from ptycho_core.grouping import GroupedData

    keys = ("indices", "positions", "centers", "offsets", "source_diffraction")
    with np.load(path, allow_pickle=False) as z:
        fields = {k: z[k] for k in keys}
        scale = float(z["scale"])
    return GroupedData(**fields, scale=scale)


def make_bundle(backend: str, spec: dict[str, Any]) -> None:
    from ptycho_core.config import ModelConfig, TrainingConfig
    from ptycho_core.seeding import initial_weights

    workflows, bundle = _modules(backend)
    mc = ModelConfig.from_dict(spec["model_config"])
    seed, s = int(spec["seed"]), float(spec["scale"])
    probe = _probe(mc.N, seed)
    arrays = initial_weights(mc, seed, probe=probe, intensity_scale=s)
    rng = np.random.default_rng([seed, 11])
    for name in arrays:  # biases non-zero, so that a dropped or misplaced bias shows
        if name.endswith(".bias"):
            arrays[name] = (0.05 * rng.standard_normal(arrays[name].shape)).astype(np.float32)
        elif name.endswith("_head.weight") and not arrays[name].any():
            # the physics stages' heads start at zero; non-zero, their convs take part too
            arrays[name] = (0.02 * rng.standard_normal(arrays[name].shape)).astype(np.float32)
    model = workflows.HOOKS.build_model(
        mc, probe=probe, intensity_scale=s, probe_trainable=False, intensity_scale_trainable=False
    )
    model.load_weight_arrays(arrays, "make_bundle")
    bundle.save_bundle(
        spec["out"], model, TrainingConfig(model=mc), normalization={"norm_factor": 1.0}
    )


def convert(backend: str, spec: dict[str, Any]) -> None:
    from ptycho_core.convert import convert_bundle

    convert_bundle(spec["source"], spec["out"], backend, overwrite=True)


def _loss_and_grads(backend: str, model: Any, batch: Any) -> dict[str, np.ndarray]:
    """NLL and MAE of the training model on ``batch`` (training mode) and the NLL's gradient
    for every conv weight (canonical names, ``grad:<name>``, layout ``(out, in, 3, 3)``)."""
    from ptycho_core.training import LossSpec

    x, offsets = batch.diffraction, batch.offsets.astype(np.float32)
    spec = LossSpec(nll_weight=1.0, mae_weight=1.0)
    out: dict[str, np.ndarray] = {}
    if backend == "pytorch":
        import torch

        from ptycho_torch.losses import PtychoLoss

        model.train()
        xt = torch.from_numpy(x)
        terms = PtychoLoss(spec)(model(xt, torch.from_numpy(offsets)), xt)
        terms["nll"].backward()
        for name, p in model.named_parameters():
            if p.grad is not None and "." in name:
                out[f"grad:{name}"] = p.grad.numpy().copy()
        model.eval()
    else:
        import tensorflow as tf

        from ptycho_tf.losses import loss_terms
        from ptycho_tf.model import weight_mapping

        xc = tf.constant(np.moveaxis(x, 1, -1))
        convs = [(n, v) for n, v in weight_mapping(model) if "." in n]
        with tf.GradientTape() as tape:
            outputs = model.autoencoder({"x": xc, "offsets": tf.constant(offsets)}, training=True)
            terms = loss_terms(outputs, xc, None, spec)
        grads = tape.gradient(terms["nll"], [v for _, v in convs])
        for (name, _), g in zip(convs, grads, strict=True):
            a = np.asarray(g)
            out[f"grad:{name}"] = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a
    for key in ("nll", "mae"):
        out[key] = np.float64(
            float(np.asarray(terms[key].detach() if backend == "pytorch" else terms[key]))
        )
    return out


def evaluate(backend: str, spec: dict[str, Any]) -> None:
    """Object patches of the inference model for the saved batch, the stitched reconstruction
    of ``scan`` (when given), and :func:`_loss_and_grads`; one NPZ at ``out``."""
    from ptycho_core.config import ExecutionConfig, InferenceConfig
    from ptycho_core.io import load_npz

    workflows, bundle = _modules(backend)
    loaded = bundle.load_bundle(spec["bundle"])
    execution = ExecutionConfig(accelerator="cpu", enable_progress_bar=False)
    batch = _batch(spec["inputs"])
    out = {"patches": workflows.HOOKS.make_predict(loaded.model, execution)(batch)}
    if spec.get("scan"):
        recon = workflows.reconstruct(
            InferenceConfig(model_path=spec["bundle"]),
            execution,
            data=load_npz(spec["scan"]),
            bundle=loaded,
        )
        out["object"], out["coverage"] = recon.object, recon.coverage
    out.update(_loss_and_grads(backend, loaded.model, batch))
    np.savez(spec["out"], **out)


def train(backend: str, spec: dict[str, Any]) -> None:
    from ptycho_core.config import ExecutionConfig, TrainingConfig
    from ptycho_core.io import load_npz

    workflows, _ = _modules(backend)
    result = workflows.train(
        TrainingConfig.from_dict(spec["config"]),
        ExecutionConfig(**spec["execution"]),
        train_data=load_npz(spec["train"]),
        test_data=load_npz(spec["test"]) if spec.get("test") else None,
    )
    hist = {
        k: [None if not math.isfinite(v) else v for v in vals] for k, vals in result.history.items()
    }
    out: dict[str, Any] = {"history": hist, "timings": result.timings}
    Path(spec["out"]).write_text(json.dumps(out))
    if result.reconstruction is not None:
        r = result.reconstruction
        np.savez(Path(spec["out"]).with_suffix(".npz"), object=r.object, coverage=r.coverage)


TASKS = {
    "make_bundle": make_bundle,
    "convert": convert,
    "evaluate": evaluate,
    "train": train,
}

if __name__ == "__main__":
    backend_name, task, spec_path = sys.argv[1:4]
    given = json.loads(Path(spec_path).read_text())
    for job in given["jobs"] if "jobs" in given else [given]:  # one import, many jobs
        TASKS[task](backend_name, job)
