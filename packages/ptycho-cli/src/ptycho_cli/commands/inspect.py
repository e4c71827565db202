"""``ptycho inspect``: print a bundle's manifest (never imports a framework)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ptycho_cli.console import Console

NAME = "inspect"
HELP = "print a model bundle's manifest (backend, configs, scale, versions)"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(NAME, parents=parents, help=HELP, description=HELP)
    p.add_argument(
        "bundle", type=Path, metavar="BUNDLE", help="wts.h5.zip, or the folder holding it"
    )
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.set_defaults(run=run)


def _kv(console: Console, title: str, d: Any) -> None:
    if not isinstance(d, dict) or not d:
        return
    console.result(f"{title}:")
    width = max(len(str(k)) for k in d)
    for key in sorted(d):
        value = d[key]
        if isinstance(value, dict):
            value = json.dumps(value, sort_keys=True)
        console.result(f"  {str(key):<{width}}  {value}")


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli.factories import resolve_bundle_path
    from ptycho_core.bundle import read_manifest

    path = resolve_bundle_path(args.bundle)
    manifest = read_manifest(path)
    if args.json:
        console.result(json.dumps(manifest, indent=2, sort_keys=True))
        return 0
    console.result(f"bundle:          {path}")
    console.result(f"format:          {manifest.get('format')} v{manifest.get('schema_version')}")
    console.result(f"backend:         {manifest.get('backend')}")
    console.result(f"created:         {manifest.get('created')}")
    console.result(f"model names:     {', '.join(manifest.get('model_names') or [])}")
    console.result(f"intensity scale: {manifest.get('intensity_scale')}")
    _kv(console, "model config", manifest.get("model_config"))
    _kv(console, "training config", manifest.get("training_config"))
    _kv(console, "normalization", manifest.get("normalization"))
    _kv(console, "creator", manifest.get("creator"))
    files = manifest.get("files") or {}
    if files:
        console.result("files:")
        for name in sorted(files):
            console.result(f"  {name}  {files[name].get('size')} bytes")
    reserved = {
        "format",
        "schema_version",
        "backend",
        "created",
        "model_names",
        "intensity_scale",
        "model_config",
        "training_config",
        "normalization",
        "creator",
        "files",
    }
    _kv(console, "other", {k: v for k, v in manifest.items() if k not in reserved})
    return 0
