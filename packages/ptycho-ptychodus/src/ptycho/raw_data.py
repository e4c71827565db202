"""``ptycho.raw_data``: the legacy scan container Ptychodus builds (``specs/ptychodus.md``).

:class:`RawData` holds one scan in the original attribute names (``diff3d``, ``probeGuess``,
``objectGuess``, ...) and converts to ``ptycho_core``'s :class:`~ptycho_core.io.ScanData`
(:meth:`RawData.to_scan`). Framework-free.

- :meth:`RawData.from_coords_without_pc` is what Ptychodus's child calls with **detector counts**:
  ``diff3d`` becomes ``sqrt(counts)``.
- :meth:`RawData.from_file` reads a Ptychodus export (counts → ``sqrt``) or a DATA-001 scan.
- :meth:`RawData.generate_grouped_data` does not group: it records the request; grouping is
  ``ptycho_core``'s and happens when the model runs, with the **bundle's** gridsize.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptycho._data import counts_to_amplitude, read_scan_file, single_mode_probe
from ptycho_core.io import ScanData

__all__ = ["GroupingRequest", "RawData"]

logger = logging.getLogger(__name__)

_PTYCHODUS = "Ptychodus reconstruct input"


@dataclass(eq=False)
class GroupingRequest:
    """What :meth:`RawData.generate_grouped_data` was asked for: pattern size ``N``, nearest
    neighbours ``K``, ``nsamples`` and the caller's ``gridsize`` (None: the bundle's)."""

    raw: RawData
    N: int
    K: int
    nsamples: int
    gridsize: int | None


class RawData:
    """One scan in the original PtychoPINN attribute names.

    ``diff3d`` ``(M, N, N) float32`` amplitude (sqrt of counts); ``xcoords``, ``ycoords``,
    ``xcoords_start``, ``ycoords_start`` ``(M,) float64`` object pixels (x = column, y = row);
    ``probeGuess`` ``(N, N) complex64``; ``scan_index`` ``(M,) int64``; ``objectGuess``
    ``(H, W) complex64`` or None (its shape is the output grid); ``Y`` ground-truth patches or
    None.
    """

    def __init__(self, scan: ScanData) -> None:
        self._scan = scan

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_scan(cls, scan: ScanData) -> RawData:
        """Wrap a validated :class:`ScanData` (amplitudes)."""
        return cls(scan)

    @classmethod
    def from_coords_without_pc(
        cls,
        xcoords: Any,
        ycoords: Any,
        diff3d: Any,
        probeGuess: Any,
        scan_index: Any,
        objectGuess: Any = None,
    ) -> RawData:
        """The scan of a Ptychodus reconstruct input.

        ``diff3d``: ``(M, N, N)`` detector **counts** (bad pixels inpainted by Ptychodus) →
        ``sqrt``. ``probeGuess``: ``(N, N)`` or a mode stack ``(modes, N, N)`` with one mode
        (several modes → error naming the shape). ``xcoords``/``ycoords``: ``(M,)`` object
        pixels. ``objectGuess``: ``(H, W)``, fixes the grid of the reconstruction.
        """
        scan = ScanData(
            diffraction=counts_to_amplitude(diff3d, _PTYCHODUS),
            xcoords=xcoords,
            ycoords=ycoords,
            probe=single_mode_probe(probeGuess, _PTYCHODUS),
            object=objectGuess,
            scan_index=scan_index,
            metadata={"source_format": "ptychodus", "diffraction_units": "sqrt(counts)"},
            source=_PTYCHODUS,
        )
        return cls(scan)

    @classmethod
    def from_file(cls, train_data_file_path: str | os.PathLike[str]) -> RawData:
        """Read an NPZ: a Ptychodus "Export Training Data" file (counts → ``sqrt``) or a
        DATA-001 scan (amplitudes)."""
        return cls(read_scan_file(train_data_file_path))

    # ------------------------------------------------------------------ legacy attributes
    @property
    def diff3d(self) -> np.ndarray:
        return self._scan.diffraction

    @property
    def xcoords(self) -> np.ndarray:
        return self._scan.xcoords

    @property
    def ycoords(self) -> np.ndarray:
        return self._scan.ycoords

    @property
    def xcoords_start(self) -> np.ndarray | None:
        return self._scan.xcoords_start

    @property
    def ycoords_start(self) -> np.ndarray | None:
        return self._scan.ycoords_start

    @property
    def probeGuess(self) -> np.ndarray:
        return self._scan.probe

    @property
    def objectGuess(self) -> np.ndarray | None:
        return self._scan.object

    @property
    def scan_index(self) -> np.ndarray | None:
        return self._scan.scan_index

    @property
    def Y(self) -> np.ndarray | None:
        return self._scan.Y

    def __len__(self) -> int:
        return self._scan.M

    def to_scan(self) -> ScanData:
        """The :class:`ScanData` (shared arrays, not copied)."""
        return self._scan

    # ------------------------------------------------------------------ grouping
    def generate_grouped_data(
        self,
        N: int,
        K: int = 4,
        nsamples: int = 1,
        gridsize: int | None = None,
        **kwargs: Any,
    ) -> GroupingRequest:
        """Record a grouping request; ``N`` must be the pattern size of the data.

        Grouping itself is ``ptycho_core``'s, done when the model runs, with the bundle's
        gridsize and ``neighbor_count = max(K, C - 1, 1)`` (``specs/ptychodus.md``). Extra
        keywords of the original signature are ignored (logged).
        """
        if int(N) != self._scan.N:
            raise ValueError(
                f"generate_grouped_data: N = {N} differs from the pattern size of the data "
                f"({self._scan.N})"
            )
        if kwargs:
            logger.info("generate_grouped_data: ignoring %s", sorted(kwargs))
        return GroupingRequest(
            raw=self,
            N=int(N),
            K=int(K),
            nsamples=int(nsamples),
            gridsize=None if gridsize is None else int(gridsize),
        )
