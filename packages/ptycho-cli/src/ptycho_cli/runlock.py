"""One run at a time per output folder (``specs/cli.md``): the lock file ``DIR/.ptycho.lock``.

The file holds JSON naming its owner (``pid``, ``host``, ``command``, ``started``). It is held
with an advisory ``fcntl.flock`` for the whole run, so the kernel frees the lock when the owner
dies, however it dies. A second run into the same folder finds the lock taken and fails at once
with :class:`RunFolderBusyError` naming the folder and the owner. A lock file whose lock is free
belongs to a process that was killed before it could remove it: it is *stale*, and the new run
takes it over (logging the dead owner).

Where ``flock`` is unavailable (no ``fcntl`` on Windows, or a filesystem that refuses it) the
owner's PID decides instead: a live process on this host holds the folder, anything else is
stale. That fallback is best effort (two runs starting in the same instant can both win).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import importlib
import json
import logging
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Any

from ptycho_core.errors import PtychoError

#: ``fcntl`` (POSIX) or None (Windows: the PID fallback).
fcntl: Any = importlib.import_module("fcntl") if os.name != "nt" else None

__all__ = ["LOCK_NAME", "RunFolderBusyError", "RunLock", "read_lock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".ptycho.lock"
#: flock errors that mean "this filesystem does not do locks" (→ the PID fallback).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}


class RunFolderBusyError(PtychoError, RuntimeError):
    """Another ptycho run holds the output folder."""


def read_lock(path: str | Path) -> dict[str, Any]:
    """The owner recorded in a lock file (``{}`` when missing or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _describe(owner: dict[str, Any]) -> str:
    what = f"ptycho {owner.get('command') or 'run'}"
    if owner.get("pid"):
        what += f" (PID {owner['pid']}"
        if owner.get("host") and owner.get("host") != socket.gethostname():
            what += f" on {owner['host']}"
        if owner.get("started"):
            what += f", started {owner['started']}"
        what += ")"
    return what


class RunLock:
    """``with RunLock(folder, "train"):`` — hold ``folder/.ptycho.lock`` (the folder is created).

    Raises :class:`RunFolderBusyError` at once when another live run holds it. ``stale_owner``
    is the dead owner whose lock was taken over (``{}`` if none).
    """

    def __init__(self, folder: str | Path, command: str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.command = command
        self.stale_owner: dict[str, Any] = {}
        self._fd: int | None = None

    # ------------------------------------------------------------------ acquire / release
    def _content(self) -> bytes:
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        return json.dumps(owner).encode("utf-8")

    def _busy(self, owner: dict[str, Any]) -> RunFolderBusyError:
        return RunFolderBusyError(
            f"{self.folder}: another {_describe(owner)} is using this folder; wait for it to "
            f"finish or choose another output folder (its lock: {self.path})"
        )

    def _note_stale(self, owner: dict[str, Any]) -> None:
        if owner and owner.get("pid") != os.getpid():
            self.stale_owner = owner
            logger.warning(
                "%s: took over the stale lock of %s, which is no longer running",
                self.folder,
                _describe(owner),
            )

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover - Windows
            return self._acquire_by_pid()
        for _ in range(5):  # a lock file unlinked by its owner between open and flock: retry
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in _NO_LOCKS:
                    return self._acquire_by_pid()
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise self._busy(read_lock(self.path)) from None
                raise
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._note_stale(read_lock(self.path))
            self._write(fd)
            self._fd = fd
            return self
        raise self._busy(read_lock(self.path))

    def _write(self, fd: int) -> None:
        data = self._content()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        os.fsync(fd)

    def _acquire_by_pid(self) -> RunLock:
        owner = read_lock(self.path)
        if (
            owner
            and _pid_alive(owner.get("pid"))
            and owner.get("host")
            in (
                None,
                socket.gethostname(),
            )
        ):
            raise self._busy(owner)
        self._note_stale(owner)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._write(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then let go of the lock (a waiting run never sees a lock file
        that nobody holds)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
