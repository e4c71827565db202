"""Reconstruction quality of either backend on the realistic scene (``specs/simulation.md``).

One seeded scan of the realistic scene (beamline probe, textured amplitude+phase object) is split
by position: the left half (x below the median) trains, the right half is reconstructed. For each
(gridsize, photons) case the script trains once and reconstructs the held-out half twice —
trained only, and after ``--adapt-epochs`` of adaptation on that half's own diffraction
(``engine.adapt``; no ground truth). Every row is scored on the covered region after sub-pixel
registration (``ptycho_cli.compare.compare_to_truth``): amplitude/phase SSIM and PSNR, the FRC
0.5 crossing (cycles/pixel) and wall times; a flat object's scores are the floor.

Diagnostics: ``--score-train-half`` also scores the model on the half it trained on (a
generalisation gap is what adaptation can close); ``--train-on-test`` trains on the half that is
reconstructed (the recipe's ceiling on that scan). The training and adaptation losses per epoch
are printed as ``# loss per epoch`` lines.

    python benchmarks/bench_quality.py --backend pytorch            # N=64, ~1,500 training patterns
    python benchmarks/bench_quality.py --backend tensorflow --quick  # minutes: N=32, small scan

Run alone: two CPU-bound processes on two cores slow each other by up to 10×; the load is
printed with the table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _score(rec: Any, truth: np.ndarray, margin: int) -> dict[str, float]:
    from ptycho_cli.compare import compare_to_truth

    c = compare_to_truth(rec.object, rec.coverage, rec.origin, truth, register=True, margin=margin)
    m = c.metrics
    frc = m.get("frc") or {}
    frc50 = frc.get("crossing_0p5")
    if not frc.get("curve"):  # no fully scored rectangle wide enough: FRC not measurable
        frc50 = -1.0
    return {
        "ssim_amp": float(m["ssim_amp"]),
        "ssim_phase": float(m["ssim_phase"]),
        "psnr_amp": float(m["psnr_amp"] or np.inf),
        "psnr_phase": float(m["psnr_phase"] or np.inf),
        "frc50": float(frc50) if frc50 is not None else float("nan"),
    }


def run_case(backend: Any, gridsize: int, nphotons: float, args: argparse.Namespace) -> list[dict]:
    from ptycho_core.config import ExecutionConfig, InferenceConfig, ModelConfig, TrainingConfig
    from ptycho_core.simulation import held_out_halves, simulate_scan
    from ptycho_core.workflow import read_history_csv

    scan = simulate_scan(N=args.N, n_positions=args.positions, nphotons=nphotons, seed=args.seed)
    train_half, test_half = held_out_halves(scan)
    if args.train_on_test:  # diagnostic: how well the recipe fits the very scan it reconstructs
        train_half = test_half
    execution = ExecutionConfig(
        learning_rate=args.lr,
        scheduler=args.scheduler,
        enable_progress_bar=False,
        enable_checkpointing=False,
        logger_backend="none",
        early_stop_patience=max(args.epochs, 1),
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:
        cfg = TrainingConfig(
            model=ModelConfig(
                N=args.N,
                gridsize=gridsize,
                n_filters_scale=args.filters,
                pad_object=not args.no_pad_object,
                generator=args.generator,
                physics_stages=args.physics_stages,
            ),
            nepochs=args.epochs,
            batch_size=args.batch_size,
            n_groups=None,
            output_dir=Path(tmp),
            backend=backend.NAME,
            nll_weight=1.0 if args.loss == "nll" else 0.0,
            mae_weight=1.0 if args.loss == "mae" else 0.0,
        )
        t0 = time.perf_counter()
        result = backend.train(cfg, execution, train_data=train_half)
        train_s = time.perf_counter() - t0
        inf = InferenceConfig(
            model=cfg.model,
            model_path=result.bundle_path,
            backend=backend.NAME,
            stitch_crop=args.stitch_crop,
            projection_steps=args.projection_steps,
            grouping=args.grouping,
        )
        print(f"# loss per epoch, training: {_curve(result.history)}", flush=True)
        last: dict[str, Any] = {}  # the last reconstruction of each half: its flat floor
        cases: list[tuple[str, int, str]] = [("trained", 0, "held-out")]
        if args.score_train_half:  # the fit on the data it saw: is there a gap to adapt away?
            cases.append(("trained, scored on its training half", 0, "training"))
        if args.adapt_epochs > 0:
            cases.append((f"adapted {args.adapt_epochs} ep", args.adapt_epochs, "held-out"))
        halves = {"held-out": test_half, "training": train_half}
        for mode, adapt, half in cases:
            adapted_dir = Path(tmp) / "adapted" if adapt else None
            t1 = time.perf_counter()
            rec = backend.reconstruct(
                inf, execution, data=halves[half], adapt_epochs=adapt, save_adapted=adapted_dir
            )
            infer_s = time.perf_counter() - t1
            if adapted_dir is not None:
                curve = _curve(read_history_csv(adapted_dir / "history.csv"))
                print(f"# loss per epoch, adaptation: {curve}", flush=True)
            last[half] = rec
            row = {
                "gridsize": gridsize,
                "photons": nphotons,
                "mode": mode,
                "epochs": args.epochs,
                "train_s": train_s,
                "infer_s": infer_s,
                "train_patterns": train_half.M,
                **_score(rec, scan.object, args.margin),
            }
            rows.append(row)
            print(_fmt(row), flush=True)
        for half, flat in last.items():
            flat.object = np.ones_like(flat.object)
            rows.append(
                {
                    "gridsize": gridsize,
                    "photons": nphotons,
                    "mode": "flat object (floor)"
                    + ("" if half == "held-out" else ", training half"),
                    "epochs": 0,
                    "train_s": 0.0,
                    "infer_s": 0.0,
                    "train_patterns": 0,
                    **_score(flat, scan.object, args.margin),
                }
            )
            print(_fmt(rows[-1]), flush=True)
    return rows


def _curve(history: dict[str, list[float]]) -> str:
    """The training loss per epoch (the physics loss when ground truth is not used)."""
    return " ".join(f"{v:.6g}" for v in history.get("train_loss", []))


HEADER = (
    "| gridsize | photons | reconstruction | epochs | train s | infer s | SSIM amp | SSIM phase "
    "| PSNR amp | PSNR phase | FRC50 |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def _frc(value: float) -> str:
    """The 0.5 crossing in cycles/pixel: ``≥ 0.5`` when the curve never falls below 0.5
    (correlated up to Nyquist), ``n/a`` when the scored region holds no rectangle wide enough
    (``ptycho_core.metrics.FRC_MIN_SIDE``; sparse coverage leaves holes)."""
    if value < 0:
        return "n/a"
    return "≥ 0.5 (Nyquist)" if not np.isfinite(value) else f"{value:.3f}"


def _fmt(r: dict) -> str:
    return (
        f"| {r['gridsize']} | {r['photons']:.0e} | {r['mode']} | {r['epochs']} "
        f"| {r['train_s']:.0f} | {r['infer_s']:.1f} | {r['ssim_amp']:.3f} | {r['ssim_phase']:.3f} "
        f"| {r['psnr_amp']:.2f} | {r['psnr_phase']:.2f} | {_frc(r['frc50'])} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=("pytorch", "tensorflow"), default="pytorch")
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--positions", type=int, default=3000, help="both halves (default 3000)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--adapt-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=None, help="default: ExecutionConfig's")
    ap.add_argument("--scheduler", default=None, help="default: ExecutionConfig's")
    ap.add_argument("--filters", type=int, default=None, help="n_filters_scale (ModelConfig's)")
    ap.add_argument("--generator", default=None, help="default: ModelConfig's")
    ap.add_argument("--physics-stages", type=int, default=None, help="default: ModelConfig's (3)")
    ap.add_argument("--stitch-crop", type=int, default=None, help="default: InferenceConfig's")
    ap.add_argument(
        "--projection-steps",
        type=int,
        default=None,
        help="data projections per physics stage at inference (default: the model's)",
    )
    ap.add_argument("--grouping", default="every", help="inference grouping (every, cover)")
    ap.add_argument("--no-pad-object", action="store_true", help="full-size object decoder")
    ap.add_argument(
        "--train-on-test",
        action="store_true",
        help="diagnostic: train on the half that is reconstructed (no ground truth is used)",
    )
    ap.add_argument(
        "--score-train-half",
        action="store_true",
        help="diagnostic: also reconstruct and score the half the model trained on",
    )
    ap.add_argument("--batch-size", type=int, default=None, help="default: TrainingConfig's")
    ap.add_argument(
        "--loss",
        choices=("nll", "mae"),
        default=None,
        help="Poisson NLL or amplitude MAE (default: TrainingConfig's, specs/training.md)",
    )
    ap.add_argument("--gridsize", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--photons", type=float, nargs="+", default=[1e9, 1e4])
    ap.add_argument("--margin", type=int, default=4, help="pixels left out at the covered rim")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="N=32, 800 positions, 3 epochs")
    args = ap.parse_args(argv)
    if args.quick:
        args.N, args.positions, args.epochs, args.adapt_epochs = 32, 800, 3, 2
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ptycho_core.backends import load_backend
    from ptycho_core.config import ExecutionConfig, ModelConfig, TrainingConfig

    defaults = TrainingConfig()  # unset options measure the project's defaults
    exe_defaults = ExecutionConfig()
    args.lr = args.lr or exe_defaults.learning_rate
    args.scheduler = args.scheduler or exe_defaults.scheduler
    args.filters = args.filters or ModelConfig().n_filters_scale
    args.generator = args.generator or ModelConfig().generator
    if args.physics_stages is None:
        args.physics_stages = ModelConfig().physics_stages
    args.batch_size = args.batch_size or defaults.batch_size
    args.loss = args.loss or ("nll" if defaults.nll_weight > 0 else "mae")
    backend = load_backend(args.backend)
    load = os.getloadavg()[0]
    print(
        f"# {args.backend}, realistic scene, N={args.N}, {args.positions} positions (half trains), "
        f"loss {args.loss}, batch {args.batch_size}, lr {args.lr:g} ({args.scheduler}), "
        f"generator {args.generator}, n_filters_scale {args.filters}, "
        f"physics stages {args.physics_stages} (gridsize > 1)"
        f"{', no pad_object' if args.no_pad_object else ''}"
        f"{f', stitch crop {args.stitch_crop}' if args.stitch_crop else ''}"
        f"{', TRAINED ON THE TEST HALF' if args.train_on_test else ''}, "
        f"load average at start {load:.1f}, {os.cpu_count()} CPUs"
    )
    print(HEADER)
    for gs in args.gridsize:
        for ph in args.photons:
            run_case(backend, gs, ph, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
