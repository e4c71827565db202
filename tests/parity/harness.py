"""Cross-backend parity, driven from a framework-free process (``specs/training.md``, "Backend
parity"). Every backend step runs in its own child (``worker.py``) and hands back files; this
module never imports torch or TensorFlow. Used by ``tests/parity`` and
``benchmarks/bench_parity.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core.bundle import read_manifest
from ptycho_core.config import InferenceConfig, ModelConfig
from ptycho_core.convert import read_weight_arrays
from ptycho_core.engine import bundle_configs
from ptycho_core.io import ScanData, save_npz
from ptycho_core.simulation import simulate_scan
from ptycho_core.workflow import iter_batches, prepare_inference

WORKER = Path(__file__).with_name("worker.py")
BACKENDS = ("pytorch", "tensorflow")
OTHER = {"pytorch": "tensorflow", "tensorflow": "pytorch"}
#: Tolerances of issue 13 / ``specs/training.md``.
INFERENCE_RTOL = 1e-4
LOSS_RTOL = 1e-5


def run_worker(backend: str, task: str, spec: dict[str, Any], folder: Path) -> None:
    """Run ``worker.py BACKEND TASK`` in a child interpreter; its stderr tail on failure."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / f"{task}-{backend}-{len(list(folder.glob('*.json')))}.json"
    spec_path.write_text(json.dumps(spec, default=str))
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, str(WORKER), backend, task, str(spec_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{backend} {task} failed:\n{proc.stderr[-4000:]}")


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``max|a − b| / max|b|`` (the relative error of ``a`` at the scale of ``b``)."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def scan_for(model_config: ModelConfig, n_positions: int = 48, seed: int = 3) -> ScanData:
    """A small simulated realistic scan for ``model_config.N``."""
    return simulate_scan(
        N=model_config.N, n_positions=n_positions, nphotons=1e6, seed=seed, workers=1
    )


def save_batch(bundle: Path, scan: ScanData, path: Path, n_groups: int = 4) -> Path:
    """The first ``n_groups`` inference groups of ``scan`` for ``bundle`` (positions, offsets
    and scale ``s·α`` as inference computes them), saved field by field."""
    manifest = read_manifest(bundle)
    prepared = prepare_inference(InferenceConfig(model_path=bundle), manifest, data=scan)
    batch = next(iter_batches(prepared.grouped, n_groups))
    np.savez(
        path,
        indices=batch.indices,
        positions=batch.positions,
        centers=batch.centers,
        offsets=batch.offsets,
        source_diffraction=np.asarray(scan.diffraction, np.float32),
        scale=np.float64(batch.scale),
    )
    return path


def weight_arrays(bundle: Path) -> dict[str, np.ndarray]:
    """The canonical weights of a bundle, read framework-free (torch in a child)."""
    from ptycho_core.bundle import read_bundle

    b = read_bundle(bundle)
    mc, _ = bundle_configs(b.manifest, bundle)
    return read_weight_arrays(b, mc)


def _l2_rel(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """``‖a − b‖ / ‖b‖`` over all the arrays together (L2)."""
    num = sum(float(np.sum((np.asarray(x, float) - y) ** 2)) for x, y in zip(a, b, strict=True))
    den = sum(float(np.sum(np.asarray(y, float) ** 2)) for y in b)
    return float(np.sqrt(num / max(den, 1e-300)))


#: The per-tensor gradient check's floor, as a fraction of the whole gradient's norm: a tensor
#: whose gradient is tiny (at initialisation the deepest phase-decoder layers of an N = 128,
#: gridsize 1 model carry 1e-4 of the norm) is compared at that scale, not at its own, where
#: float32 rounding of cancelling sums reads as 4 % (measured). A sign error in any tensor
#: above 1e-5 of the norm still exceeds the 2 % tolerance.
TENSOR_FLOOR = 1e-3


def _worst_tensor_rel(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """``max_k ‖a_k − b_k‖ / max(‖b_k‖, TENSOR_FLOOR·‖b‖)`` (L2; ``‖b‖`` over all tensors)."""
    total = float(np.sqrt(sum(float(np.sum(np.asarray(y, float) ** 2)) for y in b)))
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        y = np.asarray(y, float)
        diff = float(np.linalg.norm(np.asarray(x, float) - y))
        worst = max(worst, diff / max(float(np.linalg.norm(y)), TENSOR_FLOOR * total, 1e-300))
    return worst


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def inference_cases(
    model_configs: list[dict[str, Any]],
    folder: Path,
    *,
    source: str = "pytorch",
    stitch: bool = False,
    round_trip: bool = False,
) -> list[dict[str, Any]]:
    """For each model config: a ``source`` bundle of seeded weights, converted to the other
    backend (and back, with ``round_trip``); both evaluate the same groups of a simulated scan.

    Returns per case: ``patch_rel`` (relative object-patch difference), ``object_rel``
    (stitched objects, with ``stitch``), ``loss`` / ``loss_rel`` (NLL and MAE), ``grad_rel``
    (largest relative difference of a conv weight's NLL gradient, each at its own scale),
    ``bundles`` and, with ``round_trip``, ``round_trip_equal`` (the weights after
    source → other → source equal the source's bit for bit). One child process per backend and
    step, whatever the number of cases."""
    other = OTHER[source]
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i, cfg in enumerate(model_configs):
        sub = folder / f"case{i}"
        sub.mkdir(exist_ok=True)
        cases.append(
            {
                "mc": ModelConfig.from_dict(cfg),
                "dir": sub,
                source: sub / f"{source}.zip",
                other: sub / f"{other}.zip",
                "back": sub / f"{source}-back.zip",
            }
        )
    make = [
        {"model_config": c["mc"].to_dict(), "seed": 5 + i, "scale": 123.0, "out": str(c[source])}
        for i, c in enumerate(cases)
    ]
    run_worker(source, "make_bundle", {"jobs": make}, folder)
    conv = [{"source": str(c[source]), "out": str(c[other])} for c in cases]
    run_worker(other, "convert", {"jobs": conv}, folder)
    if round_trip:
        back = [{"source": str(c[other]), "out": str(c["back"])} for c in cases]
        run_worker(source, "convert", {"jobs": back}, folder)
    for c in cases:
        scan = scan_for(c["mc"])
        c["scan"] = c["dir"] / "scan.npz"
        save_npz(c["scan"], scan)
        c["inputs"] = save_batch(c[source], scan, c["dir"] / "batch.npz")
    for backend in BACKENDS:
        jobs = []
        for c in cases:
            job = {
                "bundle": str(c[backend]),
                "inputs": str(c["inputs"]),
                "out": str(c["dir"] / f"eval-{backend}.npz"),
            }
            if stitch:
                job["scan"] = str(c["scan"])
            jobs.append(job)
        run_worker(backend, "evaluate", {"jobs": jobs}, folder)
    results = []
    for c in cases:
        pt, tf = (_read_npz(c["dir"] / f"eval-{b}.npz") for b in BACKENDS)
        grads = [k for k in pt if k.startswith("grad:")]
        r: dict[str, Any] = {
            "model_config": c["mc"].to_dict(),
            "bundles": (c[source], c[other]),
            "patch_rel": relative_difference(tf["patches"], pt["patches"]),
            "loss": {
                b: {k: float(e[k]) for k in ("nll", "mae")}
                for b, e in zip(BACKENDS, (pt, tf), strict=True)
            },
            "loss_rel": {
                k: abs(float(tf[k]) - float(pt[k])) / abs(float(pt[k])) for k in ("nll", "mae")
            },
            "grad_names": sorted(grads) == sorted(k for k in tf if k.startswith("grad:")),
            "grad_rel": _l2_rel([tf[k] for k in grads], [pt[k] for k in grads]),
            "grad_tensor_rel": _worst_tensor_rel([tf[k] for k in grads], [pt[k] for k in grads]),
        }
        if stitch:
            r["object_rel"] = relative_difference(tf["object"], pt["object"])
        if round_trip:
            a, b = weight_arrays(c[source]), weight_arrays(c["back"])
            r["round_trip_equal"] = list(a) == list(b) and all(
                a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a
            )
        results.append(r)
    return results


def training_case(
    folder: Path,
    *,
    N: int = 32,
    gridsize: int = 1,
    steps: int = 50,
    n_train: int = 32,
    n_test: int = 96,
    n_filters_scale: int = 1,
    seed: int = 7,
    generator: str = "fourier",
) -> dict[str, Any]:
    """Train both backends from the same (core) initial weights, data, seed and batch order:
    one batch per epoch, so the history's ``train_loss`` is the loss of each of ``steps``
    optimiser steps; then each reconstructs the same held-out scan. Returns both curves, the
    maximum relative curve difference and each backend's held-out SSIM (amplitude, phase)."""
    from ptycho_core.metrics import evaluate

    folder.mkdir(parents=True, exist_ok=True)
    train_scan = simulate_scan(N=N, n_positions=n_train, nphotons=1e6, seed=seed, workers=1)
    test_scan = simulate_scan(N=N, n_positions=n_test, nphotons=1e6, seed=seed + 1, workers=1)
    save_npz(folder / "train.npz", train_scan)
    save_npz(folder / "test.npz", test_scan)
    config = {
        "model": {
            "N": N,
            "gridsize": gridsize,
            "n_filters_scale": n_filters_scale,
            "generator": generator,
        },
        "batch_size": n_train,
        "nepochs": steps,
        "validation_fraction": 0.0,
        "seed": seed,
        "n_groups": n_train,
        # The curve tolerance is stated for the Poisson NLL (specs/training.md): the default
        # amplitude MAE's sign-valued gradient amplifies float32 differences (the same run with
        # it: up to 3.6 % of the curve's decrease, 0.13 of 3.6, against 0.2 % with the NLL).
        "nll_weight": 1.0,
        "mae_weight": 0.0,
    }
    execution = {
        "accelerator": "cpu",
        "scheduler": "none",
        "early_stop_patience": steps + 1,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "logger_backend": "none",
    }
    results: dict[str, Any] = {}
    for backend in BACKENDS:
        out = folder / f"train-{backend}.json"
        spec = {
            "config": dict(config, output_dir=str(folder / backend)),
            "execution": execution,
            "train": str(folder / "train.npz"),
            "test": str(folder / "test.npz"),
            "out": str(out),
        }
        run_worker(backend, "train", spec, folder)
        hist = json.loads(out.read_text())["history"]
        recon = _read_npz(out.with_suffix(".npz"))
        assert test_scan.object is not None
        scores = evaluate(recon["object"], test_scan.object, mask=recon["coverage"] > 0)
        results[backend] = {
            "curve": np.asarray(hist["train_loss"], float),
            "ssim": (float(scores["ssim_amp"]), float(scores["ssim_phase"])),
        }
    a, b = results["tensorflow"]["curve"], results["pytorch"]["curve"]
    results["curve_rel"] = float(np.max(np.abs(a - b) / np.abs(b)))
    # the largest per-step difference as a fraction of the curve's total decrease
    results["curve_of_decrease"] = float(np.max(np.abs(a - b)) / max(b[0] - b.min(), 1e-30))
    return results
