"""``ptycho inspect``: print a bundle's manifest (never imports a framework), or with
``--verify`` check the whole bundle: every entry against its SHA-256, the manifest's configs and
intensity scale, and that the weights load into the model the manifest describes (this imports
the bundle's backend, ``specs/cli.md``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ptycho_cli.console import Console

NAME = "inspect"
HELP = "print a model bundle's manifest (backend, configs, scale, versions); --verify checks it"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(NAME, parents=parents, help=HELP, description=HELP)
    p.add_argument(
        "bundle", type=Path, metavar="BUNDLE", help="wts.h5.zip, or the folder holding it"
    )
    p.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also check every entry's SHA-256 and load the weights with the bundle's backend "
        "(imports it); exit 1 with the problem when anything does not match",
    )
    p.set_defaults(run=run)


def verify_bundle(path: Path) -> str:
    """Check the bundle at ``path`` fully; returns a one-line summary, raises the first problem.

    1. :func:`ptycho_core.bundle.read_bundle`: zip structure, entry names, sizes, CRC-32 and
       SHA-256 of every entry against the manifest (framework-free);
    2. the manifest's ``model_config``/``training_config`` and ``intensity_scale``
       (:func:`ptycho_core.engine.bundle_configs` / ``bundle_intensity_scale``);
    3. the backend module's ``load_bundle(path)``: the model is built from ``model_config``, the
       weights are loaded strictly and the scale held in them must agree with the manifest.
    """
    from ptycho_cli import dispatch
    from ptycho_cli.commands._run import framework_hook
    from ptycho_core.bundle import read_bundle
    from ptycho_core.engine import bundle_configs, bundle_intensity_scale

    bundle = read_bundle(path)
    model_config, _ = bundle_configs(bundle.manifest, path)
    scale = bundle_intensity_scale(bundle.manifest, path)
    dispatch.load_bundle(path, bundle.backend, on_backend_loaded=framework_hook)
    return (
        f"verified: {len(bundle.files)} entries match their SHA-256; the weights load into the "
        f"{bundle.backend} model of model_config (N={model_config.N}, "
        f"gridsize={model_config.gridsize}); intensity scale {scale:.6g} agrees"
    )


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
    verified = ""
    if args.verify:
        console.stage(f"verifying {path} with the {manifest.get('backend')} backend …")
        verified = verify_bundle(path)
    if args.json:
        console.result(json.dumps(manifest, indent=2, sort_keys=True))
        if verified:
            console.stage(verified)
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
    if verified:
        console.result(verified)
    return 0
