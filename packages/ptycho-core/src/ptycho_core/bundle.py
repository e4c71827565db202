"""Model bundles: one zip archive ``wts.h5.zip`` holding ``manifest.json`` and payload files
(``specs/data-contracts.md``).

Layout::

    manifest.json        first entry; JSON object (see :func:`make_manifest`), plus "files":
                         {name: {"size": bytes, "sha256": hex}} for every other entry
    probe.npy            the normalised probe, (N, N) complex64 (never pickled)
    model.weights.h5     TensorFlow: Keras weights file      | state_dict.pt  PyTorch state dict
    ...                  anything else a backend needs, listed in "files"

Reading never unpickles or executes anything from the archive. It rejects absolute names, ``..``
components, backslashes, duplicate names, entries not listed in the manifest, a missing or invalid
manifest, an unknown format or schema version, archives whose declared uncompressed size exceeds
``max_total_bytes`` (zip-bomb guard), and any entry whose CRC or SHA-256 does not match. Every
failure is a :class:`~ptycho_core.errors.BundleError` naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import logging
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core._jsonutil import json_default
from ptycho_core.backends import BACKEND_NAMES, BACKENDS
from ptycho_core.errors import BundleBackendMismatchError, BundleError
from ptycho_core.io._atomic import atomic_write

__all__ = [
    "BUNDLE_FORMAT",
    "SCHEMA_VERSION",
    "BUNDLE_NAME",
    "MANIFEST_NAME",
    "PROBE_NAME",
    "RESERVED_KEYS",
    "MAX_TOTAL_BYTES",
    "Bundle",
    "BundleNotFoundError",
    "make_manifest",
    "write_bundle",
    "read_bundle",
    "read_manifest",
    "bundle_file",
    "npy_bytes",
    "load_npy_bytes",
]

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "ptycho-bundle"
SCHEMA_VERSION = 1
BUNDLE_NAME = "wts.h5.zip"
MANIFEST_NAME = "manifest.json"
PROBE_NAME = "probe.npy"
#: Default cap on the summed *uncompressed* size of all entries (4 GiB).
MAX_TOTAL_BYTES = 4 * 1024**3
MAX_ENTRIES = 1024
_MAX_MANIFEST_BYTES = 16 * 1024**2
_BACKENDS = BACKEND_NAMES
#: Distributions whose versions every manifest records (``creator``), then the backend's
#: framework distributions (:data:`ptycho_core.backends.BACKENDS`).
_CREATOR_DISTS = ("ptycho-core", *(b.distribution for b in BACKENDS), "ptycho-cli", "numpy")
_FRAMEWORK_DISTS = {b.name: b.framework_distributions for b in BACKENDS}
#: Manifest keys :func:`make_manifest` writes itself; extras may not shadow them.
RESERVED_KEYS = (
    "format",
    "schema_version",
    "backend",
    "model_names",
    "model_config",
    "training_config",
    "intensity_scale",
    "normalization",
    "creator",
    "created",
    "files",
)


class BundleNotFoundError(BundleError, FileNotFoundError):
    """The bundle file does not exist (both a :class:`BundleError` and a ``FileNotFoundError``)."""


@dataclass(eq=False)
class Bundle:
    """A validated bundle: the manifest dict, the payload ``files`` (name → bytes), the ``path``."""

    manifest: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    path: Path | None = None

    @property
    def backend(self) -> str:
        return str(self.manifest["backend"])

    def require(self, name: str) -> bytes:
        """The bytes of entry ``name``; :class:`BundleError` naming the bundle when absent."""
        try:
            return self.files[name]
        except KeyError:
            raise BundleError(
                f"{self.path}: bundle has no entry {name!r} (entries: {sorted(self.files)})"
            ) from None

    def load_npy(self, name: str = PROBE_NAME) -> np.ndarray:
        """Entry ``name`` decoded as a ``.npy`` array (never unpickled)."""
        return load_npy_bytes(self.require(name), name=f"{self.path}:{name}")


def _config_dict(config: Any, what: str) -> dict[str, Any] | None:
    if config is None:
        return None
    if isinstance(config, dict):
        return dict(config)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        return dict(to_dict())
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    raise TypeError(
        f"{what}: expected a dict, a dataclass or an object with to_dict(), "
        f"got {type(config).__name__}"
    )


def _creator_versions(backend: str) -> dict[str, str]:
    versions = {}
    for dist in _CREATOR_DISTS + _FRAMEWORK_DISTS.get(backend, ()):
        try:
            versions[dist] = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            continue
    return versions


def make_manifest(
    backend: str,
    model_config: Any,
    training_config: Any,
    intensity_scale: float,
    normalization: dict[str, Any],
    model_names: list[str] | tuple[str, ...],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the JSON-safe manifest dict.

    ``model_config``/``training_config``: dicts, dataclasses or objects with ``to_dict()``
    (stored in full). ``intensity_scale`` is ``s`` (finite, > 0). ``normalization`` holds facts
    such as ``norm_factor`` and ``nphotons``. ``extra`` keys are added at the top level and may
    not shadow the reserved ones. Creator versions come from ``importlib.metadata`` (no imports).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    s = float(intensity_scale)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"intensity_scale must be finite and > 0, got {intensity_scale!r}")
    manifest: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "backend": backend,
        "model_names": [str(n) for n in model_names],
        "model_config": _config_dict(model_config, "model_config"),
        "training_config": _config_dict(training_config, "training_config"),
        "intensity_scale": s,
        "normalization": _config_dict(normalization, "normalization") or {},
        "creator": _creator_versions(backend),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    for key, value in (extra or {}).items():
        if key in RESERVED_KEYS:
            raise ValueError(
                f"extra manifest key {key!r} would shadow a reserved key {RESERVED_KEYS}"
            )
        manifest[key] = value
    json.dumps(manifest, allow_nan=False, default=json_default)  # fail early if not JSON-safe
    return json.loads(json.dumps(manifest, default=json_default))


_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_name(name: str, where: object) -> None:
    """Reject names that could escape an extraction folder or alias another entry."""
    problem = None
    if not name or "\x00" in name:
        problem = "an empty name or a NUL byte"
    elif "\\" in name:
        problem = "a backslash"
    elif name.startswith("/") or _DRIVE.match(name):
        problem = "an absolute path"
    elif any(part in ("..", ".", "") for part in name.split("/")):
        problem = "a '..', '.' or empty path component"
    if problem:
        raise BundleError(f"{where}: unsafe entry name {name!r} ({problem}); refusing to read")


def write_bundle(
    path: str | os.PathLike[str], manifest: dict[str, Any], files: dict[str, bytes]
) -> Path:
    """Write the archive atomically: ``manifest.json`` first (with per-file size and SHA-256), then
    ``files`` in the given order. Returns the path."""
    target = Path(path)
    if MANIFEST_NAME in files:
        raise ValueError(f"{MANIFEST_NAME!r} is written from the manifest argument, not from files")
    for name in files:
        _check_name(name, target)
    full = dict(manifest)
    full["files"] = {
        name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for name, data in files.items()
    }
    text = json.dumps(full, indent=2, sort_keys=True, allow_nan=False, default=json_default)
    with atomic_write(target, "wb") as handle, zipfile.ZipFile(handle, "w") as zf:
        zf.writestr(MANIFEST_NAME, text.encode("utf-8"), compress_type=zipfile.ZIP_DEFLATED)
        for name, data in files.items():
            zf.writestr(name, bytes(data), compress_type=zipfile.ZIP_DEFLATED)
    logger.info(
        "wrote bundle %s (%s backend, %d entries)", target, manifest.get("backend"), len(files) + 1
    )
    return target


def _check_manifest(manifest: Any, where: object) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: manifest.json is not a JSON object")
    fmt = manifest.get("format")
    if fmt != BUNDLE_FORMAT:
        raise BundleError(
            f"{where}: unknown bundle format {fmt!r} (expected {BUNDLE_FORMAT!r}); "
            "not a ptycho model bundle"
        )
    version = manifest.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        hint = (
            " (written by a newer ptycho; upgrade ptycho-core)"
            if (type(version) is int and version > SCHEMA_VERSION)
            else ""
        )
        raise BundleError(
            f"{where}: unsupported bundle schema_version {version!r}; this ptycho "
            f"reads version {SCHEMA_VERSION}{hint}"
        )
    if manifest.get("backend") not in _BACKENDS:
        raise BundleError(
            f"{where}: manifest 'backend' is {manifest.get('backend')!r}, expected "
            f"one of {_BACKENDS}"
        )
    listed = manifest.get("files", {})
    if not isinstance(listed, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
        for v in listed.values()
    ):
        raise BundleError(f"{where}: manifest 'files' must map names to {{size, sha256}}")
    s = manifest.get("intensity_scale")
    if not (isinstance(s, int | float) and not isinstance(s, bool) and math.isfinite(s) and s > 0):
        raise BundleError(
            f"{where}: manifest key 'intensity_scale': expected a finite number > 0, got {s!r}"
        )
    for key, allowed in (
        ("model_config", (dict, type(None))),
        ("training_config", (dict, type(None))),
        ("normalization", (dict,)),
    ):
        if key in manifest and not isinstance(manifest[key], allowed):
            raise BundleError(
                f"{where}: manifest key {key!r}: expected a JSON object, got "
                f"{type(manifest[key]).__name__}"
            )
    names = manifest.get("model_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BundleError(
            f"{where}: manifest key 'model_names': expected a list of strings, got {names!r}"[:300]
        )
    return manifest


def _open_checked(
    zf: zipfile.ZipFile, where: object, max_total_bytes: int
) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        raise BundleError(f"{where}: {len(infos)} entries (more than {MAX_ENTRIES}); refusing")
    seen: set[str] = set()
    total = 0
    for info in infos:
        _check_name(info.filename, where)
        if info.filename in seen:
            raise BundleError(f"{where}: duplicate entry name {info.filename!r}")
        seen.add(info.filename)
        if info.is_dir():
            raise BundleError(f"{where}: unexpected folder entry {info.filename!r}")
        total += info.file_size
    if total > max_total_bytes:
        raise BundleError(
            f"{where}: entries would expand to {total} bytes, more than the limit "
            f"{max_total_bytes} (zip bomb guard; pass max_total_bytes to raise it)"
        )
    if MANIFEST_NAME not in seen:
        raise BundleError(f"{where}: missing {MANIFEST_NAME}; not a ptycho model bundle")
    return infos


def _read_manifest(zf: zipfile.ZipFile, where: object) -> dict[str, Any]:
    info = zf.getinfo(MANIFEST_NAME)
    if info.file_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: manifest.json is {info.file_size} bytes; refusing")
    try:
        manifest = json.loads(zf.read(info).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # JSONDecodeError included
        raise BundleError(f"{where}: manifest.json is not valid JSON ({exc})") from exc
    return _check_manifest(manifest, where)


def _guarded(path: Path, fn: Any) -> Any:
    """Open ``path`` as a zip and run ``fn(zf)``; map every low-level failure to BundleError."""
    if not path.exists():
        raise BundleNotFoundError(f"{path}: bundle file not found")
    try:
        with zipfile.ZipFile(path, "r") as zf:
            return fn(zf)
    except BundleError:
        raise
    except zipfile.BadZipFile as exc:
        raise BundleError(
            f"{path}: not a valid zip archive, truncated or tampered with ({exc})"
        ) from exc
    except Exception as exc:  # zipfile/zlib report damage with many types
        raise BundleError(f"{path}: damaged bundle archive ({type(exc).__name__}: {exc})") from exc


def bundle_file(path: str | os.PathLike[str]) -> Path:
    """The bundle archive at ``path``: the file itself, or ``BUNDLE_NAME`` inside a folder
    (a training output folder)."""
    p = Path(path)
    return p / BUNDLE_NAME if p.is_dir() else p


def read_manifest(
    path: str | os.PathLike[str], *, max_total_bytes: int = MAX_TOTAL_BYTES
) -> dict[str, Any]:
    """Read and validate only ``manifest.json`` (for ``ptycho inspect``; no payload is read).
    ``path`` may be the archive or the folder holding it (:func:`bundle_file`)."""
    p = bundle_file(path)

    def run(zf: zipfile.ZipFile) -> dict[str, Any]:
        _open_checked(zf, p, max_total_bytes)
        return _read_manifest(zf, p)

    return _guarded(p, run)


def read_bundle(
    path: str | os.PathLike[str],
    expected_backend: str | None = None,
    *,
    max_total_bytes: int = MAX_TOTAL_BYTES,
) -> Bundle:
    """Read and fully validate a bundle (see the module docstring for every check).

    Raises :class:`BundleBackendMismatchError` when ``expected_backend`` is given and differs from
    the archived backend, :class:`BundleNotFoundError` when the file does not exist, and
    :class:`BundleError` for everything else. ``path`` may be the archive or the folder holding
    it (:func:`bundle_file`).
    """
    p = bundle_file(path)

    def run(zf: zipfile.ZipFile) -> Bundle:
        infos = _open_checked(zf, p, max_total_bytes)
        manifest = _read_manifest(zf, p)
        if expected_backend is not None and manifest["backend"] != expected_backend:
            raise BundleBackendMismatchError(p, manifest["backend"], expected_backend)
        listed = manifest.get("files", {})
        files: dict[str, bytes] = {}
        for info in infos:
            if info.filename == MANIFEST_NAME:
                continue
            if info.filename not in listed:
                raise BundleError(
                    f"{p}: entry {info.filename!r} is not listed in the manifest "
                    "(added after writing?)"
                )
            data = zf.read(info)  # zipfile checks the CRC-32 (BadZipFile on mismatch)
            want = listed[info.filename]
            if len(data) != want["size"] or hashlib.sha256(data).hexdigest() != want["sha256"]:
                raise BundleError(
                    f"{p}: entry {info.filename!r} does not match its manifest "
                    "checksum (tampered or corrupted)"
                )
            files[info.filename] = data
        missing = sorted(set(listed) - set(files))
        if missing:
            raise BundleError(f"{p}: entries listed in the manifest are missing: {missing}")
        return Bundle(manifest=manifest, files=files, path=p)

    bundle = _guarded(p, run)
    logger.debug("read bundle %s (%s backend)", p, bundle.backend)
    return bundle


def npy_bytes(array: np.ndarray) -> bytes:
    """Serialise a numeric array as ``.npy`` bytes (object arrays refused, never pickled)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy_bytes(data: bytes, name: str = "array") -> np.ndarray:
    """Decode ``.npy`` bytes with ``allow_pickle=False`` into a non-empty, finite numeric array;
    damage, another dtype, an empty array or NaN/inf → :class:`BundleError` naming ``name``."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # the .npy parser raises several types on damage
        raise BundleError(f"{name}: not a valid (non-pickled) .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biufc":
        raise BundleError(f"{name}: expected a numeric .npy array, got {type(array).__name__}")
    if array.size == 0:
        raise BundleError(f"{name}: expected a non-empty array, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise BundleError(f"{name}: expected finite values, got NaN or infinity")
    return array
