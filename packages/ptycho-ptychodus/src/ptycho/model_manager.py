"""``ptycho.model_manager``: save the model trained in this process (``specs/ptychodus.md``).

Ptychodus's training child calls ``run_cdi_example`` and then ``save(output_dir)`` with no
model argument, so the last trained bundle is remembered per process (:func:`remember`) — the
one piece of process-global state besides ``ptycho.params.cfg``, both required by Ptychodus's
calling sequence.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ptycho_core.bundle import BUNDLE_NAME
from ptycho_core.io import atomic_write

__all__ = ["last_bundle", "remember", "save"]

logger = logging.getLogger(__name__)

_last: list[Path] = []


def remember(bundle_path: Path) -> None:
    """Record ``bundle_path`` as the model :func:`save` writes."""
    _last[:] = [Path(bundle_path)]


def last_bundle() -> Path | None:
    """The bundle recorded by :func:`remember` (None before any training)."""
    return _last[0] if _last else None


def save(out_prefix: str | os.PathLike[str]) -> Path:
    """Copy the last trained bundle to ``<out_prefix>/wts.h5.zip`` (atomic); returns that path.

    ``RuntimeError`` when nothing was trained in this process.
    """
    source = last_bundle()
    if source is None or not source.is_file():
        raise RuntimeError(
            "ptycho.model_manager.save: no model was trained in this process "
            "(call ptycho.workflows.components.run_cdi_example first)"
        )
    target = Path(out_prefix) / BUNDLE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.resolve() != source.resolve():
        with atomic_write(target, "wb") as handle, open(source, "rb") as src:
            shutil.copyfileobj(src, handle)
    logger.info("saved model %s", target)
    return target
