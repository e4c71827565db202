"""The backend registry (``specs/packages.md``): entry-point group ``ptycho.backends``.

Each backend distribution registers one entry point whose name is the backend name and whose
value is its backend module (``pytorch = "ptycho_torch.backend"``, ``tensorflow =
"ptycho_tf.backend"``). The module exposes ``NAME``, ``train(...)`` and ``reconstruct(...)``
(``specs/core-api.md``).

- :func:`available_backends` reads entry-point metadata and checks that the framework can be
  *found* (``importlib.util.find_spec``) — it never imports a backend or a framework.
- :func:`load_backend` imports the chosen backend module. An unknown name is a ``ValueError``
  listing the valid names; a backend that is not installed or fails to import raises
  :class:`~ptycho_core.errors.BackendUnavailableError` ("<Name> backend selected ... pip install
  ..."). There is never a fallback to the other backend.
"""

from __future__ import annotations

import importlib.util
import logging
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

from ptycho_core.config import BACKEND_NAMES
from ptycho_core.errors import BackendUnavailableError

__all__ = [
    "BACKEND_NAMES",
    "ENTRY_POINT_GROUP",
    "available_backends",
    "check_backend_name",
    "load_backend",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ptycho.backends"
#: Top-level modules each backend needs importable (checked with find_spec, never imported).
_FRAMEWORKS: dict[str, tuple[str, ...]] = {
    "pytorch": ("torch", "lightning"),
    "tensorflow": ("tensorflow",),
}
_REQUIRED_API = ("NAME", "train", "reconstruct")


def check_backend_name(name: object) -> str:
    """Return ``name`` if it is a known backend name, else ``ValueError`` listing the valid ones."""
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(BACKEND_NAMES)}")
    return name


def _entry_points() -> dict[str, EntryPoint]:
    """Registered backend entry points by name (the first registration of a name wins)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            logger.warning(
                "backend %r registered twice (%s, %s); using %s",
                ep.name,
                found[ep.name].value,
                ep.value,
                found[ep.name].value,
            )
            continue
        found.setdefault(ep.name, ep)
    return found


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_backends() -> list[str]:
    """Backends whose distribution is installed and whose framework can be found.

    Order follows :data:`BACKEND_NAMES`. Imports nothing.
    """
    eps = _entry_points()
    return [
        name
        for name in BACKEND_NAMES
        if name in eps and all(_findable(m) for m in _FRAMEWORKS.get(name, ()))
    ]


def load_backend(name: str) -> ModuleType:
    """Import and return the backend module registered under ``name``.

    Raises ``ValueError`` for an unknown name and
    :class:`~ptycho_core.errors.BackendUnavailableError` when the backend is not installed,
    fails to import, or lacks the backend API (``NAME``, ``train``, ``reconstruct``).
    """
    check_backend_name(name)
    ep = _entry_points().get(name)
    if ep is None:
        raise BackendUnavailableError(
            name, f"no {ENTRY_POINT_GROUP!r} entry point named {name!r} is installed"
        )
    try:
        module = ep.load()
    except Exception as exc:  # any import failure (missing framework, broken CUDA libs, ...)
        raise BackendUnavailableError(
            name, f"importing {ep.value} failed: {type(exc).__name__}: {exc}"
        ) from exc
    missing = [attr for attr in _REQUIRED_API if not hasattr(module, attr)]
    if missing:
        raise BackendUnavailableError(name, f"{ep.value} lacks the backend API: {missing}")
    if module.NAME != name:
        raise BackendUnavailableError(
            name, f"{ep.value}.NAME is {module.NAME!r}, expected {name!r}"
        )
    logger.debug("loaded backend %r from %s", name, ep.value)
    return module
