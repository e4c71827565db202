"""NPZ scan files, the DATA-001 contract (``specs/data-contracts.md``).

``load_npz`` never unpickles: ``np.load(allow_pickle=False)``; an object array in the file is a
:class:`~ptycho_core.errors.DataContractError`. ``save_npz`` writes atomically.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core.__about__ import __version__
from ptycho_core._jsonutil import json_default
from ptycho_core.errors import DataContractError
from ptycho_core.io._atomic import atomic_write
from ptycho_core.io.scan import ScanData, check_enough_patterns, contract_error

__all__ = ["load_npz", "save_npz", "METADATA_KEY", "NPZ_KEYS"]

logger = logging.getLogger(__name__)

METADATA_KEY = "_metadata"
#: Every key of the contract (others are ignored with a debug log).
NPZ_KEYS = (
    "diffraction",
    "diff3d",
    "xcoords",
    "ycoords",
    "probeGuess",
    "objectGuess",
    "xcoords_start",
    "ycoords_start",
    "scan_index",
    "Y",
    METADATA_KEY,
)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read every member of the NPZ eagerly, mapping low-level failures to DataContractError."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DataContractError(
                    f"{path}: expected an .npz archive (a zip of .npy arrays), "
                    "got a single .npy array"
                )
            out = {}
            for key in npz.files:
                try:
                    out[key] = npz[key]
                except ValueError as exc:
                    if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                        raise contract_error(
                            path,
                            key,
                            "a plain numeric array",
                            "an object (pickled) array, which is never loaded from data files",
                        ) from exc
                    raise contract_error(path, key, "a readable .npy member", str(exc)) from exc
            return out
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise
    except DataContractError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise DataContractError(f"{path}: not a valid .npz archive ({exc})") from exc
    except (
        ValueError,
        OSError,
        EOFError,
        KeyError,
        RuntimeError,
        TypeError,
        NotImplementedError,
        AttributeError,
        MemoryError,
        IndexError,
        OverflowError,
        UnicodeDecodeError,
    ) as exc:
        # np.load raises ValueError for pickled data and unknown magic, zipfile raises
        # BadZipFile/EOFError/OSError/NotImplementedError on damage, the .npy header parser
        # raises ValueError/SyntaxError-derived errors. All of them mean: this is not a valid scan.
        raise DataContractError(
            f"{path}: not a valid .npz scan file ({type(exc).__name__}: {exc})"
        ) from exc
    except SyntaxError as exc:  # a damaged .npy header is parsed with ast.literal_eval
        raise DataContractError(
            f"{path}: not a valid .npz scan file (bad .npy header: {exc})"
        ) from exc


def _metadata(arrays: dict[str, np.ndarray], path: Path) -> dict[str, Any]:
    if METADATA_KEY not in arrays:
        return {}
    raw = arrays[METADATA_KEY]
    if raw.ndim != 0 or raw.dtype.kind not in "US":
        raise contract_error(
            path,
            METADATA_KEY,
            "a JSON string (0-d str array)",
            f"shape {raw.shape} dtype {raw.dtype}",
        )
    text = raw.item()
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise contract_error(path, METADATA_KEY, "a JSON object", f"invalid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise contract_error(path, METADATA_KEY, "a JSON object", type(meta).__name__)
    return meta


def _maybe_transpose(diff: np.ndarray, m_coords: int | None, path: Path) -> np.ndarray:
    """Transpose a legacy ``(N, N, M)`` stack when that reading is the only consistent one."""
    if diff.ndim != 3:
        return diff
    a, b, c = diff.shape
    if a == b and b != c and (m_coords is None or m_coords == c) and m_coords != a:
        warnings.warn(
            f"{path}: diffraction stored as (N, N, M) = {diff.shape}; transposing to (M, N, N)",
            UserWarning,
            stacklevel=3,
        )
        logger.warning(
            "%s: transposed diffraction from (N, N, M) %s to (M, N, N)", path, diff.shape
        )
        return np.ascontiguousarray(np.moveaxis(diff, 2, 0))
    return diff


def load_npz(path: str | os.PathLike[str], *, min_patterns: int | None = None) -> ScanData:
    """Read a scan file (DATA-001) into a validated :class:`ScanData`.

    Parameters
    ----------
    path:
        The ``.npz`` file.
    min_patterns:
        When given, fewer patterns than this is a :class:`DataContractError` (e.g. ``gridsize**2``).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    DataContractError
        Any contract violation (names the file, key, expected and actual); also a damaged or
        non-zip file and pickled (object) arrays.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"scan file not found: {p}")
    arrays = _read_arrays(p)
    if "diffraction" in arrays:
        diff_key = "diffraction"
    elif "diff3d" in arrays:
        diff_key = "diff3d"
        logger.info("%s: no 'diffraction' key; using the legacy 'diff3d' key", p)
    else:
        raise DataContractError(
            f"{p}: missing diffraction data: expected key 'diffraction' (or legacy 'diff3d'); "
            f"keys present: {sorted(arrays)}"
        )
    missing = [k for k in ("xcoords", "ycoords", "probeGuess") if k not in arrays]
    if missing:
        raise DataContractError(
            f"{p}: missing required key(s) {missing}; keys present: {sorted(arrays)}"
        )
    unknown = sorted(set(arrays) - set(NPZ_KEYS))
    if unknown:
        logger.debug("%s: ignoring keys not in the contract: %s", p, unknown)

    diff = arrays[diff_key]
    if np.iscomplexobj(diff):
        raise contract_error(
            p, diff_key, "real amplitudes (sqrt of intensity)", f"complex dtype {diff.dtype}"
        )
    xc = arrays["xcoords"]
    m_coords = int(xc.shape[0]) if xc.ndim == 1 else None
    diff = _maybe_transpose(diff, m_coords, p)
    meta = _metadata(arrays, p)
    try:
        scan = ScanData(
            diffraction=diff,
            xcoords=xc,
            ycoords=arrays["ycoords"],
            probe=arrays["probeGuess"],
            object=arrays.get("objectGuess"),
            xcoords_start=arrays.get("xcoords_start"),
            ycoords_start=arrays.get("ycoords_start"),
            scan_index=arrays.get("scan_index"),
            Y=arrays.get("Y"),
            metadata=meta,
            source=str(p),
        )
    except DataContractError as exc:
        if diff_key == "diff3d" and "'diffraction'" in str(exc):
            raise DataContractError(str(exc).replace("'diffraction'", "'diff3d'")) from None
        raise
    if min_patterns is not None:
        check_enough_patterns(scan, min_patterns)
    logger.debug("%s: loaded %d patterns of %dx%d", p, scan.M, scan.N, scan.N)
    return scan


