"""The ``pytorch`` backend module (entry point ``ptycho.backends: pytorch``, ``specs/packages.md``).

Exposes :data:`NAME`, :func:`train` and :func:`reconstruct` with the signatures of
``specs/core-api.md``, and :func:`load_bundle` (``ptycho inspect --verify``); the work is done
in :mod:`ptycho_torch.workflows`.
"""

from __future__ import annotations

from ptycho_torch.bundle import load_bundle
from ptycho_torch.workflows import NAME, reconstruct, train

__all__ = ["NAME", "train", "reconstruct", "load_bundle"]
