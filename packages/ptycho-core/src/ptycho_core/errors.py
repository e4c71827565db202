"""The ptycho exception hierarchy (``specs/packages.md``, ``specs/data-contracts.md``).

Every error raised on purpose by ptycho derives from :class:`PtychoError`, and
also from the builtin that callers would naturally catch (``ValueError`` for bad
input, ``RuntimeError`` for a missing backend), so ``except ValueError`` keeps
working for code that does not know about ptycho.
"""

from __future__ import annotations

__all__ = [
    "PtychoError",
    "ConfigError",
    "DataContractError",
    "BundleError",
    "BundleBackendMismatchError",
    "BackendUnavailableError",
]


class PtychoError(Exception):
    """Base class of every error ptycho raises on purpose."""


class ConfigError(PtychoError, ValueError):
    """An invalid configuration value (names the field, the value and what is allowed)."""


class DataContractError(PtychoError, ValueError):
    """An input file breaks the data contract (names the file, the key, expected and actual)."""


class BundleError(PtychoError, ValueError):
    """A model bundle is missing, truncated, tampered with or of an unknown schema."""


class BundleBackendMismatchError(BundleError):
    """A bundle written by one backend was given to the other."""

    def __init__(self, path: object, archived: str, active: str) -> None:
        self.path = path
        self.archived = archived
        self.active = active
        super().__init__(
            f"{path}: bundle was written by the {archived!r} backend but the active backend is "
            f"{active!r}; reconstruct it with --backend {archived}, or convert it first: "
            f"ptycho convert-bundle {path} OUT --to {active}"
        )


class BackendUnavailableError(PtychoError, RuntimeError):
    """The selected backend is not installed (message carries the pip command).

    Display name and distribution come from :data:`ptycho_core.backends.BACKENDS`.
    """

    def __init__(self, backend: str, reason: str | None = None) -> None:
        from ptycho_core.backends import BACKENDS  # lazy: backends imports this module

        info = next((b for b in BACKENDS if b.name == backend), None)
        label = info.display_name if info is not None else backend
        install = info.install_command if info is not None else f"pip install ptycho-{backend}"
        self.backend = backend
        msg = (
            f"{label} backend selected, but it is not installed or cannot be imported. "
            f"Install it with: {install}"
        )
        if reason:
            msg += f" ({reason})"
        super().__init__(msg)
