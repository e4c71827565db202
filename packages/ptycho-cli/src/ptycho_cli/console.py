"""Terminal output of the ``ptycho`` command: the only place that prints (library code logs).

Stage lines ("training …") and progress go to stderr and are silenced by ``--quiet``; results
(metrics, where the files are) go to stdout and are always shown. Warnings and errors use the
``ptycho: warning:`` / ``ptycho: error:`` prefixes of argparse; an error is one line of at most
:data:`MAX_ERROR_CHARS` characters (``--debug`` shows the whole message in the traceback).

Progress (``specs/cli.md``): on a terminal (stdout and stderr both TTYs) the framework draws its
live bar (Lightning's progress bar, Keras ``verbose=1``); otherwise (a log file, CI, a pipe) the
bar is off and the ``ptycho.progress`` log records of the core — one line per epoch, one per
10 % of an inference — are printed instead. ``--quiet`` shows neither.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = [
    "Console",
    "configure_logging",
    "tame_framework_logging",
    "live_progress",
    "MAX_ERROR_CHARS",
]

PROG = "ptycho"
#: The longest error line printed; longer messages are cut (the traceback of --debug has all).
MAX_ERROR_CHARS = 400
#: The core's progress logger (``ptycho_core.training.PROGRESS_LOGGER``).
PROGRESS_LOGGER = "ptycho.progress"


def _isatty(stream: TextIO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def live_progress(quiet: bool = False) -> bool:
    """Whether a live progress bar suits the output: not ``quiet`` and both stdout (where
    Lightning's bar and Keras' ``verbose=1`` write) and stderr are terminals."""
    return not quiet and _isatty(sys.stdout) and _isatty(sys.stderr)


def shorten(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``message`` on one line, cut to ``limit`` characters (with a pointer to --debug)."""
    text = " ".join(message.split())
    if len(text) <= limit:
        return text
    tail = " … (shortened; --debug shows all)"
    return text[: limit - len(tail)].rstrip() + tail


class Console:
    """Where the command's messages go; ``quiet`` silences stage lines, not results or errors."""

    def __init__(
        self, quiet: bool = False, out: TextIO | None = None, err: TextIO | None = None
    ) -> None:
        self.quiet = quiet
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr

    def stage(self, message: str) -> None:
        """A progress line (stderr), hidden by --quiet."""
        if not self.quiet:
            print(f"{PROG}: {message}", file=self.err, flush=True)

    def result(self, message: str = "") -> None:
        """A result line (stdout), always shown."""
        print(message, file=self.out, flush=True)

    def warn(self, message: str) -> None:
        print(f"{PROG}: warning: {message}", file=self.err, flush=True)

    def error(self, message: str) -> None:
        """One line ``ptycho: error: <message>``, at most :data:`MAX_ERROR_CHARS` long."""
        print(f"{PROG}: error: {shorten(message)}", file=self.err, flush=True)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{PROG}: {record.levelname.lower()}: {text}"
        return f"{PROG}: {text}"


def configure_logging(
    verbose: int = 0, debug: bool = False, quiet: bool = False, progress: bool | None = None
) -> None:
    """Route library logs to stderr: WARNING by default, INFO with -v, DEBUG with --debug,
    ERROR with --quiet.

    ``progress``: print the core's per-epoch / per-10 % progress lines (logger
    ``ptycho.progress``); default: when no live bar is drawn (:func:`live_progress` false) and
    not ``quiet``. Inference progress lines are shown on a terminal too (no framework draws a
    bar for inference)."""
    if debug:
        level = logging.DEBUG
    elif quiet:
        level = logging.ERROR
    elif verbose:
        level = logging.INFO
    else:
        level = logging.WARNING
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_ptycho_cli", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)  # records propagated from loggers with their own level stop here
    handler._ptycho_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter("%(message)s" if not debug else "%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("matplotlib", "PIL", "h5py", "absl"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    _configure_progress(quiet, progress)
    tame_framework_logging(level)


class _ProgressFilter(logging.Filter):
    """Epoch lines only when no live bar is drawn; inference lines always."""

    def __init__(self, epochs: bool) -> None:
        super().__init__()
        self.epochs = epochs

    def filter(self, record: logging.LogRecord) -> bool:
        return self.epochs or getattr(record, "progress", "") != "epoch"


def _configure_progress(quiet: bool, progress: bool | None) -> None:
    lg = logging.getLogger(PROGRESS_LOGGER)
    for handler in list(lg.handlers):
        if getattr(handler, "_ptycho_cli", False):
            lg.removeHandler(handler)
    lg.propagate = False  # never twice (the root handler shows INFO with -v)
    if quiet:
        lg.setLevel(logging.WARNING)
        return
    epochs = (not live_progress(quiet)) if progress is None else bool(progress)
    handler = logging.StreamHandler(sys.stderr)
    handler._ptycho_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter("%(message)s"))
    handler.addFilter(_ProgressFilter(epochs))
    lg.addHandler(handler)
    lg.setLevel(logging.INFO)


_FRAMEWORK_LOGGERS = (
    "lightning",
    "lightning.pytorch",
    "lightning.fabric",
    "pytorch_lightning",
    "tensorflow",
    "keras",
)


def tame_framework_logging(level: int | None = None) -> None:
    """Frameworks install their own log handlers on import (Lightning prints "GPU available" and
    tips at INFO). Route them through our handler at our level instead; call again after a
    backend was imported (``dispatch`` accepts this as its ``on_backend_loaded`` hook)."""
    if level is None:
        level = logging.getLogger().level
    for name in _FRAMEWORK_LOGGERS:
        lg = logging.getLogger(name)
        lg.setLevel(max(level, logging.WARNING) if level > logging.DEBUG else level)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
