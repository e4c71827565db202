"""``ptycho.params``: the legacy parameter dictionary Ptychodus reads (``specs/ptychodus.md``).

Ptychodus 1.7 fills :data:`cfg` with ``update_legacy_dict`` and reads ``intensity_scale`` back
with :func:`get` after ``load_inference_bundle``. It is process-global only because Ptychodus's
child requires it; ptycho itself computes from explicit configs and the bundle, never from
:data:`cfg` (``specs/packages.md``, rule 7).
"""

from __future__ import annotations

from typing import Any

__all__ = ["cfg", "get", "params", "set"]

#: What Ptychodus's settings and the loaded bundle recorded (flat: ``N``, ``gridsize``,
#: ``intensity_scale``, ...).
cfg: dict[str, Any] = {}


def get(key: str) -> Any:
    """``cfg[key]``; a ``KeyError`` saying what sets it when absent."""
    try:
        return cfg[key]
    except KeyError:
        raise KeyError(
            f"ptycho.params: {key!r} is not set (load a model with "
            "ptycho.workflows.components.load_inference_bundle, or call update_legacy_dict)"
        ) from None


def set(key: str, value: Any) -> None:
    """``cfg[key] = value``."""
    cfg[key] = value


def params() -> dict[str, Any]:
    """The dictionary itself (the legacy accessor)."""
    return cfg
