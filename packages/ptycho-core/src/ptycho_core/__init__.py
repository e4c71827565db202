"""ptycho-core: the framework-neutral core of ptycho.

Importing this package never imports a deep-learning framework (a test checks it).
Submodules: ``config``, ``errors``, ``io`` (NPZ and Ptychodus product files), ``grouping``,
``physics``, ``simulation``, ``stitching``, ``metrics``, ``bundle``, ``backends``, ``workflow``,
and the backends' shared skeleton: ``engine`` (train / reconstruct / bundles), ``training``
(schedules, history, loss specification), ``architecture`` (the ADR-002 layer table) and
``testing`` (the backend conformance suite; needs pytest).
"""

from ptycho_core.__about__ import __version__
from ptycho_core.errors import (
    BackendUnavailableError,
    BundleBackendMismatchError,
    BundleError,
    ConfigError,
    DataContractError,
    PtychoError,
)

__all__ = [
    "__version__",
    "PtychoError",
    "ConfigError",
    "DataContractError",
    "BundleError",
    "BundleBackendMismatchError",
    "BackendUnavailableError",
]
