"""The ``ptycho`` subcommands; each module has ``register(subparsers, parents)`` and ``run``."""

from __future__ import annotations

from ptycho_cli.commands import (
    backends,
    convert,
    demo,
    evaluate,
    infer,
    inspect,
    refine,
    simulate,
    train,
)

#: In the order ``ptycho --help`` lists them.
COMMANDS = (train, infer, refine, simulate, evaluate, demo, inspect, backends, convert)

__all__ = ["COMMANDS"]
