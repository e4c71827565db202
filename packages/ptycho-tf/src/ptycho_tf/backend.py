"""The ``tensorflow`` backend module (entry point ``ptycho.backends: tensorflow``,
``specs/packages.md``).

Exposes :data:`NAME`, :func:`train` and :func:`reconstruct` with the signatures of
``specs/core-api.md``, and :func:`load_bundle` (``ptycho inspect --verify``); the work is done
in :mod:`ptycho_tf.workflows`.
"""

from __future__ import annotations

from ptycho_tf.bundle import load_bundle
from ptycho_tf.workflows import NAME, reconstruct, train

__all__ = ["NAME", "train", "reconstruct", "load_bundle"]
