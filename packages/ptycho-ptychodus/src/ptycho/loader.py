"""``ptycho.loader``: the legacy data loader Ptychodus calls (``specs/ptychodus.md``).

:func:`load` returns a :class:`~ptycho._model.PtychoDataContainer` of deferred handles: the
grouping is done by ``ptycho_core`` when the model runs, with the bundle's gridsize.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ptycho._data import single_mode_probe
from ptycho._model import DeferredPatterns, Offsets, PtychoDataContainer
from ptycho.raw_data import GroupingRequest

__all__ = ["PtychoDataContainer", "load"]


def load(
    cb: Callable[[], Any],
    probeGuess: Any,
    which: str | None = None,
    create_split: bool = False,
) -> PtychoDataContainer:
    """``load(lambda: raw.generate_grouped_data(...), probeGuess, which=None,
    create_split=False)``.

    ``cb()`` must return what :meth:`ptycho.raw_data.RawData.generate_grouped_data` returned.
    ``probeGuess``: ``(N, N)`` or one mode ``(1, N, N)``; it must be the probe of that scan.
    Train/test splitting (``which``, ``create_split``) is not supported: ptycho splits inside
    training.
    """
    if which is not None or create_split:
        raise NotImplementedError(
            f"ptycho.loader.load: which={which!r}, create_split={create_split!r} are not "
            "supported (ptycho splits training data itself); pass which=None, create_split=False"
        )
    request = cb()
    if not isinstance(request, GroupingRequest):
        raise TypeError(
            "ptycho.loader.load: the callback must return RawData.generate_grouped_data(...), "
            f"got {type(request).__name__}"
        )
    probe = single_mode_probe(probeGuess, "ptycho.loader.load")
    if probe.shape != request.raw.probeGuess.shape or not (probe == request.raw.probeGuess).all():
        raise ValueError(
            "ptycho.loader.load: probeGuess differs from the probe of the scan being grouped"
        )
    return PtychoDataContainer(
        X=DeferredPatterns(request),
        local_offsets=Offsets(request, "local"),
        global_offsets=Offsets(request, "global"),
        probe=probe,
    )
