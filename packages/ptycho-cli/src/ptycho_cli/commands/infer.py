"""``ptycho infer``: reconstruct a scan with a trained model bundle."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ptycho_cli.commands._common import (
    add_run_arguments,
    execution_from_args,
    non_negative_int,
    science_overrides,
)
from ptycho_cli.console import Console
from ptycho_cli.execution import positive_int

NAME = "infer"
HELP = "reconstruct a scan with a trained model; writes recon.npz, recon.h5, recon.png"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(NAME, parents=parents, help=HELP, description=HELP)
    p.add_argument(
        "model",
        type=Path,
        metavar="MODEL",
        help="model bundle wts.h5.zip, or the training output folder holding it",
    )
    p.add_argument(
        "data",
        type=Path,
        metavar="SCAN",
        help="scan to reconstruct: .npz (DATA-001), or .h5 read a chunk at a time (a scan.h5, "
        "or a Ptychodus diffraction.h5 with its product.h5 beside it; specs/data-contracts.md)",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("outputs"),
        metavar="DIR",
        help="output folder (default: outputs)",
    )
    add_run_arguments(p, training=False)
    g = p.add_argument_group("adaptation (specs/training.md)")
    g.add_argument(
        "--adapt-epochs",
        type=non_negative_int,
        default=0,
        metavar="K",
        help="first fine-tune a copy of the model on this scan's own diffraction for K epochs "
        "(physics loss, no ground truth; MODEL is not modified; default 0: no adaptation)",
    )
    g.add_argument(
        "--save-adapted",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep the adapted model in DIR (wts.h5.zip, history.csv; loadable by ptycho infer)",
    )
    p.add_argument(
        "--refine",
        type=positive_int,
        default=None,
        metavar="K",
        help="then refine the object for K iterations by maximum likelihood against the "
        "patterns (ptycho refine's defaults; specs/refinement.md)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli import dispatch, factories
    from ptycho_cli.commands._run import print_files, reconstruct_and_write
    from ptycho_cli.commands.train import follower_rank
    from ptycho_cli.outputs import history_from_manifest
    from ptycho_core.bundle import BUNDLE_NAME
    from ptycho_core.engine import HISTORY_NAME
    from ptycho_core.io import StreamingScan

    payload = factories.create_inference_payload(
        args.model,
        args.data,
        args.output_dir,
        config_file=args.config,
        overrides=science_overrides(args, console),
        execution_config=execution_from_args(args, console),
        adapt_epochs=args.adapt_epochs,
        save_adapted=args.save_adapted,
    )
    backend = dispatch.check_inference_backend(payload)
    if follower_rank(args) > 0:  # a rank another process started: its share only, no outputs
        from ptycho_cli.commands._run import framework_hook

        dispatch.reconstruct(payload, on_backend_loaded=framework_hook)
        return 0
    if isinstance(payload.data, StreamingScan) and (args.adapt_epochs or args.refine):
        console.stage(f"reading all of {args.data} into memory (adaptation/refinement need it)")
        payload = dataclasses.replace(payload, data=payload.data.load())
    for note in payload.warnings:  # e.g. positions outside the object (specs/cli.md)
        console.warn(note)
    n = payload.data.M if payload.data is not None else 0
    k = payload.adapt_epochs
    if k:
        console.stage(
            f"adapting a copy of the model to the {n} patterns for {k} epoch{'s' if k > 1 else ''}"
            f" (physics loss), then reconstructing with the {backend} backend …"
        )
    else:
        console.stage(f"reconstructing {n} patterns with the {backend} backend …")
    if args.refine:
        from ptycho_cli.commands.refine import infer_and_refine

        result, written = infer_and_refine(payload, args.refine, args.output_dir, console)
    else:
        # recon.h5 records the model's training losses (specs/cli.md)
        history = history_from_manifest(payload.manifest)
        result, written = reconstruct_and_write(payload, args.output_dir, history=history)
    if k:
        adapt_s = result.timings.get("adapt_s")
        console.result(
            f"adapted the model for {k} epoch{'s' if k > 1 else ''}"
            + (f" in {adapt_s:.1f} s" if adapt_s is not None else "")
        )
        if payload.save_adapted is not None:
            kept = [payload.save_adapted / name for name in (BUNDLE_NAME, HISTORY_NAME)]
            written = [path for path in kept if path.exists()] + written
    shape = result.object.shape
    covered = float((result.coverage > 0).mean())
    if covered == 0:
        console.warn(f"{args.data}: nothing was reconstructed (coverage is zero everywhere)")
    secs = result.timings.get("total_s")
    console.result(
        f"reconstructed a {shape[0]}×{shape[1]} object ({covered:.0%} covered) with "
        f"the {result.backend} backend" + (f" in {secs:.1f} s" if secs else "")
    )
    print_files(console, written)
    return 0
