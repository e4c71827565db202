"""``ptycho convert-bundle IN OUT [--to {pytorch,tensorflow}]``: rewrite a model bundle for
the other backend (``--to`` defaults to the one the bundle is not for; ``specs/cli.md``,
``specs/data-contracts.md`` "Converting bundles").

The weights are copied bit for bit through the one weight layout of ADR-002
(:func:`ptycho_core.convert.convert_bundle`); only the target framework is imported here
(PyTorch weights are read by a child process that imports torch alone)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptycho_cli.console import Console

NAME = "convert-bundle"
HELP = "convert a model bundle to the other backend (same weights, bit for bit)"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    from ptycho_core.backends import BACKEND_NAMES

    p = subparsers.add_parser(NAME, parents=parents, help=HELP, description=HELP)
    p.add_argument("source", type=Path, metavar="IN", help="wts.h5.zip, or the folder holding it")
    p.add_argument(
        "dest",
        type=Path,
        metavar="OUT",
        help="the converted bundle: a .zip path, or a folder (any other name) that gets wts.h5.zip",
    )
    p.add_argument(
        "--to",
        choices=BACKEND_NAMES,
        default=None,
        help="the backend the converted bundle is for (it must be installed); default: the "
        "other one than the bundle's",
    )
    p.add_argument("--force", action="store_true", help="overwrite OUT when it exists")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli.factories import resolve_bundle_path
    from ptycho_core.backends import BACKEND_NAMES
    from ptycho_core.bundle import read_manifest
    from ptycho_core.convert import CONVERTED_FROM_KEY, convert_bundle

    source = resolve_bundle_path(args.source)
    to = args.to
    if to is None:  # the other backend than the bundle's
        archived = read_manifest(source).get("backend")
        to = next(b for b in BACKEND_NAMES if b != archived)
    console.stage(f"converting {source} for the {to} backend …")
    out = convert_bundle(source, args.dest, to, overwrite=args.force)
    origin = read_manifest(out).get(CONVERTED_FROM_KEY) or {}
    console.result(
        f"wrote {out} ({to}; converted from the {origin.get('backend')} bundle "
        f"{origin.get('file')}, sha256 {str(origin.get('sha256'))[:12]}…)"
    )
    return 0
