"""The legacy ``ptycho`` import package, for Ptychodus 1.7's "PtychoPINN" reconstructors.

Distribution ``ptycho-ptychodus`` (``specs/ptychodus.md``). Ptychodus runs its "PtychoPINN"
library in a spawned child that imports fixed module names of the original PtychoPINN
(``ptycho.config.config``, ``params``, ``raw_data``, ``loader``, ``probe``, ``tf_helper``,
``workflows.components``, ``model_manager``). This package provides exactly those names on top
of ``ptycho_core``: inference runs on the backend a bundle records, training on TensorFlow
(``ptycho-tf``). It replaces the original ``ptychopinn`` distribution: both install the import
package ``ptycho``, so they cannot be installed together.

Importing ``ptycho`` or ``ptycho.config.config`` imports no deep-learning framework; a framework
is imported only when a model is trained or run.
"""

from ptycho.__about__ import __version__

__all__ = ["__version__"]
