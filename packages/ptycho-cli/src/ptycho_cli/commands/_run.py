"""Steps shared by train, infer and demo: run dispatch and write the result files.

The CLI owns ``loss.png`` (``specs/cli.md``): the backend writes the bundle and ``history.csv``,
:func:`write_training_outputs` draws the loss curve from :attr:`TrainResult.history`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptycho_cli import dispatch, figures
from ptycho_cli.console import Console, tame_framework_logging
from ptycho_cli.factories import InferencePayload
from ptycho_cli.outputs import LOSS_PNG, staged, write_reconstruction
from ptycho_cli.runfolder import retarget

if TYPE_CHECKING:
    from ptycho_core.engine import TrainResult
    from ptycho_core.io import ScanData
    from ptycho_core.workflow import Reconstruction


def framework_hook(module: Any) -> None:
    """After a backend was imported: route its framework's logging through ours."""
    tame_framework_logging()


def write_training_outputs(output_dir: Path, result: TrainResult) -> list[Path]:
    """``loss.png`` beside the backend's ``wts.h5.zip`` and ``history.csv``."""
    written = [Path(result.bundle_path)]
    hist = Path(output_dir) / "history.csv"
    if hist.exists():
        written.append(hist)
    with staged(output_dir) as tmp:
        figures.loss_figure(tmp / LOSS_PNG, result.history)
    written.append(Path(output_dir) / LOSS_PNG)
    return written


def write_reconstruction_outputs(
    output_dir: Path,
    result: Reconstruction,
    scan: ScanData,
    *,
    history: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
    moved: tuple[Path, Path] | None = None,
) -> list[Path]:
    """``recon.npz``, ``recon.h5`` and ``recon.png`` of ``result`` (a reconstruction of
    ``scan``), staged: all or nothing. ``moved = (work, final)``: ``output_dir`` is a run's work
    folder that will become ``final`` (``ptycho_cli.runfolder``); the paths the metadata
    records are written as their final ones."""
    if moved is not None:
        result = dataclasses.replace(result, config=retarget(result.config, *moved))
    with staged(output_dir) as tmp:
        names = [
            p.name for p in write_reconstruction(tmp, result, scan, history=history, title=title)
        ]
    return [Path(output_dir) / n for n in names]


def reconstruct_and_write(
    payload: InferencePayload,
    output_dir: Path,
    *,
    history: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
    moved: tuple[Path, Path] | None = None,
) -> tuple[Reconstruction, list[Path]]:
    if payload.data is None:
        raise ValueError(f"{payload.bundle_path}: no scan was given to reconstruct")
    result = dispatch.reconstruct(payload, on_backend_loaded=framework_hook)
    written = write_reconstruction_outputs(
        output_dir, result, payload.data, history=history, title=title, moved=moved
    )
    return result, written


def _seconds(timings: Mapping[str, float]) -> str:
    for key in ("train_s", "fit_s", "total_s"):
        if isinstance(timings.get(key), (int, float)):
            return f"{timings[key]:.1f} s"
    return "n/a"


def _last_finite(values: Sequence[float]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return finite[-1] if finite else None


def print_train_summary(console: Console, result: TrainResult, written: list[Path]) -> None:
    hist = result.history
    tl = _last_finite(hist.get("train_loss") or [])
    vl = _last_finite(hist.get("val_loss") or [])
    head = f"trained with the {result.backend} backend in {_seconds(result.timings)}"
    if tl is not None:
        n = result.epochs_trained
        head += f": {n} epoch{'' if n == 1 else 's'}, final train_loss {tl:.4g}"
    console.result(head)
    if vl is not None:
        console.result(f"final val_loss {vl:.4g}")
    ignored = result.extra.get("ignored_execution") or {}
    if ignored:
        settings = ", ".join(f"{k}={v!r}" for k, v in sorted(dict(ignored).items()))
        console.warn(f"the {result.backend} backend ignored these execution settings: {settings}")
    print_files(console, written)


def print_files(console: Console, written: list[Path]) -> None:
    console.result("wrote:")
    for path in written:
        console.result(f"  {path}")
