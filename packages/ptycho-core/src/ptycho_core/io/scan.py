"""The in-memory scan: :class:`ScanData`, the arrays of the NPZ contract
(``specs/data-contracts.md``, DATA-001).

Frames and units (``specs/physics.md``): positions are ``(x, y)`` in object pixels (float64),
pixel centres at integer coordinates; object arrays are ``[row, col] = [y, x]``; diffraction is
the far-field *amplitude* (sqrt of photon counts when in photon units), zero frequency at
``(N/2, N/2)``.

Every :class:`ScanData` is validated on construction, so a scan built in memory (the simulator)
obeys the same contract as one read from a file. Violations raise
:class:`~ptycho_core.errors.DataContractError` naming the source, the NPZ key, what was expected
and what was found.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptycho_core.errors import DataContractError

__all__ = ["ScanData", "check_enough_patterns", "contract_error"]


def contract_error(source: object, key: str, expected: str, actual: str) -> DataContractError:
    """Build the uniform DATA-001 error: ``<source>: key 'k': expected ..., got ...``."""
    where = source if source is not None else "<in-memory scan>"
    return DataContractError(f"{where}: key {key!r}: expected {expected}, got {actual}")


def _describe(a: np.ndarray) -> str:
    return f"shape {tuple(a.shape)} dtype {a.dtype}"


def _as_real(value: Any, key: str, source: object) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == object:
        raise contract_error(source, key, "a numeric array", "an object array")
    if np.iscomplexobj(a):
        raise contract_error(source, key, "a real array", f"complex values ({_describe(a)})")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise contract_error(source, key, "a real numeric array", _describe(a))
    return a


def _as_complex(value: Any, key: str, source: object) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise contract_error(source, key, "a numeric (complex) array", _describe(a))
    return a.astype(np.complex64, copy=False)


#: Elements per chunk of the whole-array checks: their boolean temporaries stay small (4 MiB)
#: however large the stack (``specs/data-contracts.md``, bounded reader memory).
_CHECK_ELEMS = 1 << 22


def _chunks(a: np.ndarray) -> list[np.ndarray]:
    """Views of ``a`` along its first axis of about :data:`_CHECK_ELEMS` elements each."""
    if a.ndim == 0 or a.size <= _CHECK_ELEMS:
        return [a]
    step = max(1, _CHECK_ELEMS // max(1, a.size // a.shape[0]))
    return [a[i : i + step] for i in range(0, a.shape[0], step)]


def _check_finite(a: np.ndarray, key: str, source: object) -> None:
    bad = sum(int(c.size - np.count_nonzero(np.isfinite(c))) for c in _chunks(a))
    if bad:
        raise contract_error(source, key, "finite values", f"{bad} NaN or infinite value(s)")


def _check_nonempty(a: np.ndarray, key: str, source: object) -> None:
    if a.size == 0:
        raise contract_error(source, key, "a non-empty array", f"empty, shape {tuple(a.shape)}")


def _coords(value: Any, key: str, m: int, source: object) -> np.ndarray:
    a = _as_real(value, key, source)
    if a.ndim != 1 or a.shape[0] != m:
        raise contract_error(
            source, key, f"shape ({m},) (one per diffraction pattern)", f"shape {tuple(a.shape)}"
        )
    _check_finite(a, key, source)
    return a.astype(np.float64, copy=False)


def squeeze_probe(probe: np.ndarray, source: object, key: str = "probeGuess") -> np.ndarray:
    """``(1,N,N)`` and ``(N,N,1)`` → ``(N,N)``; more probe modes → error naming the shape."""
    p = np.asarray(probe)
    if p.ndim == 3 and p.shape[0] == 1:
        p = p[0]
    elif p.ndim == 3 and p.shape[2] == 1:
        p = p[:, :, 0]
    if p.ndim != 2:
        raise contract_error(
            source,
            key,
            "a single-mode probe of shape (N, N), (1, N, N) or (N, N, 1) "
            "(multi-mode probes are not supported)",
            f"shape {tuple(np.shape(probe))}",
        )
    return p


@dataclass(eq=False)
class ScanData:
    """One ptychographic scan (the NPZ contract, in memory).

    Attributes
    ----------
    diffraction : (M, N, N) float32
        Far-field amplitude, photon units when known (sqrt of counts); DC at ``(N/2, N/2)``.
    xcoords, ycoords : (M,) float64
        Scan positions in object pixels.
    probe : (N, N) complex64
        The probe (single mode).
    object : (H, W) complex64 or None
        Ground-truth / initial object; defines the object frame when present.
    xcoords_start, ycoords_start : (M,) float64
        Nominal positions; default to the positions.
    scan_index : (M,) int64
        Scan number of each pattern; default zeros.
    Y : (M, N, N) complex64 or None
        Ground-truth object patches (supervised training).
    metadata : dict
        JSON-safe facts (``nphotons``, units, creator, ...).
    source : str or None
        Where the scan came from (a file path), used in error messages.
    """

    diffraction: np.ndarray
    xcoords: np.ndarray
    ycoords: np.ndarray
    probe: np.ndarray
    object: np.ndarray | None = None
    xcoords_start: np.ndarray | None = None
    ycoords_start: np.ndarray | None = None
    scan_index: np.ndarray | None = None
    Y: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    def __post_init__(self) -> None:
        src = self.source
        d = _as_real(self.diffraction, "diffraction", src)
        if d.ndim != 3:
            raise contract_error(src, "diffraction", "a 3-D stack (M, N, N)", f"shape {d.shape}")
        m, h, w = d.shape
        if h != w:
            raise contract_error(
                src, "diffraction", "square patterns (M, N, N)", f"shape {d.shape}"
            )
        if h % 2 or h == 0:
            raise contract_error(src, "diffraction", "an even pattern size N", f"N = {h}")
        if m == 0:
            raise contract_error(src, "diffraction", "at least one pattern", "M = 0")
        _check_finite(d, "diffraction", src)
        negative = sum(int(np.count_nonzero(c < 0)) for c in _chunks(d))
        if negative:
            raise contract_error(
                src,
                "diffraction",
                "non-negative amplitudes (sqrt of intensity)",
                f"{negative} negative value(s), min {float(d.min()):.4g}",
            )
        self.diffraction = d.astype(np.float32, copy=False)
        n = h

        self._validate_frame(m, n, src)

        if self.Y is not None:
            y = _as_complex(self.Y, "Y", src)
            if y.shape != (m, n, n):
                raise contract_error(src, "Y", f"shape ({m}, {n}, {n})", f"shape {y.shape}")
            _check_finite(y, "Y", src)
            self.Y = y
        if not isinstance(self.metadata, dict):
            raise contract_error(
                src, "_metadata", "a JSON object (dict)", type(self.metadata).__name__
            )

    def _validate_frame(self, m: int, n: int, src: str | None) -> None:
        """Positions, probe, object and scan index of ``m`` patterns of ``n × n`` (shared with the
        streamed :class:`~ptycho_core.io.h5scan.H5ScanData`)."""
        self.xcoords = _coords(self.xcoords, "xcoords", m, src)
        self.ycoords = _coords(self.ycoords, "ycoords", m, src)
        self.xcoords_start = (
            self.xcoords.copy()
            if self.xcoords_start is None
            else _coords(self.xcoords_start, "xcoords_start", m, src)
        )
        self.ycoords_start = (
            self.ycoords.copy()
            if self.ycoords_start is None
            else _coords(self.ycoords_start, "ycoords_start", m, src)
        )

        probe = _as_complex(squeeze_probe(self.probe, src), "probeGuess", src)
        if probe.shape != (n, n):
            raise contract_error(
                src,
                "probeGuess",
                f"probe size equal to the pattern size ({n}, {n})",
                f"shape {probe.shape}",
            )
        _check_finite(probe, "probeGuess", src)
        self.probe = probe

        if self.object is not None:
            obj = _as_complex(self.object, "objectGuess", src)
            if obj.ndim != 2:
                raise contract_error(src, "objectGuess", "a 2-D array (H, W)", f"shape {obj.shape}")
            _check_nonempty(obj, "objectGuess", src)
            _check_finite(obj, "objectGuess", src)
            self.object = obj

        if self.scan_index is None:
            self.scan_index = np.zeros(m, dtype=np.int64)
        else:
            si = np.asarray(self.scan_index)
            if si.dtype == object or not (
                np.issubdtype(si.dtype, np.integer)
                or (
                    np.issubdtype(si.dtype, np.floating)
                    and np.all(np.isfinite(si))
                    and np.all(np.mod(si, 1) == 0)
                )
            ):
                raise contract_error(src, "scan_index", "integers", _describe(si))
            if si.shape != (m,):
                raise contract_error(src, "scan_index", f"shape ({m},)", f"shape {si.shape}")
            self.scan_index = si.astype(np.int64)

    @property
    def positions(self) -> np.ndarray:
        """``(M, 2)`` float64 scan positions ``(x, y)`` in object pixels."""
        return np.stack([self.xcoords, self.ycoords], axis=1)

    @property
    def N(self) -> int:
        """Pattern size in pixels."""
        return int(self.diffraction.shape[-1])

    @property
    def M(self) -> int:
        """Number of diffraction patterns."""
        return int(self.diffraction.shape[0])

    def __len__(self) -> int:
        return self.M

    def subset(self, indices: Any) -> ScanData:
        """A new scan with the patterns ``indices`` (int array, slice or bool mask), same
        probe/object."""
        idx = (
            np.arange(self.M)[indices]
            if not isinstance(indices, np.ndarray) or indices.dtype == bool
            else np.asarray(indices)
        )
        idx = np.atleast_1d(np.asarray(idx, dtype=np.int64))
        return dataclasses.replace(
            self,
            diffraction=self.diffraction[idx],
            xcoords=self.xcoords[idx],
            ycoords=self.ycoords[idx],
            xcoords_start=self.xcoords_start[idx],  # type: ignore[index]
            ycoords_start=self.ycoords_start[idx],  # type: ignore[index]
            scan_index=self.scan_index[idx],  # type: ignore[index]
            Y=None if self.Y is None else self.Y[idx],
            metadata=dict(self.metadata),
        )


def check_enough_patterns(scan: ScanData, needed: int, what: str = "a group") -> None:
    """Raise :class:`DataContractError` when ``scan`` has fewer than ``needed`` patterns.

    ``needed`` is typically ``C = gridsize**2`` (or ``neighbor_count + 1``) for grouping.
    """
    if scan.M < needed:
        raise contract_error(
            scan.source,
            "diffraction",
            f"at least {needed} patterns ({what} needs {needed})",
            f"{scan.M} pattern(s)",
        )
