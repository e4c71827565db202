"""TensorFlow backend reconstruction quality on a simulated scan.

For each (gridsize, photons) case: simulate a seeded 2,000-position scan (N=64 by default),
train on a random half, reconstruct the held-out half and print amplitude/phase SSIM and PSNR
(``ptycho_core.metrics.evaluate`` on the covered region), training time and training
patterns/s, plus the flat-object baseline SSIM for reference.

    python benchmarks/bench_tf_quality.py --epochs 20
    python benchmarks/bench_tf_quality.py --epochs 2 --positions 400 --gridsize 1 --photons 1e9
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

COLUMNS = (
    "backend",
    "gridsize",
    "nphotons",
    "epochs",
    "train_s",
    "patterns_per_s",
    "ssim_amp",
    "ssim_phase",
    "psnr_amp",
    "psnr_phase",
)


def run_case(gridsize: int, nphotons: float, args: argparse.Namespace, workdir: Path) -> dict:
    from ptycho_core.config import (
        InferenceConfig,
        ModelConfig,
        PyTorchExecutionConfig,
        TrainingConfig,
    )
    from ptycho_core.metrics import evaluate
    from ptycho_core.simulation import simulate_scan
    from ptycho_tf.backend import reconstruct, train

    scan = simulate_scan(N=args.N, n_positions=args.positions, nphotons=nphotons, seed=args.seed)
    perm = np.random.default_rng(args.seed).permutation(scan.M)
    half = scan.M // 2
    train_scan = scan.subset(np.sort(perm[:half]))
    test_scan = scan.subset(np.sort(perm[half:]))
    model = ModelConfig(N=args.N, gridsize=gridsize, n_filters_scale=args.k)
    cfg = TrainingConfig(
        model=model,
        nepochs=args.epochs,
        batch_size=args.batch,
        output_dir=workdir / f"g{gridsize}_{nphotons:.0e}",
        backend="tensorflow",
        seed=args.seed,
    )
    ex = PyTorchExecutionConfig(
        accelerator=args.accelerator,
        enable_progress_bar=False,
        enable_checkpointing=False,
        early_stop_patience=max(5, args.epochs),
        inference_batch_size=128,
    )
    t = time.perf_counter()
    res = train(cfg, ex, train_data=train_scan)
    train_s = time.perf_counter() - t
    rec = reconstruct(InferenceConfig(model=model, model_path=res.bundle_path), ex, data=test_scan)
    covered = rec.coverage > 0
    m = evaluate(rec.object, scan.object, mask=covered)
    flat = evaluate(np.ones_like(scan.object), scan.object, mask=covered)
    return {
        "backend": "tensorflow",
        "gridsize": gridsize,
        "nphotons": nphotons,
        "epochs": len(res.history["train_loss"]),
        "train_s": train_s,
        "patterns_per_s": res.timings["patterns_per_s"],
        "ssim_amp": m["ssim_amp"],
        "ssim_phase": m["ssim_phase"],
        "psnr_amp": m["psnr_amp"],
        "psnr_phase": m["psnr_phase"],
        "flat_ssim_amp": flat["ssim_amp"],
        "flat_ssim_phase": flat["ssim_phase"],
        "infer_s": rec.timings["total_s"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--positions", type=int, default=2000)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--k", type=int, default=2, help="n_filters_scale")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gridsize", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--photons", type=float, nargs="+", default=[1e9, 1e4])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="TF intra-op threads")
    ap.add_argument("--accelerator", default="auto")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    devices = [d.name for d in tf.config.list_logical_devices()]
    print(
        f"tensorflow {tf.__version__}, devices {devices}; N={args.N} k={args.k} "
        f"{args.positions} positions (train on half), "
        f"{args.epochs} epochs max, batch {args.batch}"
    )
    print(" ".join(f"{c:>14}" for c in COLUMNS) + f" {'flat_ssim_a/p':>14}")
    with tempfile.TemporaryDirectory() as d:
        for g in args.gridsize:
            for p in args.photons:
                r = run_case(g, p, args, Path(d))
                cells = [
                    f"{r['backend']:>14}",
                    f"{r['gridsize']:>14d}",
                    f"{r['nphotons']:>14.0e}",
                    f"{r['epochs']:>14d}",
                    f"{r['train_s']:>14.1f}",
                    f"{r['patterns_per_s']:>14.1f}",
                ]
                cells += [f"{r[k]:>14.3f}" for k in ("ssim_amp", "ssim_phase")]
                cells += [f"{r[k]:>14.2f}" for k in ("psnr_amp", "psnr_phase")]
                cells.append(f"{r['flat_ssim_amp']:>7.3f}/{r['flat_ssim_phase']:<6.3f}")
                print(" ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
