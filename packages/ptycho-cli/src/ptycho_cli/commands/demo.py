"""``ptycho demo``: simulate → train → reconstruct held-out data → score, in a few minutes.

Design (``specs/cli.md``): a scan of the built-in realistic scene is split *spatially*. The
model trains on the left part of the scan area and reconstructs the right half, which it has
never seen: training positions stop a guard band of N/4 pixels (beyond the probe's support)
before the midline, so no training pattern illuminates the held-out region. The held-out
reconstruction is scored against the true object (SSIM/PSNR for amplitude and phase).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_cli.commands._common import (
    BACKEND_CHOICES,
    add_config_arguments,
    execution_from_args,
    positive_float,
    positive_int,
    science_overrides,
)
from ptycho_cli.console import Console
from ptycho_cli.execution import add_execution_arguments
from ptycho_core.backends import DEFAULT_BACKEND

NAME = "demo"
HELP = "simulate a scan, train on half, reconstruct the held-out half, report SSIM/PSNR"
DEMO_PNG = "demo.png"


@dataclass(frozen=True)
class DemoSettings:
    N: int
    n_positions: int
    epochs: int
    batch_size: int
    n_filters_scale: int
    gridsize: int
    nphotons: float
    object_size: int | None = None


#: The full demo: about two minutes on an idle 2-core CPU with the PyTorch backend (measured
#: 120 s in all, held-out SSIM 0.74 / 0.91 on the realistic scene with gridsize 2 and its
#: physics stages, 0.76 / 0.92 with the cosine schedule; gridsize 1, 20 epochs: 65 s for
#: 0.36 / 0.62). N=32 on a 192-px object (dense positions, ~3 px apart) learns more per
#: CPU-second than N=64 (specs/cli.md).
FULL = DemoSettings(
    N=32,
    n_positions=2400,
    epochs=10,
    batch_size=8,
    n_filters_scale=1,
    gridsize=2,
    nphotons=1e9,
    object_size=192,
)
#: --quick: the same pipeline at toy size (well under a minute; for tests).
QUICK = DemoSettings(
    N=32,
    n_positions=160,
    epochs=1,
    batch_size=16,
    n_filters_scale=1,
    gridsize=1,
    nphotons=1e9,
    object_size=None,
)


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        NAME,
        parents=parents,
        help=HELP,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("ptycho_demo"),
        metavar="DIR",
        help="output folder (default: ptycho_demo)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="toy size (N=32, 160 positions, 1 epoch): checks the pipeline in seconds",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a training run in DIR (a previous demo is always replaced; files are "
        "replaced only when the new demo completes)",
    )
    p.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help=f"backend to train (default: the only installed backend, else {DEFAULT_BACKEND})",
    )
    g = p.add_argument_group("demo size (defaults: the full demo; --quick changes them)")
    g.add_argument(
        "--N",
        type=int,
        choices=(32, 64, 128),
        default=None,
        help=f"pattern size (default {FULL.N})",
    )
    g.add_argument(
        "--n-positions",
        type=positive_int,
        default=None,
        metavar="M",
        help=f"scan positions, both halves (default {FULL.n_positions})",
    )
    g.add_argument(
        "--epochs", type=positive_int, default=None, help=f"training epochs (default {FULL.epochs})"
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"groups per batch (default {FULL.batch_size})",
    )
    g.add_argument(
        "--n-filters-scale",
        type=positive_int,
        default=None,
        metavar="K",
        help=f"network width factor (default {FULL.n_filters_scale})",
    )
    g.add_argument(
        "--gridsize",
        type=positive_int,
        default=None,
        help=f"patterns per group side (default {FULL.gridsize})",
    )
    g.add_argument(
        "--nphotons",
        type=positive_float,
        default=None,
        help=f"mean photons per pattern (default {FULL.nphotons:g})",
    )
    g.add_argument(
        "--object-size",
        type=positive_int,
        default=None,
        metavar="PX",
        help=f"object side in pixels (default {FULL.object_size}; --quick: the simulator's choice)",
    )
    g.add_argument("--seed", type=int, default=0, help="simulation and training seed (default 0)")
    add_config_arguments(p)
    add_execution_arguments(p, training=True)
    p.set_defaults(run=run)


def _settings(args: argparse.Namespace) -> DemoSettings:
    base = QUICK if args.quick else FULL
    return DemoSettings(
        **{
            f: getattr(args, f) if getattr(args, f, None) is not None else getattr(base, f)
            for f in base.__dataclass_fields__
            if f != "epochs"
        },
        epochs=args.epochs or base.epochs,
    )


def split_spatially(positions: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): held out = right of the scan's x midline; training =
    left of the midline by at least N/4 pixels (a guard band so training patterns never
    illuminate the held-out region)."""
    x = positions[:, 0]
    mid = 0.5 * (float(x.min()) + float(x.max()))
    train = np.flatnonzero(x <= mid - N / 4)
    test = np.flatnonzero(x >= mid)
    return train, test


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli import interrupts
    from ptycho_cli.outputs import check_output_dir
    from ptycho_cli.runfolder import DEMO_NAMES, RUN_INFO, RunFolder, read_run_info

    out = check_output_dir(args.output_dir)
    with RunFolder(out, NAME, DEMO_NAMES) as rf:
        unfinished = read_run_info(rf.work / RUN_INFO) if rf.has_unfinished() else {}
        previous_demo = read_run_info(out / RUN_INFO).get("command") == NAME or (
            (out / DEMO_PNG).exists() and not (out / RUN_INFO).exists()
        )
        own = previous_demo and unfinished.get("command", NAME) == NAME
        rf.check_free(overwrite=bool(args.overwrite or own))
        work = rf.start()
        try:
            rf.write_info({"settings": dataclasses.asdict(_settings(args)), "seed": args.seed})
            code, lines = _run_demo(args, console, work, out)
            rf.commit()
        except BaseException:
            if rf.committed:  # the signal came during the final renames: the demo is complete
                interrupts.add_note(f"the demo in {out} had completed")
                raise
            rf.abandon(keep_if_resumable=False)
            if interrupts.received() is not None:
                interrupts.add_note(f"{out} is unchanged")
            raise
    for line in lines:
        console.result(line)
    return code


