"""Data conversions between Ptychodus's PtychoPINN payloads and ptycho's :class:`ScanData`
(``specs/ptychodus.md``). Framework-free (NumPy and ``ptycho_core`` only).

- Ptychodus sends detector **counts**; ptycho's scans hold the amplitude ``sqrt(counts)``.
- Ptychodus sends the probe as a mode stack ``(modes, N, N)``; ptycho takes one mode.
- Positions arrive as object-pixel ``x`` and ``y`` (Ptychodus's own object geometry), the
  frame of DATA-001, so they are used as they are.
- A Ptychodus "Export Training Data" NPZ (``diff3d`` + ``bad_pixels``, no ``diffraction`` and
  no ``_metadata``) holds counts; any other NPZ is a DATA-001 scan (amplitudes).
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core.errors import DataContractError
from ptycho_core.io import ScanData, load_npz
from ptycho_core.io.npz import read_npz_arrays
from ptycho_core.io.scan import squeeze_probe

__all__ = [
    "EXPORT_KEYS",
    "counts_to_amplitude",
    "is_ptychodus_export",
    "read_scan_file",
    "single_mode_probe",
]

logger = logging.getLogger(__name__)

#: Keys that together mark a Ptychodus "Export Training Data" NPZ (detector counts).
EXPORT_KEYS: tuple[str, ...] = ("diff3d", "bad_pixels")


def counts_to_amplitude(counts: Any, source: object) -> np.ndarray:
    """``sqrt(counts)`` as ``(M, N, N) float32`` photon-unit amplitude.

    ``counts``: ``(M, N, N)`` detector counts, integer or float. Negative values (biharmonic
    inpainting of bad pixels in a float stack can undershoot) are set to 0 with a logged
    warning; non-finite or complex values are a :class:`DataContractError` naming ``source``.
    """
    a = np.asarray(counts)
    if a.dtype == object or np.iscomplexobj(a) or not np.issubdtype(a.dtype, np.number):
        raise DataContractError(
            f"{source}: key 'diff3d': expected real detector counts, got dtype {a.dtype}"
        )
    if a.ndim != 3:
        raise DataContractError(
            f"{source}: key 'diff3d': expected a 3-D stack (M, N, N), got shape {a.shape}"
        )
    f = a.astype(np.float32)
    if not np.isfinite(f).all():
        raise DataContractError(f"{source}: key 'diff3d': holds NaN or infinite counts")
    negative = int(np.count_nonzero(f < 0))
    if negative:
        logger.warning(
            "%s: %d negative count(s) (min %.4g) set to 0 before the square root",
            source,
            negative,
            float(f.min()),
        )
        np.maximum(f, 0, out=f)
    return np.sqrt(f)


def single_mode_probe(probe: Any, source: object) -> np.ndarray:
    """The ``(N, N) complex64`` probe from ``(N, N)``, ``(1, N, N)`` or ``(N, N, 1)``.

    A mode stack with more than one mode is a :class:`DataContractError` naming the shape and
    saying what to change in Ptychodus.
    """
    p = np.asarray(probe)
    if p.ndim == 3 and p.shape[0] > 1 and p.shape[2] != 1:
        raise DataContractError(
            f"{source}: key 'probeGuess': ptycho reconstructs with a single-mode probe; got "
            f"{p.shape[0]} probe modes (shape {tuple(p.shape)}). Set the number of probe modes "
            "to 1 in Ptychodus (or keep only the first mode) and try again"
        )
    return squeeze_probe(p, source).astype(np.complex64)


def _npz_keys(path: Path) -> list[str] | None:
    """The array names in an ``.npz`` (None when it is not a zip: load_npz then says what it
    is)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[: -len(".npy")] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError):
        return None


def is_ptychodus_export(keys: list[str]) -> bool:
    """True for the keys of a Ptychodus "Export Training Data" NPZ (counts in ``diff3d``)."""
    return (
        all(k in keys for k in EXPORT_KEYS)
        and "diffraction" not in keys
        and ("_metadata" not in keys)
    )


def read_scan_file(path: str | os.PathLike[str]) -> ScanData:
    """Read a scan NPZ: a Ptychodus export (counts → ``sqrt``, logged) or a DATA-001 file
    (amplitudes, through :func:`ptycho_core.io.load_npz`). Never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"scan file not found: {p}")
    keys = _npz_keys(p)
    if keys is None or not is_ptychodus_export(keys):
        return load_npz(p)
    arrays = read_npz_arrays(
        p,
        (
            "diff3d",
            "xcoords",
            "ycoords",
            "xcoords_start",
            "ycoords_start",
            "probeGuess",
            "objectGuess",
            "scan_index",
        ),
    )
    missing = [k for k in ("xcoords", "ycoords", "probeGuess") if k not in arrays]
    if missing:
        raise DataContractError(f"{p}: missing required key(s) {missing}; keys present: {keys}")
    logger.info(
        "%s: a Ptychodus export (keys %s): 'diff3d' holds detector counts; using sqrt(counts) "
        "as the amplitude",
        p,
        list(EXPORT_KEYS),
    )
    return ScanData(
        diffraction=counts_to_amplitude(arrays["diff3d"], p),
        xcoords=arrays["xcoords"],
        ycoords=arrays["ycoords"],
        probe=single_mode_probe(arrays["probeGuess"], p),
        object=arrays.get("objectGuess"),
        xcoords_start=arrays.get("xcoords_start"),
        ycoords_start=arrays.get("ycoords_start"),
        scan_index=arrays.get("scan_index"),
        metadata={"source_format": "ptychodus-export", "diffraction_units": "sqrt(counts)"},
        source=str(p),
    )
