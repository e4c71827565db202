"""Reading a probe from a scan or a product file (``specs/data-contracts.md``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ptycho_core.errors import DataContractError
from ptycho_core.io.npz import load_npz
from ptycho_core.io.product import read_product
from ptycho_core.io.scan import squeeze_probe

__all__ = ["read_probe"]

_PRODUCT_SUFFIXES = (".h5", ".hdf5")


def read_probe(path: str | os.PathLike[str]) -> np.ndarray:
    """The single-mode probe ``(N, N) complex64`` held by a DATA-001 scan (``.npz``, key
    ``probeGuess``) or a Ptychodus product (``.h5``/``.hdf5``, dataset ``probe``).

    A multi-mode probe, a non-square or non-finite one, or another file type is a
    :class:`DataContractError` naming the file and the key.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".npz":
        probe, key = load_npz(p).probe, "probeGuess"
    elif suffix in _PRODUCT_SUFFIXES:
        probe, key = read_product(p).probe, "probe"
        probe = np.asarray(probe)
        while probe.ndim > 2 and probe.shape[0] == 1:
            probe = probe[0]
    else:
        raise DataContractError(
            f"{p}: expected a DATA-001 scan (.npz) or a Ptychodus product (.h5) holding a "
            f"probe, got a '{p.suffix}' file"
        )
    probe = squeeze_probe(probe, p, key)
    if probe.shape[0] != probe.shape[1] or not np.isfinite(probe).all():
        raise DataContractError(
            f"{p}: key '{key}': expected a finite square (N, N) probe, got shape {probe.shape}"
        )
    return probe.astype(np.complex64)
