"""Result files of the ``ptycho`` commands, written so a failure never leaves partial output.

Multi-file outputs are staged: :func:`staged` yields a hidden temporary folder inside the output
folder; every file is written there, and only when all succeeded are they renamed into place
(each rename is atomic). On any error (or Ctrl-C) the staging folder is removed. Files that
described an earlier result (``metrics.json`` and ``comparison.png`` beside a new
reconstruction) are removed before the new set is moved in, so a folder never mixes two runs.

:func:`check_output_dir` / :func:`check_output_file` find an unusable output path (a file where a
folder is needed, a read-only folder) before any work is done.

Layout (``specs/cli.md``): ``recon.npz`` (arrays), ``recon.h5`` (Ptychodus product),
``recon.png`` (amplitude/phase with scan positions), ``loss.png``, ``metrics.json``,
``comparison.png``.
"""

from __future__ import annotations

import contextlib
import errno
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
from ptycho_core.errors import DataContractError
from ptycho_core.io import (
    ProductFrame,
    ScanData,
    atomic_write,
    scan_to_product,
    write_product,
)

if TYPE_CHECKING:
    from ptycho_core.workflow import Reconstruction

__all__ = [
    "staged",
    "check_output_dir",
    "check_output_file",
    "describe_non_archive",
    "STALE_AFTER_RECONSTRUCTION",
    "write_json",
    "write_recon_npz",
    "read_recon_npz",
    "write_reconstruction",
    "history_from_manifest",
    "to_jsonable",
    "DEFAULT_PIXEL_SIZE_M",
    "RECON_NPZ",
    "RECON_H5",
]

logger = logging.getLogger(__name__)

RECON_NPZ, RECON_H5, RECON_PNG, LOSS_PNG = "recon.npz", "recon.h5", "recon.png", "loss.png"
METRICS_JSON, COMPARISON_PNG = "metrics.json", "comparison.png"
#: Files that scored an earlier reconstruction: removed when a new one is written.
STALE_AFTER_RECONSTRUCTION = (METRICS_JSON, COMPARISON_PNG, "demo.png")
#: A staged file → the files of an earlier result it makes stale (see :func:`staged`).
_INVALIDATES: dict[str, tuple[str, ...]] = {RECON_NPZ: STALE_AFTER_RECONSTRUCTION}
#: Object pixel size written to products when the scan does not carry one (nominal, 10 nm).
DEFAULT_PIXEL_SIZE_M = 1e-8


def _existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe


