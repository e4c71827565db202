"""``ptycho backends``: which deep-learning backends are installed, and how to add the others."""

from __future__ import annotations

import argparse
from importlib import metadata
from typing import Any

from ptycho_cli.console import Console

NAME = "backends"
HELP = "list installed and missing backends with install commands"

_INFO = {  # backend → (label, distribution, framework distributions)
    "pytorch": ("PyTorch", "ptycho-torch", ("torch", "lightning")),
    "tensorflow": ("TensorFlow", "ptycho-tf", ("tensorflow", "keras")),
}


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
    from ptycho_core.backends import BACKEND_NAMES, available_backends

    installed = set(available_backends())
    for name in BACKEND_NAMES:
        label, dist, frameworks = _INFO.get(name, (name, f"ptycho-{name}", ()))
        if name in installed:
            versions = ", ".join(f"{d} {_version(d)}" for d in (dist, *frameworks) if _version(d))
            console.result(f"{name:<11} installed  ({versions})")
        else:
            console.result(f"{name:<11} missing    install with: pip install {dist}")
    if not installed:
        console.result("no backend installed: pip install ptycho-torch (recommended)")
    return 0
