"""``find_best_checkpoint`` for the Ptychodus "PtychoPINN-Torch" entry (``specs/torch-backend.md``,
"Ptychodus entry"): the model file Ptychodus records after training is the run's bundle."""

from __future__ import annotations

from pathlib import Path

from ptycho_core.bundle import BUNDLE_NAME

__all__ = ["find_best_checkpoint"]


def find_best_checkpoint(run_dir: str | Path) -> Path | None:
    """``<run_dir>/wts.h5.zip`` (the trained bundle, which Ptychodus loads, copies on "Save
    Model" and reloads) when it exists, else None."""
    path = Path(run_dir) / BUNDLE_NAME
    return path if path.is_file() else None
