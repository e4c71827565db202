"""ptycho-torch."""

from ptycho_torch.__about__ import __version__

__all__ = ["__version__"]
