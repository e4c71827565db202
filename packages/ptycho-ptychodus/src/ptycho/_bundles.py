"""Find and verify the ptycho bundle in the folder Ptychodus hands to the child
(``specs/ptychodus.md``). Framework-free.

Ptychodus records a model file and passes a *folder* to ``load_inference_bundle``:

- a file named ``wts.h5.zip`` → its folder (the bundle is ``<folder>/wts.h5.zip``);
- any other ``*.zip`` (e.g. a model saved with "Save Model" as ``m.zip``) → extracted into a
  temporary folder, so the bundle arrives unpacked: ``manifest.json``, ``probe.npy`` and the
  weights entry. It is re-packed into a temporary ``wts.h5.zip`` after checking every entry's
  size and SHA-256 against the manifest, then read with :func:`ptycho_core.bundle.read_bundle`.

Anything else — an original PtychoPINN model (``wts.h5.zip`` without ``manifest.json``, or its
unpacked ``diffraction_to_obj``/``params.dill`` entries), a damaged or foreign archive — is a
:class:`ForeignModelError` naming the path and what was found.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ptycho_core import bundle as core_bundle
from ptycho_core.errors import BundleError

__all__ = ["ForeignModelError", "resolve_bundle"]

logger = logging.getLogger(__name__)

_HINT = (
    "ptycho-ptychodus reconstructs only with bundles written by ptycho (`ptycho train`, "
    "ptycho-tf or ptycho-torch); models of the original PtychoPINN (`ptychopinn`) cannot be "
    "loaded: train a new model from Ptychodus's exported data"
)
_TEMP_DIRS: list[Path] = []


class ForeignModelError(BundleError):
    """The model Ptychodus passed is not a ptycho bundle (a :class:`BundleError`)."""


def _cleanup() -> None:
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_cleanup)


def temp_dir(prefix: str) -> Path:
    """A temporary folder removed when the process exits (Ptychodus runs one child per call)."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    _TEMP_DIRS.append(d)
    return d


def _listing(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir())[:20]
    except OSError:
        return []


def _repack(folder: Path) -> Path:
    """Re-pack an unpacked bundle in ``folder`` into a temporary ``wts.h5.zip``."""
    where = folder / core_bundle.MANIFEST_NAME
    try:
        manifest: Any = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ForeignModelError(
            f"{where}: not a readable ptycho manifest ({exc}); {_HINT}"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != core_bundle.BUNDLE_FORMAT:
        raise ForeignModelError(
            f"{where}: not a ptycho bundle manifest (format "
            f"{manifest.get('format') if isinstance(manifest, dict) else None!r}); {_HINT}"
        )
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not listed:
        raise ForeignModelError(f"{where}: manifest key 'files': expected a non-empty object")
    files: dict[str, bytes] = {}
    for name, info in listed.items():
        entry = folder / name
        if not isinstance(name, str) or Path(name).name != name or not entry.is_file():
            raise BundleError(
                f"{folder}: unpacked bundle lacks the entry {name!r} listed in its manifest "
                f"(found: {_listing(folder)})"
            )
        data = entry.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if (
            not isinstance(info, dict)
            or info.get("size") != len(data)
            or (info.get("sha256") != digest)
        ):
            raise BundleError(
                f"{entry}: size or SHA-256 differs from the manifest (the unpacked bundle was "
                "modified or damaged)"
            )
        files[name] = data
    target = temp_dir("ptycho-ptychodus-bundle-") / core_bundle.BUNDLE_NAME
    core_bundle.write_bundle(target, {k: v for k, v in manifest.items() if k != "files"}, files)
    logger.info("re-packed the unpacked bundle in %s as %s", folder, target)
    return target


def resolve_bundle(model_dir: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """The verified bundle archive for ``model_dir`` and its manifest.

    ``model_dir``: a folder holding ``wts.h5.zip`` or an unpacked bundle, or a bundle file.
    Reads and checks the whole archive (manifest, listed entries, hashes) without importing a
    framework. Raises :class:`ForeignModelError` for anything that is not a ptycho bundle and
    :class:`BundleError` for a damaged one.
    """
    d = Path(model_dir)
    if d.is_file():
        archive = d
    elif (d / core_bundle.BUNDLE_NAME).is_file():
        archive = d / core_bundle.BUNDLE_NAME
    elif (d / core_bundle.MANIFEST_NAME).is_file():
        archive = _repack(d)
    elif d.is_dir():
        raise ForeignModelError(
            f"{d}: no ptycho model bundle here (expected {core_bundle.BUNDLE_NAME} or an "
            f"unpacked bundle with {core_bundle.MANIFEST_NAME}; found {_listing(d)}); {_HINT}"
        )
    else:
        raise core_bundle.BundleNotFoundError(f"model not found: {d}")
    try:
        b = core_bundle.read_bundle(archive)
    except core_bundle.BundleNotFoundError:
        raise
    except BundleError as exc:
        if core_bundle.MANIFEST_NAME in str(exc) or "not a zip" in str(exc).lower():
            raise ForeignModelError(f"{exc}; {_HINT}") from exc
        raise
    return archive, b.manifest
