"""ptycho-cli."""

from ptycho_cli.__about__ import __version__

__all__ = ["__version__"]
