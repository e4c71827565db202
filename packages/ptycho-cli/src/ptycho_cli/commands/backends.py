"""``ptycho backends``: which deep-learning backends are installed, and how to add the others."""

from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any

from ptycho_cli.console import Console

NAME = "backends"
HELP = "list installed and missing backends with install commands"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        NAME,
        parents=parents,
        help=HELP,
        description=HELP + " (nothing is imported; versions come from package metadata)",
    )
    p.set_defaults(run=run)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_core.backends import BACKENDS, available_backends, default_backend

    available = available_backends()
    installed = set(available)
    for info in BACKENDS:
        name = info.name
        if name in installed:
            dists = (info.distribution, *info.framework_distributions)
            versions = ", ".join(f"{d} {_version(d)}" for d in dists if _version(d))
            console.result(f"{name:<11} installed  ({versions})")
        else:
            console.result(
                f"{name:<11} missing    install with: {info.install_command} "
                f'(or pip install "ptycho-cli[{info.cli_extra}]")'
            )
    if installed:
        console.result(f"default backend: {default_backend(available)}")
    else:
        first = BACKENDS[0]
        console.result(f"no backend installed: {first.install_command} (recommended)")
    return 0
