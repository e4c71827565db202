"""Terminal output of the ``ptycho`` command: the only place that prints (library code logs).

Stage lines ("training …") and progress go to stderr and are silenced by ``--quiet``; results
(metrics, where the files are) go to stdout and are always shown. Warnings and errors use the
``ptycho: warning:`` / ``ptycho: error:`` prefixes of argparse.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["Console", "configure_logging", "tame_framework_logging"]

PROG = "ptycho"


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
        print(f"{PROG}: error: {message}", file=self.err, flush=True)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{PROG}: {record.levelname.lower()}: {text}"
        return f"{PROG}: {text}"


def configure_logging(verbose: int = 0, debug: bool = False, quiet: bool = False) -> None:
    """Route library logs to stderr: WARNING by default, INFO with -v, DEBUG with --debug,
    ERROR with --quiet."""
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
    tame_framework_logging(level)


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