def check_output_dir(path: str | Path, what: str = "output folder") -> Path:
    """``path`` as an output folder that exists or can be created, and is writable; otherwise
    an ``OSError`` naming ``path`` (``NotADirectoryError`` for a file in the way,
    ``PermissionError`` for a read-only folder). Nothing is created."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{what} is an existing file, not a folder", str(p))
    base = _existing_ancestor(p)
    if not base.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, f"cannot create the {what}: {base} is a file, not a folder", str(p)
        )
    if not os.access(base, os.W_OK | os.X_OK):
        problem = (
            f"{what} is not writable"
            if base == p
            else f"cannot create the {what}: {base} is not writable"
        )
        raise PermissionError(errno.EACCES, problem, str(p))
    return p


def check_output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as an output file: not a folder, in an existing writable folder; otherwise an
    ``OSError`` naming ``path``. Nothing is created."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what} is an existing folder", str(p))
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        problem = "does not exist" if not parent.exists() else "is a file, not a folder"
        raise FileNotFoundError(errno.ENOENT, f"folder {parent} of the {what} {problem}", str(p))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            errno.EACCES, f"folder {parent} of the {what} is not writable", str(p)
        )
    return p


@contextlib.contextmanager
def staged(output_dir: str | Path, *, replaces: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into ``output_dir`` (created).

    ``replaces``: names in ``output_dir`` that belong to an earlier result and must not survive
    beside the new files (removed first, then the new files are renamed in). A staged
    ``recon.npz`` always replaces :data:`STALE_AFTER_RECONSTRUCTION` (the scores of the earlier
    reconstruction)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ptycho-staging-", dir=out))
    try:
        yield tmp
        new = {item.name for item in tmp.iterdir()}
        stale = list(replaces)
        for name in sorted(new):
            stale += _INVALIDATES.get(name, ())
        for name in dict.fromkeys(stale):
            old = out / name
            if name not in new and (old.is_file() or old.is_symlink()):
                logger.info("removing %s (it belonged to the earlier result in %s)", old, out)
                old.unlink()
        for item in sorted(tmp.iterdir()):
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: Leading bytes of the file kinds a user may hand over by mistake.
_MAGIC = (
    (b"PK\x03\x04", None),
    (b"PK\x05\x06", None),  # an empty zip archive
    (b"\x93NUMPY", "a .npy array, not a .npz archive"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file, not a .npz archive"),
)


def describe_non_archive(path: str | Path) -> str | None:
    """``None`` when ``path`` starts like a zip archive (.npz); else what it looks like
    (a .npy array, an HDF5 file, text, an empty file)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a .npz (zip) archive"
    return "a text file, not a .npz archive"


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
    """Read and check a ``recon.npz`` (or the ``recon.npz`` inside a folder).

    Returns its arrays plus ``_metadata`` (dict) and ``path``. ``object`` is a non-empty 2-D
    numeric array, ``coverage`` finite, ``>= 0``, of the object's shape and not zero everywhere,
    ``origin`` two finite numbers, and the object finite where covered; anything else is a
    :class:`~ptycho_core.errors.DataContractError` naming the file and the key."""
    p = Path(path)
    if p.is_dir():
        p = p / RECON_NPZ
    if not p.is_file():
        raise FileNotFoundError(errno.ENOENT, "reconstruction file not found", str(p))
    kind = describe_non_archive(p)
    if kind is not None:
        raise DataContractError(f"{p}: not a reconstruction .npz: {kind}")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # numpy reports damage with many types
        raise DataContractError(
            f"{p}: not a readable reconstruction .npz ({type(exc).__name__}: {exc})"
        ) from exc
    missing = [k for k in ("object", "coverage", "origin") if k not in data]
    if missing:
        raise DataContractError(
            f"{p}: not a ptycho reconstruction: missing key(s) {missing} "
            f"(keys present: {sorted(data)})"
        )
    _check_recon(p, data)
    meta = {}
    if "_metadata" in data:
        try:
            meta = json.loads(str(data["_metadata"]))
        except json.JSONDecodeError:
            meta = {}
    data["_metadata"] = meta if isinstance(meta, dict) else {}
    data["path"] = p
    return data


def _check_recon(p: Path, data: dict[str, Any]) -> None:
    """The checks of :func:`read_recon_npz`; converts ``origin`` to float64 (2,) in place."""
    obj, cov, origin = data["object"], data["coverage"], data["origin"]
    if obj.dtype.kind not in "fc" or obj.ndim != 2 or 0 in obj.shape:
        raise DataContractError(
            f"{p}: key 'object': expected a non-empty (H, W) complex array, got {obj.dtype} "
            f"{obj.shape}"
        )
    if cov.dtype.kind not in "fiub" or cov.shape != obj.shape:
        raise DataContractError(
            f"{p}: key 'coverage': expected a real array of the object's shape {obj.shape}, "
            f"got {cov.dtype} {cov.shape}"
        )
    if not np.isfinite(cov).all() or (cov < 0).any():
        raise DataContractError(f"{p}: key 'coverage': expected finite values >= 0")
    covered = cov > 0
    if not covered.any():
        raise DataContractError(
            f"{p}: key 'coverage' is zero everywhere: nothing was reconstructed (were the "
            "scan positions outside the object?)"
        )
    bad = int((~np.isfinite(obj[covered])).sum())
    if bad:
        raise DataContractError(
            f"{p}: key 'object': {bad} covered pixel(s) are NaN or infinite "
            "(a failed reconstruction)"
        )
    if origin.dtype.kind not in "fiu" or origin.size != 2:
        raise DataContractError(
            f"{p}: key 'origin': expected two numbers (x0, y0), got {origin.dtype} {origin.shape}"
        )
    o = origin.astype(np.float64).reshape(2)
    if not np.isfinite(o).all() or np.abs(o).max() > 2**31:
        raise DataContractError(
            f"{p}: key 'origin': expected finite pixel offsets, got {o.tolist()}"
        )
    data["origin"] = o


