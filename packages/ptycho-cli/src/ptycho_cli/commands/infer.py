"""``ptycho infer``: reconstruct a scan with a trained model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptycho_cli.commands._common import add_run_arguments, execution_from_args, science_overrides
from ptycho_cli.console import Console

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
    p.add_argument("data", type=Path, metavar="SCAN.npz", help="scan to reconstruct (DATA-001)")
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("outputs"),
        metavar="DIR",
        help="output folder (default: outputs)",
    )
    add_run_arguments(p, training=False)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli import dispatch, factories
    from ptycho_cli.commands._run import print_files, reconstruct_and_write

    payload = factories.create_inference_payload(
        args.model,
        args.data,
        args.output_dir,
        config_file=args.config,
        overrides=science_overrides(args, console),
        execution_config=execution_from_args(args, console),
    )
    backend = dispatch.check_inference_backend(payload)
    n = payload.data.M if payload.data is not None else 0
    console.stage(f"reconstructing {n} patterns with the {backend} backend …")
    result, written = reconstruct_and_write(payload, args.output_dir)
    shape = result.object.shape
    covered = float((result.coverage > 0).mean())
    secs = result.timings.get("total_s")
    console.result(
        f"reconstructed a {shape[0]}×{shape[1]} object ({covered:.0%} covered) with "
        f"the {result.backend} backend" + (f" in {secs:.1f} s" if secs else "")
    )
    print_files(console, written)
    return 0
