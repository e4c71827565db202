"""The ``ptycho`` command (``specs/cli.md``, ``specs/cli.md``).

Exit codes: 0 success; 1 failure, reported as one line ``ptycho: error: <file>: <problem>`` (the
traceback only with ``--debug``); 2 usage errors (argparse); 130 interrupted by SIGINT (Ctrl-C),
143 by SIGTERM, reported as ``ptycho: error: interrupted (SIGINT)`` (:mod:`ptycho_cli.interrupts`).

Importing this module (and ``ptycho --help``) imports no deep-learning framework: the commands
import their heavy dependencies inside ``run``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from ptycho_cli import interrupts
from ptycho_cli.__about__ import __version__
from ptycho_cli.console import Console, configure_logging

__all__ = ["main", "build_parser", "format_error"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_TERMINATED = 143

_DESCRIPTION = """\
Physics-informed neural-network reconstruction for ptychography.

typical use:
  ptycho demo                                  simulate, train, reconstruct, report (minutes)
  ptycho simulate scan.npz                     a simulated scan to try things on
  ptycho train scan.npz -o run/ --epochs 20    train; writes run/wts.h5.zip
  ptycho infer run/ new_scan.npz -o recon/     reconstruct another scan with that model
  ptycho evaluate recon/ scan.npz              SSIM/PSNR against a known object
"""


def _global_options(top: bool) -> argparse.ArgumentParser:
    """Options accepted before and after the subcommand (SUPPRESS on subparsers keeps a value
    given before the subcommand)."""
    p = argparse.ArgumentParser(add_help=False)
    default = (lambda v: v) if top else (lambda v: argparse.SUPPRESS)
    g = p.add_argument_group("general")
    g.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="show tracebacks and debug logs",
    )
    g.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="no progress bars or stage messages (results and errors still shown)",
    )
    g.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="log applied config values and library messages (-vv for more)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    from ptycho_cli.commands import COMMANDS

    parser = argparse.ArgumentParser(
        prog="ptycho",
        description=_DESCRIPTION,
        parents=[_global_options(True)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ptycho-cli {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for module in COMMANDS:
        module.register(sub, [_global_options(False)])
    return parser


def format_error(exc: BaseException) -> str:
    """One line: ``<file>: <problem>`` where the error names a file, else the message."""
    if isinstance(exc, OSError) and getattr(exc, "filename", None) and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, KeyError):
            text = f"missing key {text}"
    text = " ".join(text.split())
    known = (ValueError, OSError, RuntimeError, ImportError)
    if not isinstance(exc, known):
        text = f"internal error ({type(exc).__name__}): {text} (rerun with --debug for details)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    console = Console(quiet=args.quiet)
    configure_logging(verbose=args.verbose, debug=args.debug, quiet=args.quiet)
    if not (args.debug or args.verbose):
        import warnings

        # Framework housekeeping warnings (deprecations, data-loader hints) are noise for a
        # beamline user; -v or --debug shows them.
        warnings.filterwarnings("ignore", module=r"(tensorflow|keras|lightning|torch|absl)")
    with interrupts.handle_signals():
        try:
            return int(args.run(args, console) or 0)
        except BaseException as exc:  # every outcome but success becomes one line
            return _failure(exc, args, console)


def _failure(exc: BaseException, args: argparse.Namespace, console: Console) -> int:
    """The exit code for ``exc`` after printing its one line. A signal received during the
    command wins over whatever exception it turned into on the way out (Lightning, for one,
    turns KeyboardInterrupt into ``sys.exit(1)``)."""
    signum = interrupts.received()
    if signum is None and isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", None) or int(interrupts.HANDLED[0])
    if signum is not None:
        if args.debug:
            traceback.print_exception(exc)
        console.error(interrupts.message(signum))
        return interrupts.exit_code(signum)
    if isinstance(exc, BrokenPipeError):  # e.g. `ptycho inspect x | head`
        return EXIT_OK
    if not isinstance(exc, Exception):  # SystemExit, GeneratorExit: not ours to report
        raise exc
    if args.debug:
        traceback.print_exc()
    console.error(format_error(exc))
    return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover - `python -m ptycho_cli.main`
    sys.exit(main())
