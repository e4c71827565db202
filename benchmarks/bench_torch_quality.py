"""PyTorch backend reconstruction quality on a simulated scan.

For each (gridsize, photons) case: simulate a seeded 2,000-position scan (N=64 by default), train
on a random half, reconstruct the held-out half, and print amplitude/phase SSIM and PSNR
(``ptycho_core.metrics.evaluate`` on the covered region), training time and patterns/s.

    python benchmarks/bench_torch_quality.py --epochs 20
    # quick:
    python benchmarks/bench_torch_quality.py --epochs 2 --positions 400 --gridsize 1 --photons 1e9
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def run_case(
    gridsize: int, nphotons: float, args: argparse.Namespace, workdir: Path
) -> dict[str, float]:
    from ptycho_core.config import (
        InferenceConfig,
        ModelConfig,
        PyTorchExecutionConfig,
        TrainingConfig,
    )
    from ptycho_core.metrics import evaluate
    from ptycho_core.simulation import simulate_scan
    from ptycho_torch.backend import reconstruct, train

    scan = simulate_scan(N=args.N, n_positions=args.positions, nphotons=nphotons, seed=args.seed)
    perm = np.random.default_rng(args.seed).permutation(scan.M)
    half = scan.M // 2
    train_scan, test_scan = scan.subset(np.sort(perm[:half])), scan.subset(np.sort(perm[half:]))
    model = ModelConfig(N=args.N, gridsize=gridsize, n_filters_scale=args.k)
    out = workdir / f"g{gridsize}_{nphotons:.0e}"
    cfg = TrainingConfig(
        model=model, nepochs=args.epochs, batch_size=args.batch, output_dir=out, seed=args.seed
    )
    ex = PyTorchExecutionConfig(
        accelerator=args.accelerator,
        enable_progress_bar=False,
        logger_backend="none",
        enable_checkpointing=False,
        early_stop_patience=max(5, args.epochs),
        inference_batch_size=128,
    )
    t = time.perf_counter()
    res = train(cfg, ex, train_data=train_scan)
    train_s = time.perf_counter() - t
    rec = reconstruct(InferenceConfig(model=model, model_path=res.bundle_path), ex, data=test_scan)
    m = evaluate(rec.object, scan.object, mask=rec.coverage > 0)
    flat = evaluate(np.ones_like(scan.object), scan.object, mask=rec.coverage > 0)
    epochs = len(res.history["train_loss"])
    return {
        "gridsize": gridsize,
        "nphotons": nphotons,
        "epochs": epochs,
        "train_s": train_s,
        "patterns_per_s": res.timings["patterns_per_s"],
        "ssim_amp": m["ssim_amp"],
        "ssim_phase": m["ssim_phase"],
        "psnr_amp": m["psnr_amp"],
        "psnr_phase": m["psnr_phase"],
        "flat_ssim_amp": flat["ssim_amp"],
        "flat_ssim_phase": flat["ssim_phase"],
        "nll_first": res.history["train_nll"][0],
        "nll_last": res.history["train_nll"][-1],
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
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--accelerator", default="auto")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import lightning.pytorch  # noqa: F401 - configures its loggers on import; quieten them after

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}; N={args.N} k={args.k} "
        f"{args.positions} positions (train on half), {args.epochs} epochs max, batch {args.batch}"
    )
    hdr = (
        f"{'grid':>4} {'photons':>8} {'ep':>3} {'train s':>8} {'pat/s':>7} "
        f"{'SSIM amp':>8} {'SSIM ph':>8} "
        f"{'PSNR amp':>8} {'PSNR ph':>8} {'flat SSIM a/p':>14} {'NLL first→last':>18}"
    )
    print(hdr)
    with tempfile.TemporaryDirectory() as d:
        for g in args.gridsize:
            for p in args.photons:
                r = run_case(g, p, args, Path(d))
                print(
                    f"{g:>4} {p:>8.0e} {r['epochs']:>3} {r['train_s']:>8.1f} "
                    f"{r['patterns_per_s']:>7.1f} "
                    f"{r['ssim_amp']:>8.3f} {r['ssim_phase']:>8.3f} "
                    f"{r['psnr_amp']:>8.2f} {r['psnr_phase']:>8.2f} "
                    f"{r['flat_ssim_amp']:>6.3f}/{r['flat_ssim_phase']:<6.3f} "
                    f"{r['nll_first']:>8.3g}→{r['nll_last']:<8.3g}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
