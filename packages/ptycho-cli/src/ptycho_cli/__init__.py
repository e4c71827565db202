"""ptycho-cli: the ``ptycho`` command, ADR-003 factories and backend dispatch.

Importing this package imports no deep-learning framework; the backend is imported only when a
command runs it (:mod:`ptycho_cli.dispatch`).

Public modules: :mod:`ptycho_cli.factories` (``create_training_payload``,
``create_inference_payload``), :mod:`ptycho_cli.execution`, :mod:`ptycho_cli.dispatch`,
:mod:`ptycho_cli.figures`, :mod:`ptycho_cli.main` (``main``).
"""

from ptycho_cli.__about__ import __version__

__all__ = ["__version__"]
