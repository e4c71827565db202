"""Steps shared by train, infer and demo: run dispatch and write the result files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptycho_cli import dispatch, figures
from ptycho_cli.console import Console, tame_framework_logging
from ptycho_cli.factories import InferencePayload
from ptycho_cli.outputs import LOSS_PNG, staged, write_reconstruction


def framework_hook(module: Any) -> None:
    """After a backend was imported: route its framework's logging through ours."""
    tame_framework_logging()


def write_training_outputs(output_dir: Path, results: Mapping[str, Any]) -> list[Path]:
    """``loss.png`` beside the backend's ``wts.h5.zip`` and ``history.csv``."""
    written = [Path(results["bundle_path"])]
    hist = Path(output_dir) / "history.csv"
    if hist.exists():
        written.append(hist)
    with staged(output_dir) as tmp:
        figures.loss_figure(tmp / LOSS_PNG, results.get("history") or {})
    written.append(Path(output_dir) / LOSS_PNG)
    return written


def reconstruct_and_write(
    payload: InferencePayload,
    output_dir: Path,
    *,
    history: Mapping[str, Any] | None = None,
    title: str = "",
) -> tuple[dict[str, Any], list[Path]]:
    results = dispatch.reconstruct(payload, on_backend_loaded=framework_hook)
    with staged(output_dir) as tmp:
        names = [
            p.name
            for p in write_reconstruction(tmp, results, payload.data, history=history, title=title)
        ]
    return results, [Path(output_dir) / n for n in names]


def _seconds(results: Mapping[str, Any]) -> str:
    t = results.get("timings") or {}
    for key in ("train_s", "fit_s", "total_s"):
        if isinstance(t.get(key), (int, float)):
            return f"{t[key]:.1f} s"
    return "n/a"


def print_train_summary(console: Console, results: Mapping[str, Any], written: list[Path]) -> None:
    hist = results.get("history") or {}
    tl, vl = hist.get("train_loss") or [], hist.get("val_loss") or []
    console.result(
        f"trained with the {results['backend']} backend in {_seconds(results)}: "
        f"{len(tl)} epochs, final train_loss {tl[-1]:.4g}"
        if tl
        else f"trained with the {results['backend']} backend in {_seconds(results)}"
    )
    if vl:
        console.result(f"final val_loss {vl[-1]:.4g}")
    print_files(console, written)


def print_files(console: Console, written: list[Path]) -> None:
    console.result("wrote:")
    for path in written:
        console.result(f"  {path}")
