"""ptycho-tf: the TensorFlow / Keras 3 backend of ptycho (``specs/packages.md``,
``specs/model.md``, ``specs/training.md``, ``specs/data-contracts.md``).

Modules mirror ``ptycho_torch``: :mod:`~ptycho_tf.model` (the Keras network),
:mod:`~ptycho_tf.physics` (differentiable physics ops, tested against ``ptycho_core.physics``),
:mod:`~ptycho_tf.training` (Keras ``fit``), :mod:`~ptycho_tf.bundle` (``wts.h5.zip``),
:mod:`~ptycho_tf.backend` (the backend entry point). Importing this package does not import
TensorFlow; the submodules do.
"""

from ptycho_tf.__about__ import __version__

__all__ = ["__version__"]