def _run_demo(
    args: argparse.Namespace, console: Console, work: Path, out: Path
) -> tuple[int, list[str]]:
    """The demo in the work folder ``work`` of the run folder ``out`` (paths recorded and
    printed are ``out``'s); returns the exit code and the result lines to print."""
    from ptycho_cli import dispatch, factories, figures
    from ptycho_cli.commands._run import (
        framework_hook,
        reconstruct_and_write,
        write_training_outputs,
    )
    from ptycho_cli.commands.evaluate import metric_lines, score_and_write
    from ptycho_cli.compare import compare_to_truth
    from ptycho_cli.outputs import staged
    from ptycho_cli.runfolder import retarget_bundle
    from ptycho_core.io import save_npz
    from ptycho_core.simulation import simulate_scan

    start = time.perf_counter()
    s = _settings(args)

    console.stage(
        f"simulating {s.n_positions} diffraction patterns ({s.N}×{s.N}, "
        f"{s.nphotons:g} photons each) of the realistic scene …"
    )
    scan = simulate_scan(
        N=s.N,
        n_positions=s.n_positions,
        nphotons=s.nphotons,
        seed=args.seed,
        object_size=s.object_size,
    )
    scan = dataclasses.replace(scan, Y=None)  # unsupervised: ground-truth patches not needed
    truth = scan.object
    if truth is None:  # the simulator always returns its object
        raise RuntimeError("the simulated scan has no ground-truth object")
    train_idx, test_idx = split_spatially(scan.positions, s.N)
    if len(train_idx) < 2 * s.gridsize**2 or len(test_idx) < s.gridsize**2:
        raise ValueError(
            f"too few positions for the demo split ({len(train_idx)} train, "
            f"{len(test_idx)} held out); raise --n-positions"
        )
    with staged(work) as tmp:
        save_npz(tmp / "train.npz", scan.subset(train_idx), nphotons=s.nphotons)
        save_npz(tmp / "test.npz", scan.subset(test_idx), nphotons=s.nphotons)
    t_sim = time.perf_counter() - start

    overrides: dict[str, Any] = {
        "nepochs": s.epochs,
        "batch_size": s.batch_size,
        "n_filters_scale": s.n_filters_scale,
        "gridsize": s.gridsize,
        "nphotons": s.nphotons,
        "seed": args.seed,
    }
    if args.backend is not None:
        overrides["backend"] = args.backend
    overrides.update(science_overrides(args, console))
    payload = factories.create_training_payload(
        work / "train.npz",
        work,
        config_file=args.config,
        overrides=overrides,
        execution_config=execution_from_args(args, console),
    )
    backend = payload.config.backend  # --backend, a config file, else the default backend
    console.stage(
        f"training the {backend} backend on {len(train_idx)} patterns (left part) for "
        f"{payload.config.nepochs} epochs …"
    )
    trained = dispatch.train(payload, on_backend_loaded=framework_hook)
    t_train = time.perf_counter() - start - t_sim
    history = trained.history
    retarget_bundle(trained.bundle_path, work, out)
    written = write_training_outputs(work, trained)

    console.stage(f"reconstructing the {len(test_idx)} held-out patterns (right half) …")
    inf = factories.create_inference_payload(
        trained.bundle_path, work / "test.npz", work, execution_config=payload.execution
    )
    rec, files = reconstruct_and_write(
        inf,
        work,
        history=history,
        title="held-out reconstruction (right half of the scan)",
        moved=(work, out),
    )
    written += files
    t_infer = time.perf_counter() - start - t_sim - t_train

    # The floor the numbers mean something against: a flat object (amplitude 1, phase 0) scored
    # on the same region the same way (specs/cli.md, "demo").
    flat = compare_to_truth(np.ones_like(rec.object), rec.coverage, rec.origin, truth).metrics
    flat_floor = {k: float(flat[k]) for k in ("ssim_amp", "ssim_phase")}
    metrics, files, cmp = score_and_write(
        work,
        rec.object,
        rec.coverage,
        rec.origin,
        truth,
        margin=0,
        extra={
            "demo": {
                "settings": s.__dict__,
                "backend": backend,
                "seed": args.seed,
                "train_patterns": int(len(train_idx)),
                "held_out_patterns": int(len(test_idx)),
                "flat_object": flat_floor,
                "timings_s": {"simulate": t_sim, "train": t_train, "infer": t_infer},
            }
        },
    )
    written += files
    with staged(work) as tmp:
        figures.demo_figure(
            tmp / DEMO_PNG,
            cmp.truth,
            cmp.recon,
            cmp.mask,
            metrics,
            history,
            truth_full=truth,
            train_positions=scan.positions[train_idx],
            test_positions=scan.positions[test_idx],
            origin=cmp.origin,
            title=f"ptycho demo ({backend}, N={s.N}, {payload.config.nepochs} epochs, "
            f"{len(train_idx)} training patterns): held-out half vs ground truth",
        )
    written.append(work / DEMO_PNG)

    total = time.perf_counter() - start
    lines = [
        f"ptycho demo: {backend} backend, trained on {len(train_idx)} patterns, "
        f"reconstructed {len(test_idx)} held-out patterns",
        f"time: simulate {t_sim:.1f} s, train {t_train:.1f} s, reconstruct "
        f"{t_infer:.1f} s, total {total:.1f} s",
        "held-out reconstruction vs ground truth:",
        *(f"  {line}" for line in metric_lines(metrics)),
        f"  a flat object on the same region: amplitude SSIM {flat_floor['ssim_amp']:.4f}, "
        f"phase SSIM {flat_floor['ssim_phase']:.4f}",
        f"summary figure: {out / DEMO_PNG}",
        "all outputs:",
        *(f"  {out / Path(p).relative_to(work)}" for p in written),
    ]
    return 0, lines
