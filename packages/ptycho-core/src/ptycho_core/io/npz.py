"""NPZ scan files, the DATA-001 contract (``specs/data-contracts.md``).

``load_npz`` never unpickles and never trusts the archive: :func:`read_npz_arrays` reads each
``.npy`` header with numpy's header parser (whatever it raises is mapped), refuses object
(pickled) dtypes, checks the data size against the header before allocating, and caps what a
file may decompress to (:func:`expansion_limit`). Every failure is a
:class:`~ptycho_core.errors.DataContractError` naming the file and the key.
``save_npz`` writes atomically.

Counts and amplitudes (``specs/data-contracts.md``, "Counts"): a training file exported by
Ptychodus (:func:`is_ptychodus_export`) holds detector counts in ``diff3d``; ``load_npz`` takes
their square roots with a logged warning. Any other integer-typed diffraction is taken as
amplitudes, as DATA-001 says, with a warning that it looks like counts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from ptycho_core.__about__ import __version__
from ptycho_core._jsonutil import json_default
from ptycho_core.errors import DataContractError
from ptycho_core.io._atomic import atomic_write
from ptycho_core.io.scan import ScanData, check_enough_patterns, contract_error

__all__ = [
    "load_npz",
    "save_npz",
    "is_ptychodus_export",
    "read_npz_arrays",
    "expansion_limit",
    "describe_file",
    "METADATA_KEY",
    "NPZ_KEYS",
    "OPTIONAL_KEYS",
    "EXPANSION_FLOOR_BYTES",
    "EXPANSION_RATIO",
]

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
#: Keys ``load_npz(skip=...)`` may leave unread (inference does not need ``Y``).
OPTIONAL_KEYS = (
    "objectGuess",
    "xcoords_start",
    "ycoords_start",
    "scan_index",
    "Y",
    METADATA_KEY,
)


#: Decompression guard (``specs/data-contracts.md``): the arrays read from one file may expand
#: to at most ``max(EXPANSION_FLOOR_BYTES, EXPANSION_RATIO × the file's size on disk)`` bytes.
#: Uncompressed files always pass (their arrays are no larger than the file); a small deflated
#: file cannot claim gigabytes of memory.
EXPANSION_FLOOR_BYTES = 1 << 30
EXPANSION_RATIO = 64
#: More entries than this is not a scan (a scan has at most 11 keys).
MAX_NPZ_ENTRIES = 1024
_READ_CHUNK = 1 << 20
_NPY_MAGIC = b"\x93NUMPY"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def expansion_limit(file_size: int, max_expanded_bytes: int | None = None) -> int:
    """Bytes a reader may decompress from a file of ``file_size`` bytes (the decompression
    guard); ``max_expanded_bytes`` replaces the rule with an explicit limit."""
    if max_expanded_bytes is not None:
        return int(max_expanded_bytes)
    return max(EXPANSION_FLOOR_BYTES, EXPANSION_RATIO * int(file_size))


def describe_file(head: bytes) -> str:
    """A short description of a file that is not a zip archive, from its first bytes."""
    if not head:
        return "an empty file"
    if head.startswith(_NPY_MAGIC):
        return (
            "a single .npy array (numpy.save); a scan is an .npz archive of named arrays "
            "(numpy.savez(path, diffraction=..., xcoords=..., ycoords=..., probeGuess=...))"
        )
    if head.startswith(_HDF5_MAGIC):
        return (
            "an HDF5 file (a Ptychodus product becomes a scan with `ptycho convert`, "
            "given its diffraction data)"
        )
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "a zip archive (an .npz scan or a model bundle?)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle (never loaded: unpickling can run code)"
    try:
        text: str | None = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a character cut at the end of ``head`` is still text
        text = head[: exc.start].decode("utf-8") if exc.start >= len(head) - 3 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "a text file"
    return f"an unrecognised binary file (first bytes {head[:8]!r})"


def read_npz_arrays(
    path: str | os.PathLike[str],
    keys: Collection[str] | None = None,
    *,
    max_expanded_bytes: int | None = None,
) -> dict[str, np.ndarray]:
    """Read named arrays from an ``.npz`` archive safely (never unpickles, never trusts sizes).

    Parameters
    ----------
    path:
        The ``.npz`` file (a zip of ``<key>.npy`` members, as ``numpy.savez`` writes).
    keys:
        The keys to read (absent ones are skipped); None reads every member.
    max_expanded_bytes:
        Replaces the decompression guard (:func:`expansion_limit`) with an explicit limit on the
        summed size of the arrays read.

    Returns
    -------
    dict
        key → array, as stored (dtype, shape, byte order).

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError
        The file cannot be opened.
    DataContractError
        Anything else: not a zip archive (the message says what the file is), a damaged archive
        or ``.npy`` header, an object (pickled) or non-numeric dtype, a member whose data size
        disagrees with its header, too many entries, or arrays that would expand beyond the
        decompression guard. The message names the file and, when one is at fault, the key.
    """
    wanted = None if keys is None else list(keys)

    def select(present: list[str]) -> list[str]:
        return present if wanted is None else [k for k in wanted if k in present]

    return _read_npz(Path(path), select, max_expanded_bytes)


def _read_npz(
    p: Path, select: Callable[[list[str]], list[str]], max_expanded_bytes: int | None
) -> dict[str, np.ndarray]:
    """Open ``p`` and read the keys ``select(present keys)``; see :func:`read_npz_arrays`."""
    with open(p, "rb") as fh:
        head = fh.read(512)
        fh.seek(0)
        if not head.startswith(b"PK") and not zipfile.is_zipfile(fh):
            raise DataContractError(
                f"{p}: expected an .npz archive (a zip of .npy arrays), got {describe_file(head)}"
            )
        limit = expansion_limit(os.fstat(fh.fileno()).st_size, max_expanded_bytes)
        try:
            with zipfile.ZipFile(fh) as zf:
                return _read_members(zf, p, select, limit)
        except DataContractError:
            raise
        except Exception as exc:  # zipfile/zlib report damage with many types
            raise DataContractError(
                f"{p}: not a valid .npz archive, damaged or truncated ({type(exc).__name__}: {exc})"
            ) from exc


def _read_members(
    zf: zipfile.ZipFile, path: Path, select: Callable[[list[str]], list[str]], limit: int
) -> dict[str, np.ndarray]:
    infos = zf.infolist()
    if len(infos) > MAX_NPZ_ENTRIES:
        raise DataContractError(
            f"{path}: {len(infos)} archive entries (more than {MAX_NPZ_ENTRIES}); not a scan"
        )
    by_key: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        # numpy's naming: member "<key>.npy" holds array <key>
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if key in by_key:
            raise DataContractError(f"{path}: key {key!r}: expected one entry, got duplicates")
        by_key[key] = info
    wanted = select(list(by_key))
    total = sum(by_key[k].file_size for k in wanted)
    if total > limit:
        big = max(wanted, key=lambda k: by_key[k].file_size)
        raise contract_error(
            path,
            big,
            f"arrays that decompress to at most {limit} bytes in all (decompression guard: "
            f"max({EXPANSION_FLOOR_BYTES / 2**30:g} GiB, {EXPANSION_RATIO} × the file size); "
            "save the scan uncompressed with numpy.savez, or pass max_expanded_bytes to "
            "load_npz)",
            f"{total} bytes ({by_key[big].file_size} for {big!r})",
        )
    return {k: _read_member(zf, by_key[k], path, k) for k in wanted}


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, key: str) -> np.ndarray:
    """One ``.npy`` member: header checked against the entry size before any allocation."""
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise contract_error(
            path,
            key,
            "a stored or deflated entry (as numpy writes)",
            f"compression method {info.compress_type}",
        )
    part = "entry"
    try:
        with zf.open(info) as fp:
            part = ".npy header"
            version = npformat.read_magic(fp)
            if version == (1, 0):
                shape, fortran, dtype = npformat.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, fortran, dtype = npformat.read_array_header_2_0(fp)
            else:
                raise contract_error(path, key, ".npy format version 1.0 or 2.0", str(version))
            if dtype.hasobject:
                raise contract_error(
                    path,
                    key,
                    "a plain numeric array",
                    "an object (pickled) array, which is never loaded from data files",
                )
            if dtype.kind not in "biufcUS" or dtype.fields is not None or dtype.subdtype:
                raise contract_error(path, key, "a plain numeric array", f"dtype {dtype}")
            if any(d < 0 for d in shape):
                raise contract_error(path, key, "non-negative dimensions", f"shape {shape}")
            count = math.prod(shape)
            nbytes = count * dtype.itemsize
            stored = info.file_size - fp.tell()
            if nbytes != stored:
                raise contract_error(
                    path,
                    key,
                    f"{nbytes} bytes of data for shape {shape} dtype {dtype}",
                    f"{stored} bytes (damaged or truncated entry)",
                )
            part = "array data"
            array = np.empty(count, dtype=dtype)
            if nbytes:
                raw = array.view(np.uint8)  # filled in chunks: no second copy of the data
                pos = 0
                while pos < nbytes:
                    chunk = fp.read(min(_READ_CHUNK, nbytes - pos))
                    if not chunk:
                        raise EOFError(f"entry ends after {pos} of {nbytes} data bytes")
                    raw[pos : pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
                    pos += len(chunk)
            if fp.read(1):  # reaching the end also makes zipfile check the CRC-32
                raise ValueError("more data than the header declares")
    except DataContractError:
        raise
    except Exception as exc:  # damaged headers raise ValueError, SyntaxError, TokenError, ...
        raise contract_error(
            path, key, "a valid .npy array", f"a damaged {part} ({type(exc).__name__}: {exc})"
        ) from exc
    if fortran:
        return array.reshape(shape[::-1]).transpose()
    return array.reshape(shape)


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
        meta = json.loads(text, parse_constant=_reject_constant)
    except (json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise contract_error(path, METADATA_KEY, "a JSON object", f"invalid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise contract_error(path, METADATA_KEY, "a JSON object", type(meta).__name__)
    nphotons = meta.get("nphotons")
    if nphotons is not None and not (
        isinstance(nphotons, int | float)
        and not isinstance(nphotons, bool)
        and math.isfinite(nphotons)
        and nphotons > 0
    ):
        raise contract_error(
            path, f"{METADATA_KEY}.nphotons", "null or a finite number > 0", repr(nphotons)
        )
    return meta


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


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


def is_ptychodus_export(keys: Collection[str]) -> bool:
    """Whether an ``.npz`` with these keys is a training file written by Ptychodus's "Export
    Training Data" (1.7: ``diff3d`` holds detector counts in the source dtype, ``bad_pixels``
    marks the inpainted pixels): ``diff3d`` and ``bad_pixels`` present, ``diffraction`` and
    ``_metadata`` absent (our writer always writes both)."""
    present = set(keys)
    return {"diff3d", "bad_pixels"} <= present and not {"diffraction", METADATA_KEY} & present


def _sqrt_counts(diff: np.ndarray, key: str, path: Path) -> np.ndarray:
    """``sqrt(diff)`` as float32 (counts or intensities → amplitudes); negative values are a
    contract error naming ``key`` (NaN and inf are left for :class:`ScanData` to report)."""
    if diff.dtype.kind not in "iuf" or diff.size == 0:
        return diff  # not numbers ScanData accepts: its own message names the problem
    lowest = diff.min()
    if lowest < 0:
        raise contract_error(
            path, key, "detector counts or intensities >= 0", f"minimum {lowest!r}"
        )
    out = diff.astype(np.float32, copy=diff.dtype != np.float32)
    np.sqrt(out, out=out)
    return out


def _amplitudes(
    diff: np.ndarray, key: str, path: Path, in_file: list[str], intensity: bool | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The amplitudes of the diffraction stack ``diff`` read from ``key``, and the metadata
    entries that record a conversion (the rule of the module docstring)."""
    if intensity:
        return _sqrt_counts(diff, key, path), {"amplitude_from_intensity": True}
    if intensity is None and is_ptychodus_export(in_file):
        peak = float(diff.max()) if diff.size and diff.dtype.kind in "iuf" else 0.0
        amp = _sqrt_counts(diff, key, path)
        logger.warning(
            "%s: a Ptychodus training export ('diff3d' %s with 'bad_pixels', no '_metadata'): "
            "'diff3d' holds detector counts; using their square roots as the diffraction "
            "amplitudes (max %.6g counts -> amplitude %.6g; specs/data-contracts.md)",
            path,
            diff.dtype,
            peak,
            math.sqrt(peak) if peak > 0 else 0.0,
        )
        return amp, {"amplitude_from_intensity": True, "source_format": "ptychodus-training-npz"}
    if intensity is None and diff.dtype.kind in "iu":
        logger.warning(
            "%s: key '%s' holds integers (%s): taken as amplitudes (sqrt of photon counts, "
            "DATA-001). If they are detector counts, convert the file first: "
            "ptycho convert %s OUT.npz --intensity",
            path,
            key,
            diff.dtype,
            path,
        )
    return diff, {}


