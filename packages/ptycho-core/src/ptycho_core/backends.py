"""The backend registry (``specs/packages.md``): entry-point group ``ptycho.backends``.

:data:`BACKENDS` is the one table of what ptycho knows about each backend — its name, display
name, distribution, the framework modules it needs, the framework distributions a bundle records
and how to install it. Everything else that lists backends (``config.BACKEND_NAMES``, the bundle
reader and writer, :class:`~ptycho_core.errors.BackendUnavailableError`, the CLI) reads it.

Each backend distribution registers one entry point whose name is the backend name and whose
value is its backend module (``pytorch = "ptycho_torch.backend"``, ``tensorflow =
"ptycho_tf.backend"``). The module exposes ``NAME``, ``train(...)`` and ``reconstruct(...)``
(``specs/core-api.md``).

- :func:`available_backends` reads entry-point metadata and checks that the framework can be
  *found* (``importlib.util.find_spec``) — it never imports a backend or a framework.
- :func:`default_backend` is the backend a run uses when none is asked for: the only installed
  one, else :data:`DEFAULT_BACKEND`.
- :func:`load_backend` imports the chosen backend module. An unknown name is a ``ValueError``
  listing the valid names; a backend that is not installed or fails to import raises
  :class:`~ptycho_core.errors.BackendUnavailableError` ("<Name> backend selected ... pip install
  ..."). There is never a fallback to the other backend.

This module imports nothing from ``ptycho_core`` but :mod:`ptycho_core.errors` (``config`` and
``bundle`` import it).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

from ptycho_core.errors import BackendUnavailableError

__all__ = [
    "BACKENDS",
    "BACKEND_NAMES",
    "DEFAULT_BACKEND",
    "ENTRY_POINT_GROUP",
    "BackendInfo",
    "available_backends",
    "backend_info",
    "check_backend_name",
    "default_backend",
    "load_backend",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ptycho.backends"


@dataclass(frozen=True)
class BackendInfo:
    """What ptycho knows about one backend without importing it.

    ``name``: the backend name (config values, entry-point name, bundle manifests).
    ``display_name``: for messages. ``distribution``: the pip distribution of the backend.
    ``framework_modules``: top-level modules that must be findable for the backend to count as
    installed (checked with ``find_spec``, never imported). ``framework_distributions``: whose
    versions a bundle's manifest records. ``cli_extra``: the ``ptycho-cli`` extra that installs
    it (``pip install "ptycho-cli[<extra>]"``).
    """

    name: str
    display_name: str
    distribution: str
    framework_modules: tuple[str, ...]
    framework_distributions: tuple[str, ...]
    cli_extra: str

    @property
    def install_command(self) -> str:
        """``pip install <distribution>``."""
        return f"pip install {self.distribution}"


#: The backends, in order of preference (the first is the default when several are installed).
BACKENDS: tuple[BackendInfo, ...] = (
    BackendInfo(
        name="pytorch",
        display_name="PyTorch",
        distribution="ptycho-torch",
        framework_modules=("torch", "lightning"),
        framework_distributions=("torch", "lightning"),
        cli_extra="torch",
    ),
    BackendInfo(
        name="tensorflow",
        display_name="TensorFlow",
        distribution="ptycho-tf",
        framework_modules=("tensorflow", "keras"),
        framework_distributions=("tensorflow", "keras"),
        cli_extra="tf",
    ),
)
BACKEND_NAMES: tuple[str, ...] = tuple(b.name for b in BACKENDS)
#: The backend used when none is asked for and more than one (or none) is installed.
DEFAULT_BACKEND: str = BACKENDS[0].name
_BY_NAME = {b.name: b for b in BACKENDS}
_REQUIRED_API = ("NAME", "train", "reconstruct")


def backend_info(name: str) -> BackendInfo:
    """The :class:`BackendInfo` of ``name``; ``ValueError`` listing the valid names otherwise."""
    return _BY_NAME[check_backend_name(name)]


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
        if name in eps and all(_findable(m) for m in _BY_NAME[name].framework_modules)
    ]


def default_backend(available: list[str] | None = None) -> str:
    """The backend a training run uses when no source names one (``specs/packages.md``).

    With exactly one backend installed, that one; otherwise (both, or none — loading it then
    says how to install it) :data:`DEFAULT_BACKEND`. ``available`` defaults to
    :func:`available_backends` (imports nothing).
    """
    found = available_backends() if available is None else list(available)
    return found[0] if len(found) == 1 else DEFAULT_BACKEND


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
