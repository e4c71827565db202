"""``ptycho train``: train a model on a scan; write the bundle, history and figures.

The run folder is exclusive and all or nothing (``specs/cli.md``, :mod:`ptycho_cli.runfolder`):
a folder holding another run is refused unless ``--overwrite`` or ``--resume`` is given; the run
works in ``DIR/.ptycho-run/`` and replaces the previous run's files only once it is complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
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
        "scan is reconstructed too (recon.npz, recon.h5, recon.png). A folder that holds another "
        "run is refused unless --overwrite or --resume is given; an interrupted run "
        "(Ctrl-C, SIGTERM) leaves the folder as it was and can be continued with --resume.",
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
    r = p.add_argument_group("existing runs")
    r.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in DIR (its files are replaced only when the new run completes)",
    )
    r.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="DIR|CKPT",
        help="continue a run from its last checkpoint: the unfinished or finished run in the "
        "output folder (no value), the run in folder DIR, or checkpoint file CKPT. Settings "
        "not given are the run's own; give --epochs N to train a finished run further. "
        "Put it after TRAIN.npz (or write --resume=DIR)",
    )
    add_run_arguments(p, training=True)
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli import dispatch, factories, interrupts
    from ptycho_cli.commands._run import (
        framework_hook,
        print_train_summary,
        reconstruct_and_write,
        write_reconstruction_outputs,
        write_training_outputs,
    )
    from ptycho_cli.outputs import check_output_dir
    from ptycho_cli.runfolder import (
        RunFolder,
        adopt_run_settings,
        check_same_settings,
        retarget_bundle,
        run_settings,
    )

    out = check_output_dir(args.output_dir)  # before any data or framework is loaded
    overrides = science_overrides(args, console)
    execution = execution_from_args(args, console)
    if follower_rank(args) > 0:
        return _follow(args, out, overrides, execution)
    with RunFolder(out, NAME) as rf:
        plan = None
        if args.resume is not None:
            plan = rf.plan_resume(
                args.resume, overwrite=args.overwrite, backend=overrides.get("backend")
            )
            overrides, execution = adopt_run_settings(plan.info, overrides, execution)
        else:
            rf.check_free(overwrite=args.overwrite)
        payload = factories.create_training_payload(
            args.train_data,
            out,
            config_file=args.config,
            overrides=overrides,
            execution_config=execution,
            test_data_file=args.test_data,
        )
        cfg = payload.config
        if plan is not None:
            check_same_settings(
                plan.info,
                cfg,
                payload.execution,
                payload.train_data.M,
                plan.source or out,
                0 if plan.in_place else plan.epochs_done,
            )
        work = rf.start(plan)
        moved = (work, out)
        try:
            rf.write_info(
                run_settings(cfg, payload.execution, args.train_data, payload.train_data.M)
            )
            payload = dataclasses.replace(payload, config=dataclasses.replace(cfg, output_dir=work))
            what = "resuming" if plan is not None else "training"
            console.stage(
                f"{what} the {cfg.backend} backend on {payload.train_data.M} patterns "
                f"(N={cfg.model.N}, gridsize={cfg.model.gridsize}, {cfg.nepochs} epochs) …"
            )
            result = dispatch.train(
                payload,
                on_backend_loaded=framework_hook,
                resume_from=plan.checkpoint if plan is not None else None,
            )
            retarget_bundle(result.bundle_path, work, out)
            written = write_training_outputs(work, result)
            if payload.test_data is not None and result.reconstruction is not None:
                # the backend reconstructed the test data with the trained model
                written += write_reconstruction_outputs(
                    work,
                    result.reconstruction,
                    payload.test_data,
                    history=result.history,
                    moved=moved,
                )
            elif payload.test_data is not None:
                console.stage(f"reconstructing {args.test_data} …")
                inf = factories.create_inference_payload(
                    result.bundle_path, args.test_data, work, execution_config=payload.execution
                )
                _, files = reconstruct_and_write(inf, work, history=result.history, moved=moved)
                written += files
            rf.commit()
        except BaseException:
            if rf.committed:  # the signal came during the final renames: the run is complete
                interrupts.add_note(f"the run in {out} had completed")
                raise
            kept = rf.abandon(keep_if_resumable=True)
            if interrupts.received() is not None:
                note = f"{out} is unchanged"
                if kept is not None:
                    note += f"; continue with: ptycho train {args.train_data} -o {out} --resume"
                interrupts.add_note(note)
            raise
    print_train_summary(console, result, [rf.final_path(p) for p in written])
    return 0


def follower_rank(args: argparse.Namespace) -> int:
    """The rank of a process that a distributed launcher started to join another process's run
    (Lightning's DDP launcher re-runs the command with ``LOCAL_RANK`` ≥ 1; torchrun and
    multi-node runs set ``RANK``/``NODE_RANK``; ``srun`` sets ``SLURM_PROCID``, counted only when
    the command asks for several devices or nodes, or a DDP strategy). 0 for the process that
    owns the run folder."""
    for var in ("LOCAL_RANK", "RANK", "NODE_RANK"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    devices = getattr(args, "devices", None)
    strategy = str(getattr(args, "strategy", None) or "")
    nodes = getattr(args, "num_nodes", None) or 1
    distributed = "ddp" in strategy or devices not in (None, 1) or nodes > 1
    procid = os.environ.get("SLURM_PROCID", "").strip()
    if distributed and procid.isdigit() and int(procid) > 0:
        return int(procid)
    return 0


def _follow(
    args: argparse.Namespace, out: Path, overrides: dict[str, Any], execution: dict[str, Any]
) -> int:
    """A distributed follower: train its share in the run's work folder with the owner's
    settings and checkpoint; the owner (rank 0) holds the lock and writes and commits every
    output (``specs/cli.md``)."""
    from ptycho_cli import dispatch, factories
    from ptycho_cli.commands._run import framework_hook
    from ptycho_cli.runfolder import RunFolder, adopt_run_settings

    rf = RunFolder(out, NAME)
    plan = None
    if args.resume is not None:
        plan = rf.locate_resume(args.resume, backend=overrides.get("backend"))
        overrides, execution = adopt_run_settings(plan.info, overrides, execution)
    payload = factories.create_training_payload(
        args.train_data,
        out,
        config_file=args.config,
        overrides=overrides,
        execution_config=execution,
        test_data_file=args.test_data,
    )
    config = dataclasses.replace(payload.config, output_dir=rf.work)
    dispatch.train(
        dataclasses.replace(payload, config=config),
        on_backend_loaded=framework_hook,
        resume_from=plan.checkpoint if plan is not None else None,
    )
    return 0
