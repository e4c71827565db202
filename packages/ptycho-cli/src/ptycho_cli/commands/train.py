"""``ptycho train``: train a model on a scan; write the bundle, history and figures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptycho_cli.commands._common import add_run_arguments, execution_from_args, science_overrides
from ptycho_cli.console import Console

NAME = "train"
HELP = "train a model on a scan (.npz); writes wts.h5.zip, history.csv, loss.png"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        NAME,
        parents=parents,
        help=HELP,
        description=HELP + ". With --test-data the held-out "
        "scan is reconstructed too (recon.npz, recon.h5, recon.png).",
    )
    p.add_argument("train_data", type=Path, metavar="TRAIN.npz", help="training scan (DATA-001)")
    p.add_argument(
        "--test-data",
        type=Path,
        default=None,
        metavar="TEST.npz",
        help="scan to reconstruct after training",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("outputs"),
        metavar="DIR",
        help="output folder (default: outputs)",
    )
    add_run_arguments(p, training=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli import dispatch, factories
    from ptycho_cli.commands._run import (
        framework_hook,
        print_train_summary,
        reconstruct_and_write,
        write_reconstruction_outputs,
        write_training_outputs,
    )

    payload = factories.create_training_payload(
        args.train_data,
        args.output_dir,
        config_file=args.config,
        overrides=science_overrides(args, console),
        execution_config=execution_from_args(args, console),
        test_data_file=args.test_data,
    )
    cfg = payload.config
    console.stage(
        f"training the {cfg.backend} backend on {payload.train_data.M} patterns "
        f"(N={cfg.model.N}, gridsize={cfg.model.gridsize}, {cfg.nepochs} epochs) …"
    )
    result = dispatch.train(payload, on_backend_loaded=framework_hook)
    written = write_training_outputs(args.output_dir, result)
    if payload.test_data is not None and result.reconstruction is not None:
        # the backend reconstructed the test data with the trained model
        written += write_reconstruction_outputs(
            args.output_dir, result.reconstruction, payload.test_data, history=result.history
        )
    elif payload.test_data is not None:
        console.stage(f"reconstructing {args.test_data} …")
        inf = factories.create_inference_payload(
            result.bundle_path, args.test_data, args.output_dir, execution_config=payload.execution
        )
        _, files = reconstruct_and_write(inf, args.output_dir, history=result.history)
        written += files
    print_train_summary(console, result, written)
    return 0
