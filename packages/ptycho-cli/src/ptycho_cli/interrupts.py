"""Interruptions of a ``ptycho`` command (``specs/cli.md``): SIGINT (Ctrl-C) → exit 130,
SIGTERM (``kill``, SLURM time limits, systemd) → exit 143, both reported as one line
``ptycho: error: interrupted (SIGINT)``.

:func:`handle_signals` installs a handler for both signals for the duration of a command. The
first signal raises :class:`Interrupted` (a ``KeyboardInterrupt``, so Lightning runs its own
shutdown path) wherever the main thread is; every ``finally`` on the way out runs, which is how
staging folders and partial runs are removed. The signal is also recorded, so the command still
exits 130/143 when a framework turns the exception into something else (Lightning's
``sys.exit(1)`` on ``KeyboardInterrupt``). Repeated signals while the first is being handled are
ignored, so cleanup is not cut short (SIGKILL still ends the process at once; the run-folder lock
it leaves is detected as stale). Commands may add a hint to the message with :func:`add_note`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

__all__ = [
    "HANDLED",
    "Interrupted",
    "add_note",
    "blocked",
    "exit_code",
    "handle_signals",
    "message",
    "received",
]

#: The signals a command handles.
HANDLED: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when the command receives ``signum``."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)


class _State:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.notes: list[str] = []
        self.deferring = False


_state = _State()


def received() -> int | None:
    """The signal number received during the current command, or None."""
    return _state.signum


def add_note(text: str) -> None:
    """A hint appended to the "interrupted" line (e.g. how to resume)."""
    if text:
        _state.notes.append(text)


def exit_code(signum: int) -> int:
    """The shell convention ``128 + signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def message(signum: int) -> str:
    """``interrupted (SIGINT)`` plus the notes commands added, on one line."""
    text = f"interrupted ({signal.Signals(signum).name})"
    return "; ".join([text, *_state.notes])


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.signum is not None:  # the first one is being handled: let cleanup finish
        return
    _state.signum = signum
    if not _state.deferring:  # else :func:`blocked` raises when its section ends
        raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """Install the handler for :data:`HANDLED` (main thread only; elsewhere nothing changes) and
    restore the previous handlers afterwards. Resets :func:`received` and the notes."""
    _state.signum, _state.notes = None, []
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    for s in HANDLED:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def blocked() -> Iterator[None]:
    """Hold back SIGINT/SIGTERM for a short critical section (the renames that replace one run
    with another): a signal arriving meanwhile is recorded, and :class:`Interrupted` is raised
    when the block ends. (A flag rather than a signal mask: with framework threads running, the
    kernel may deliver the signal to any thread, but the handler always runs in the main one.)"""
    if _state.deferring:  # nested
        yield
        return
    before = _state.signum
    _state.deferring = True
    try:
        yield
    finally:
        _state.deferring = False
    if before is None and _state.signum is not None:
        raise Interrupted(_state.signum)
