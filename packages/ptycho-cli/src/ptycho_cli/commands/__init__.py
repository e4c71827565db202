"""The ``ptycho`` subcommands; each module has ``register(subparsers, parents)`` and ``run``."""

from __future__ import annotations

from ptycho_cli.commands import (
    backends,
    convert,
    convert_bundle,
    demo,
    evaluate,
    infer,
    inspect,
    refine,
    simulate,
    train,
)

#: In the order ``ptycho --help`` lists them.
COMMANDS = (
    train,
    infer,
    refine,
    simulate,
    evaluate,
    demo,
    inspect,
    backends,
    convert,
    convert_bundle,
)

__all__ = ["COMMANDS"]