def load_npz(
    path: str | os.PathLike[str],
    *,
    intensity: bool | None = None,
    min_patterns: int | None = None,
    skip: Collection[str] = (),
    max_expanded_bytes: int | None = None,
) -> ScanData:
    """Read a scan file (DATA-001) into a validated :class:`ScanData`.

    Parameters
    ----------
    path:
        The ``.npz`` file.
    intensity:
        What the file's diffraction holds. ``None`` (default): amplitudes, except in a
        Ptychodus training export (:func:`is_ptychodus_export`), whose ``diff3d`` counts are
        square-rooted with a logged warning; integer-typed amplitudes log a warning that they
        look like counts. ``True``: intensities or counts, always square-rooted (no warning).
        ``False``: amplitudes, taken as stored (no detection, no warning). A conversion is
        recorded in ``scan.metadata`` (``amplitude_from_intensity``, and ``source_format =
        "ptychodus-training-npz"`` for an export).
    min_patterns:
        When given, fewer patterns than this is a :class:`DataContractError` (e.g. ``gridsize**2``).
    skip:
        Optional keys (:data:`OPTIONAL_KEYS`) not to read, e.g. ``("Y",)`` for inference, which
        never uses the ground-truth patches (``(M, N, N)`` complex64, twice the diffraction).
    max_expanded_bytes:
        Replaces the decompression guard (:func:`expansion_limit`).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    DataContractError
        Any contract violation (names the file, key, expected and actual); also a damaged or
        non-zip file and pickled (object) arrays.
    """
    p = Path(path)
    bad_skip = sorted(set(skip) - set(OPTIONAL_KEYS))
    if bad_skip:
        raise ValueError(f"skip: {bad_skip} are not optional keys; allowed: {OPTIONAL_KEYS}")
    if not p.exists():
        raise FileNotFoundError(f"scan file not found: {p}")
    in_file: list[str] = []

    def select(present: list[str]) -> list[str]:
        in_file.extend(sorted(present))
        unknown = sorted(set(present) - set(NPZ_KEYS))
        if unknown:
            logger.debug("%s: ignoring keys not in the contract: %s", p, unknown)
        keys = [k for k in NPZ_KEYS if k in present and k not in skip]
        if "diffraction" in keys and "diff3d" in keys:
            keys.remove("diff3d")  # the legacy key is read only when 'diffraction' is absent
        return keys

    arrays = _read_npz(p, select, max_expanded_bytes)
    if "diffraction" in arrays:
        diff_key = "diffraction"
    elif "diff3d" in arrays:
        diff_key = "diff3d"
        logger.info("%s: no 'diffraction' key; using the legacy 'diff3d' key", p)
    else:
        raise DataContractError(
            f"{p}: missing diffraction data: expected key 'diffraction' (or legacy 'diff3d'); "
            f"keys present: {in_file}"
        )
    missing = [k for k in ("xcoords", "ycoords", "probeGuess") if k not in arrays]
    if missing:
        raise DataContractError(f"{p}: missing required key(s) {missing}; keys present: {in_file}")
    diff = arrays[diff_key]
    if np.iscomplexobj(diff):
        raise contract_error(
            p, diff_key, "real amplitudes (sqrt of intensity)", f"complex dtype {diff.dtype}"
        )
    xc = arrays["xcoords"]
    m_coords = int(xc.shape[0]) if xc.ndim == 1 else None
    diff = _maybe_transpose(diff, m_coords, p)
    meta = _metadata(arrays, p)
    diff, converted = _amplitudes(diff, diff_key, p, in_file, intensity)
    meta.update(converted)
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
        METADATA_KEY: np.array(
            json.dumps(meta, sort_keys=True, allow_nan=False, default=json_default)
        ),
    }
    if scan.object is not None:
        arrays["objectGuess"] = np.asarray(scan.object, dtype=np.complex64)
    if scan.Y is not None:
        arrays["Y"] = np.asarray(scan.Y, dtype=np.complex64)
    with atomic_write(path, "wb") as handle:
        np.savez(handle, allow_pickle=False, **arrays)
    logger.info("wrote %s (%d patterns)", path, scan.M)
