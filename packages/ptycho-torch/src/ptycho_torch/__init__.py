"""ptycho-torch: the PyTorch + Lightning backend of ptycho (``specs/packages.md``,
``specs/model.md``, ``specs/training.md``, ``specs/data-contracts.md``).

Modules mirror ``ptycho_tf`` file by file: ``model`` (the network), ``physics`` (differentiable
ops tested against ``ptycho_core.physics``), ``losses``, ``data`` (datasets, DataModule),
``training`` (LightningModule, Trainer builders), ``bundle`` (``wts.h5.zip``), ``workflows`` and
``backend`` (the registered entry point: ``NAME``, ``train``, ``reconstruct``).
Importing the package itself imports no framework; submodules import torch / Lightning.
"""

from ptycho_core.runtime import ExecutionSupport
from ptycho_torch.__about__ import __version__

NAME = "pytorch"
#: The backend honours every execution field (:func:`ptycho_core.runtime.check_execution`).
SUPPORT = ExecutionSupport(NAME)

__all__ = ["__version__", "NAME", "SUPPORT"]