def _pixel_size(scan: ScanData | None) -> float:
    if scan is not None:
        for key in ("object_pixel_size_m", "pixel_size_m"):
            value = scan.metadata.get(key)
            if isinstance(value, (int, float)) and value > 0:
                return float(value)
    return DEFAULT_PIXEL_SIZE_M


def history_from_manifest(manifest: Mapping[str, Any]) -> dict[str, list[float]]:
    """The per-epoch training history a bundle's manifest records (key ``history``, written
    by training and adaptation; JSON null = a non-finite value, back as NaN). Columns that are
    not lists of numbers are left out; no history gives ``{}``."""
    raw = manifest.get("history")
    if not isinstance(raw, Mapping):
        return {}
    out: dict[str, list[float]] = {}
    for key, values in raw.items():
        if not isinstance(values, list):
            continue
        if all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values
        ):
            out[str(key)] = [math.nan if v is None else float(v) for v in values]
    return out


def _loss_record(
    history: Mapping[str, Sequence[float]] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(loss_values, loss_epochs)`` for a product: ``train_loss`` float64, and ``epoch`` as
    int64 when it is one whole finite number per loss value (else None: 0..E−1)."""
    losses = np.asarray((history or {}).get("train_loss", []), np.float64).reshape(-1)
    raw = np.asarray((history or {}).get("epoch", []), np.float64).reshape(-1)
    if raw.shape == losses.shape and np.isfinite(raw).all() and (raw == np.round(raw)).all():
        return losses, raw.astype(np.int64)
    return losses, None


def write_reconstruction(
    folder: str | Path,
    result: Reconstruction,
    scan: ScanData,
    *,
    history: Mapping[str, Sequence[float]] | None = None,
    title: str = "",
) -> list[Path]:
    """``recon.npz``, ``recon.h5`` and ``recon.png`` into ``folder`` (use a :func:`staged`
    folder). Returns the written paths.

    ``recon.h5``: loss values ``history["train_loss"]`` at epochs ``history["epoch"]`` (when
    that column matches); placed in the frame of the product the scan was converted from
    (:class:`~ptycho_core.io.ProductFrame` in its metadata), else with the scan's pixel size or
    a nominal one (said in ``comments``)."""
    folder = Path(folder)
    written = [write_recon_npz(folder / RECON_NPZ, result)]
    obj = np.asarray(result.object, np.complex64)
    origin = (float(result.origin[0]), float(result.origin[1]))
    frame = ProductFrame.from_metadata(scan.metadata, scan.source)
    comment = f"ptycho {result.backend} reconstruction"
    fields: dict[str, Any]
    if frame is not None:
        fields = frame.product_fields((obj.shape[0], obj.shape[1]), origin)
        if scan.metadata.get("converted_from"):
            comment += f"; frame of {scan.metadata['converted_from']}"
    else:
        pixel = _pixel_size(scan)
        fields = {"pixel_size_m": pixel}
        if pixel == DEFAULT_PIXEL_SIZE_M:
            comment += f"; pixel size {pixel:g} m is nominal (not recorded in the input scan)"
    losses, epochs = _loss_record(history)
    product = scan_to_product(
        scan,
        obj,
        origin_px=origin,
        loss_values=losses if losses.size else None,
        loss_epochs=epochs if losses.size else None,
        name="ptycho",
        comments=comment,
        **fields,
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