def save_npz(
    path: str | os.PathLike[str], scan: ScanData, *, nphotons: float | None = None
) -> None:
    """Write ``scan`` as a DATA-001 ``.npz`` atomically (uncompressed; float32/complex64).

    Writes ``diffraction`` (never ``diff3d``), ``xcoords``, ``ycoords``, ``probeGuess``,
    ``xcoords_start``, ``ycoords_start``, ``scan_index``, ``objectGuess`` and ``Y`` when present,
    and ``_metadata``: a JSON string holding ``scan.metadata`` plus ``units``, ``nphotons``
    (argument, else ``scan.metadata["nphotons"]``, else null), ``creator`` and ``creator_version``.
    """
    meta = dict(scan.metadata)
    if nphotons is None:
        nphotons = meta.get("nphotons")
    meta.update(
        {
            "format": "ptycho-npz",
            "contract": "DATA-001",
            "units": {
                "diffraction": "amplitude (sqrt of photon counts)",
                "xcoords": "object pixels",
                "ycoords": "object pixels",
            },
            "nphotons": None if nphotons is None else float(nphotons),
            "creator": "ptycho-core",
            "creator_version": __version__,
        }
    )
    arrays: dict[str, np.ndarray] = {
        "diffraction": np.asarray(scan.diffraction, dtype=np.float32),
        "xcoords": np.asarray(scan.xcoords, dtype=np.float64),
        "ycoords": np.asarray(scan.ycoords, dtype=np.float64),
        "probeGuess": np.asarray(scan.probe, dtype=np.complex64),
        "xcoords_start": np.asarray(scan.xcoords_start, dtype=np.float64),
        "ycoords_start": np.asarray(scan.ycoords_start, dtype=np.float64),
        "scan_index": np.asarray(scan.scan_index, dtype=np.int64),
        METADATA_KEY: np.array(json.dumps(meta, sort_keys=True, default=json_default)),
    }
    if scan.object is not None:
        arrays["objectGuess"] = np.asarray(scan.object, dtype=np.complex64)
    if scan.Y is not None:
        arrays["Y"] = np.asarray(scan.Y, dtype=np.complex64)
    with atomic_write(path, "wb") as handle:
        np.savez(handle, allow_pickle=False, **arrays)
    logger.info("wrote %s (%d patterns)", path, scan.M)
