"""Flags and helpers shared by the training and inference commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ptycho_cli.console import Console, live_progress
from ptycho_cli.execution import (  # positive_* re-exported for the commands
    add_execution_arguments,
    execution_overrides,
    positive_float,
    positive_int,
)
from ptycho_core.backends import BACKEND_NAMES, DEFAULT_BACKEND
from ptycho_core.config import GENERATORS, INFERENCE_GROUPINGS

__all__ = [
    "add_science_arguments",
    "add_config_arguments",
    "science_overrides",
    "execution_from_args",
    "parse_set",
    "non_negative_int",
    "positive_int",
    "positive_float",
]

#: ``--backend`` choices: the backend table of :mod:`ptycho_core.backends`.
BACKEND_CHOICES = BACKEND_NAMES


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (e.g. ``evaluate --margin``; a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def parse_set(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false, null), else a
    string: ``--set amp_activation=swish --set model.probe_mask=true``."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("configuration")
    g.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="YAML or TOML config file (sections model/training/inference/execution)",
    )
    g.add_argument(
        "--set",
        dest="set_values",
        type=parse_set,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field (repeatable), e.g. --set probe_trainable=true",
    )


def add_science_arguments(parser: argparse.ArgumentParser, *, training: bool = True) -> None:
    """--backend and (for training) the common science flags; defaults None = not given."""
    g = parser.add_argument_group("model and training" if training else "model")
    g.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default=None,
        help="deep-learning backend (training default: the only installed backend, else "
        f"{DEFAULT_BACKEND}; inference: the bundle's backend)",
    )
    g.add_argument(
        "--gridsize",
        type=positive_int,
        default=None,
        help="patterns per group side (C = gridsize²; default 2, the overlap constraint; "
        "1: single patterns)",
    )
    g.add_argument(
        "--n-groups",
        type=positive_int,
        default=None,
        metavar="G",
        help="number of groups (default: every position once)",
    )
    g.add_argument(
        "--n_images", dest="n_images", type=positive_int, default=None, help=argparse.SUPPRESS
    )
    if training:
        g.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 50)")
        g.add_argument(
            "--batch-size", type=positive_int, default=None, help="groups per batch (default 4)"
        )
        g.add_argument(
            "--nphotons",
            type=positive_float,
            default=None,
            help="mean photons per pattern (default: estimated from photon-unit data)",
        )
        g.add_argument("--seed", type=int, default=None, help="random seed (default 42)")
        g.add_argument(
            "--n-filters-scale",
            type=positive_int,
            default=None,
            metavar="K",
            help="network width factor (default 2)",
        )
        g.add_argument(
            "--generator",
            choices=GENERATORS,
            default=None,
            help="network between patterns and object: fourier (learned-phase inverse FFT, then "
            "a U-Net; default) or cnn (the original encoder/decoders)",
        )
        g.add_argument(
            "--physics-stages",
            type=non_negative_int,
            default=None,
            metavar="S",
            help="gridsize > 1: stages of data projections of each group, each followed by a "
            "learned correction, after the network (default 3; 0 = none; ignored at gridsize 1)",
        )
        g.add_argument(
            "--inference-projection-steps",
            type=positive_int,
            default=None,
            metavar="K",
            help="data projections per physics stage when the trained model reconstructs "
            "(training runs 3; default 20)",
        )
    else:
        g.add_argument(
            "--stitch-crop",
            type=positive_int,
            default=None,
            metavar="M",
            help="central M×M of each patch is stitched (default round(20·N/64))",
        )
        g.add_argument(
            "--grouping",
            choices=INFERENCE_GROUPINGS,
            default=None,
            help="every: each position seeds a group (default); cover: the fewest groups that "
            "hold every position (about gridsize² times fewer network evaluations)",
        )
        g.add_argument(
            "--projection-steps",
            type=positive_int,
            default=None,
            metavar="K",
            help="data projections per physics stage for this reconstruction (default: the "
            "bundle's own count, 20 unless set at training; 3 for bundles older than the option)",
        )


#: argparse dest → config key
_SCIENCE = {
    "backend": "backend",
    "gridsize": "gridsize",
    "n_groups": "n_groups",
    "epochs": "nepochs",
    "batch_size": "batch_size",
    "nphotons": "nphotons",
    "seed": "seed",
    "n_filters_scale": "n_filters_scale",
    "generator": "generator",
    "physics_stages": "physics_stages",
    "inference_projection_steps": "inference_projection_steps",
    "projection_steps": "projection_steps",
    "stitch_crop": "stitch_crop",
    "grouping": "grouping",
}


def science_overrides(args: argparse.Namespace, console: Console | None = None) -> dict[str, Any]:
    """Config keys the user set with science flags and ``--set`` (``--set`` last, flags win)."""
    out: dict[str, Any] = dict(getattr(args, "set_values", []) or [])
    if getattr(args, "n_images", None) is not None:
        if console is not None:
            console.warn("--n_images is deprecated; use --n-groups")
        out["n_images"] = args.n_images
    for dest, key in _SCIENCE.items():
        value = getattr(args, dest, None)
        if value is not None:
            out[key] = value
    return out


def execution_from_args(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """The execution fields given on the command line (deprecated flags mapped and warned).

    The CLI decides the progress display (``specs/cli.md``): the framework's live bar
    (``enable_progress_bar``) only when :func:`~ptycho_cli.console.live_progress` says the output
    is a terminal; otherwise it is off and the core's one-line-per-epoch progress log is shown.
    """
    out = execution_overrides(args, warn=console.warn)
    if not live_progress(bool(getattr(args, "quiet", False))):
        out["enable_progress_bar"] = False
    return out


def add_run_arguments(parser: argparse.ArgumentParser, *, training: bool) -> None:
    add_config_arguments(parser)
    add_science_arguments(parser, training=training)
    add_execution_arguments(parser, training=training)
