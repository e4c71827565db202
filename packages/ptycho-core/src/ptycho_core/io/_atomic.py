"""Atomic file writing: a temporary file in the target's folder, fsync, then ``os.replace``.

Every writer in every ptycho package goes through :func:`atomic_write`, so an interrupted run
never leaves a half-written bundle, NPZ or product file behind (``specs/cli.md``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_path"]


def _named(exc: OSError, target: Path) -> OSError:
    """``exc`` re-made to name ``target`` instead of the hidden temporary file (the user never
    sees the temporary names; ``ptycho: error: <target>: <problem>``)."""
    if exc.errno == errno.ENOENT and not target.parent.is_dir():
        strerror = f"folder {target.parent} does not exist"
    else:
        strerror = exc.strerror or str(exc)
    return type(exc)(exc.errno, strerror, str(target))


def _mkstemp(target: Path, folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    except OSError as exc:
        raise _named(exc, target) from exc


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", **open_kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it onto ``path``.

    Parameters
    ----------
    path:
        The final file. Its parent folder must exist.
    mode:
        ``"wb"`` (default) or ``"w"`` (text, ``encoding`` defaults to UTF-8). Only write modes.
    open_kwargs:
        Passed to :func:`open` (e.g. ``newline``).

    On any exception inside the ``with`` block the temporary file is removed, the target is left
    untouched and the exception propagates. An ``OSError`` creating or renaming the temporary
    file names ``path`` (not the temporary name). The temporary name starts with ``.<name>.``
    and ends with ``.tmp`` so it is easy to recognise.
    """
    if mode not in ("w", "wb", "wt", "w+b", "wb+", "w+"):
        raise ValueError(f"atomic_write supports write modes only, got mode={mode!r}")
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    fd, tmp_name = _mkstemp(target, folder, f".{target.name}.", ".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the usual umask-based permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        try:
            os.replace(tmp_name, target)
        except OSError as exc:  # e.g. the target is a folder
            raise _named(exc, target) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary *path* next to ``path``; on success rename it onto ``path``.

    For libraries that insist on writing to a file name themselves (Keras ``save_weights``,
    ``h5py.File``). ``suffix`` defaults to the target's full suffix (``.weights.h5`` stays
    ``.weights.h5``, which Keras checks). On an exception the temporary file is removed and the
    target left untouched.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = _mkstemp(target, folder, f".{target.name}.tmp.", suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise _named(exc, target) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    """Best-effort fsync of a folder so the rename itself is durable (no-op where unsupported)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
