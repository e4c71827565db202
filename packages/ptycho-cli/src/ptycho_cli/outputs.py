"""Result files of the ``ptycho`` commands, written so a failure never leaves partial output.

Multi-file outputs are staged: :func:`staged` yields a hidden temporary folder inside the output
folder; every file is written there, and only when all succeeded are they renamed into place
(each rename is atomic). On any error (or Ctrl-C) the staging folder is removed.

Layout (``specs/cli.md``): ``recon.npz`` (arrays), ``recon.h5`` (Ptychodus product),
``recon.png`` (amplitude/phase with scan positions), ``loss.png``, ``metrics.json``,
``comparison.png``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ptycho_cli import figures
from ptycho_core.io import ScanData, atomic_write, scan_to_product, write_product

if TYPE_CHECKING:
    from ptycho_core.workflow import Reconstruction

__all__ = [
    "staged",
    "write_json",
    "write_recon_npz",
    "read_recon_npz",
    "write_reconstruction",
    "to_jsonable",
    "DEFAULT_PIXEL_SIZE_M",
    "RECON_NPZ",
    "RECON_H5",
]

logger = logging.getLogger(__name__)

RECON_NPZ, RECON_H5, RECON_PNG, LOSS_PNG = "recon.npz", "recon.h5", "recon.png", "loss.png"
METRICS_JSON, COMPARISON_PNG = "metrics.json", "comparison.png"
#: Object pixel size written to products when the scan does not carry one (nominal, 10 nm).
DEFAULT_PIXEL_SIZE_M = 1e-8


@contextlib.contextmanager
def staged(output_dir: str | Path) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into ``output_dir`` (created)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ptycho-staging-", dir=out))
    try:
        yield tmp
        for item in sorted(tmp.iterdir()):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays, paths and non-finite floats → JSON-safe values (NaN → null)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def write_json(path: str | Path, data: Any) -> Path:
    with atomic_write(path, "w") as handle:
        json.dump(to_jsonable(data), handle, indent=2, sort_keys=True)
        handle.write("\n")
    return Path(path)


def write_recon_npz(path: str | Path, result: Reconstruction) -> Path:
    """``object`` (H,W) complex64, ``amplitude``, ``phase``, ``coverage`` (H,W) float32,
    ``origin`` (2,) (x0, y0) object pixels of array pixel (0, 0), ``positions`` (M,2) (x, y),
    and ``_metadata`` (JSON: backend, config, timings)."""
    meta = {
        "backend": result.backend,
        "config": result.config,
        "timings": result.timings,
        "format": "ptycho-recon",
        "version": 1,
        "units": {"positions": "object pixels (x, y)", "phase": "rad"},
    }
    with atomic_write(path, "wb") as handle:
        np.savez(
            handle,
            object=np.asarray(result.object, np.complex64),
            amplitude=np.asarray(result.amplitude, np.float32),
            phase=np.asarray(result.phase, np.float32),
            coverage=np.asarray(result.coverage, np.float32),
            origin=np.asarray(result.origin, np.float64).reshape(2),
            positions=np.asarray(result.positions, np.float64).reshape(-1, 2),
            _metadata=np.array(json.dumps(to_jsonable(meta), sort_keys=True)),
        )
    return Path(path)


def read_recon_npz(path: str | Path) -> dict[str, Any]:
    """Read a ``recon.npz`` (or the ``recon.npz`` inside a folder); ValueError naming the file
    and the missing keys when it is not one."""
    p = Path(path)
    if p.is_dir():
        p = p / RECON_NPZ
    if not p.is_file():
        raise FileNotFoundError(f"{p}: reconstruction file not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # numpy reports damage with many types
        raise ValueError(f"{p}: not a readable reconstruction .npz ({exc})") from exc
    missing = [k for k in ("object", "coverage", "origin") if k not in data]
    if missing:
        raise ValueError(
            f"{p}: not a ptycho reconstruction: missing key(s) {missing} "
            f"(keys present: {sorted(data)})"
        )
    meta = {}
    if "_metadata" in data:
        try:
            meta = json.loads(str(data["_metadata"]))
        except json.JSONDecodeError:
            meta = {}
    data["_metadata"] = meta
    data["path"] = p
    return data


def _pixel_size(scan: ScanData | None) -> float:
    if scan is not None:
        for key in ("object_pixel_size_m", "pixel_size_m"):
            value = scan.metadata.get(key)
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
    return DEFAULT_PIXEL_SIZE_M


def write_reconstruction(
    folder: str | Path,
    result: Reconstruction,
    scan: ScanData,
    *,
    history: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
) -> list[Path]:
    """``recon.npz``, ``recon.h5`` (with ``history["train_loss"]`` as its loss values) and
    ``recon.png`` into ``folder`` (use a :func:`staged` folder). Returns the written paths."""
    folder = Path(folder)
    written = [write_recon_npz(folder / RECON_NPZ, result)]
    pixel = _pixel_size(scan)
    losses = np.asarray((history or {}).get("train_loss", []), np.float64)
    comment = f"ptycho {result.backend} reconstruction" + (
        ""
        if pixel != DEFAULT_PIXEL_SIZE_M
        else f"; pixel size {pixel:g} m is nominal (not recorded in the input scan)"
    )
    product = scan_to_product(
        scan,
        np.asarray(result.object, np.complex64),
        pixel_size_m=pixel,
        origin_px=(float(result.origin[0]), float(result.origin[1])),
        loss_values=losses if losses.size else None,
        name="ptycho",
        comments=comment,
    )
    write_product(folder / RECON_H5, product)
    written.append(folder / RECON_H5)
    written.append(
        figures.reconstruction_figure(
            folder / RECON_PNG,
            np.asarray(result.amplitude),
            np.asarray(result.phase),
            positions=np.asarray(result.positions).reshape(-1, 2),
            origin=np.asarray(result.origin).reshape(2),
            coverage=np.asarray(result.coverage),
            title=title,
        )
    )
    return written
