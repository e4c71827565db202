"""``ptycho.probe``: the legacy probe setter Ptychodus calls (``specs/ptychodus.md``).

The probe travels with the data (:class:`ptycho.raw_data.RawData`); :func:`set_probe_guess`
checks it and records it in ``ptycho.params.cfg['probe']`` for callers that read it back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptycho import params
from ptycho._data import single_mode_probe

__all__ = ["get_probe_guess", "set_probe_guess"]


def set_probe_guess(x_train: Any = None, probe_guess: Any = None) -> np.ndarray:
    """Record ``probe_guess`` (``(N, N)`` or one mode of ``(1, N, N)``; complex) and return it as
    ``(N, N) complex64``. ``x_train`` is accepted and unused (the original estimated a probe
    from it when ``probe_guess`` was None; ptycho needs the measured probe)."""
    if probe_guess is None:
        raise ValueError(
            "set_probe_guess: probe_guess is None; ptycho needs the probe of the scan "
            "(estimating one from the diffraction data is not supported)"
        )
    probe = single_mode_probe(probe_guess, "set_probe_guess")
    params.cfg["probe"] = probe
    return probe


def get_probe_guess() -> np.ndarray:
    """The probe recorded by :func:`set_probe_guess` (``KeyError`` when none was)."""
    return np.asarray(params.get("probe"))
