"""Scans stored as HDF5, read a chunk of patterns at a time (``specs/data-contracts.md``,
"Streaming HDF5 scans").

Two layouts are read:

- **scan.h5** (the NPZ contract in HDF5): root datasets named like the NPZ keys —
  ``diffraction`` ``(M, N, N)`` real amplitudes (``diff3d`` as the fallback name),
  ``xcoords``/``ycoords`` ``(M,)``, ``probeGuess`` ``(N, N)`` complex, optional ``objectGuess``,
  ``xcoords_start``/``ycoords_start``, ``scan_index``; root attribute ``_metadata`` (JSON text).
  :func:`save_h5_scan` writes it.
- **Ptychodus pair**: ``diffraction.h5`` (datasets ``patterns`` ``(M, N, N)`` detector counts,
  ``indexes`` ``(M,)``, optional ``bad_pixels`` ``(N, N)`` bool) with ``product.h5`` beside it
  (positions, probe, object; :func:`ptycho_core.io.read_product`). Amplitudes are the square
  roots of the counts; bad pixels are 0; position ``k`` uses the pattern whose ``indexes`` value
  is the product's ``probe_position_indexes[k]``.

:func:`open_h5_scan` returns a :class:`StreamingScan`, a :class:`ScanData` whose
``diffraction`` is an :class:`H5PatternStack`: indexing it (``stack[idx]``, any int array or a
slice) reads only those patterns. Opening makes one pass over the file in chunks (finite,
non-negative, and the per-pattern energies that α needs), so memory is one chunk plus the
small arrays (positions, probe, object, one float64 per pattern), never the stack.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core._jsonutil import json_default
from ptycho_core.io._atomic import atomic_path
from ptycho_core.io.npz import load_npz
from ptycho_core.io.product import _is_hdf5, product_positions_px, read_product
from ptycho_core.io.scan import (
    ScanData,
    _check_finite,
    contract_error,
)

__all__ = [
    "H5_SUFFIXES",
    "H5PatternStack",
    "StreamingScan",
    "load_scan",
    "open_h5_scan",
    "save_h5_scan",
]

logger = logging.getLogger(__name__)

H5_SUFFIXES = (".h5", ".hdf5")
#: Bytes of patterns read per chunk by the validation pass and :meth:`H5PatternStack.chunks`.
CHUNK_BYTES = 4 << 20
#: Requested rows closer than this are read as one contiguous slice (fewer HDF5 calls).
_GAP = 16


class H5PatternStack:
    """A read-only ``(M, N, N) float32`` amplitude stack backed by an HDF5 dataset.

    ``stack[idx]`` (int, int array of any shape, bool mask or slice along the first axis)
    returns ``idx.shape + (N, N)`` float32, reading only those patterns. ``rows`` maps position
    ``k`` to its row in the dataset (None: row ``k``); ``intensity`` takes square roots;
    ``bad_pixels`` ``(N, N)`` bool are set to 0. ``np.asarray(stack)`` reads everything.
    """

    dtype = np.dtype(np.float32)
    ndim = 3

    def __init__(
        self,
        path: Path,
        key: str,
        *,
        rows: np.ndarray | None = None,
        intensity: bool = False,
        bad_pixels: np.ndarray | None = None,
    ) -> None:
        import h5py

        self.path, self.key, self.intensity = Path(path), key, bool(intensity)
        self._file = h5py.File(self.path, "r")
        ds = self._file.get(key)
        if not isinstance(ds, h5py.Dataset):
            self.close()
            raise contract_error(path, key, "an (M, N, N) dataset", f"{type(ds).__name__}")
        if ds.ndim != 3 or ds.shape[1] != ds.shape[2] or ds.shape[1] % 2 or 0 in ds.shape:
            self.close()
            raise contract_error(path, key, "square even patterns (M, N, N)", f"{ds.shape}")
        if ds.dtype.kind not in "fiu":
            self.close()
            raise contract_error(path, key, "real numbers", f"dtype {ds.dtype}")
        self._ds = ds
        self._rows = None if rows is None else np.asarray(rows, np.int64)
        self._bad = None if bad_pixels is None else np.asarray(bad_pixels, bool)
        n = int(ds.shape[1])
        m = int(ds.shape[0] if self._rows is None else len(self._rows))
        self.shape = (m, n, n)
        self._energies: np.ndarray | None = None

    # ------------------------------------------------------------------ array-like
    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes the whole stack would take in memory (float32)."""
        return int(np.prod(self.shape)) * 4

    def __getitem__(self, key: Any) -> np.ndarray:
        m, n, _ = self.shape
        if isinstance(key, slice):
            idx = np.arange(m)[key]
        else:
            idx = np.asarray(key)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            elif idx.dtype.kind not in "iu":
                raise TypeError(f"{self.path}: pattern index must be integers, got {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64)
        if flat.size and (flat.min() < -m or flat.max() >= m):
            raise IndexError(f"{self.path}: pattern index out of range for {m} patterns")
        flat = np.where(flat < 0, flat + m, flat)
        rows = flat if self._rows is None else self._rows[flat]
        uniq, inverse = np.unique(rows, return_inverse=True)
        return self._read_rows(uniq)[inverse].reshape(idx.shape + (n, n))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        logger.info("%s: reading the whole %d-pattern stack into memory", self.path, len(self))
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype)

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Amplitudes of the sorted unique dataset ``rows``, ``(len(rows), N, N)`` float32."""
        return self._amplitude(self._read_raw(rows))

    def _read_raw(self, rows: np.ndarray) -> np.ndarray:
        """The stored values of the sorted unique ``rows`` as float32: nearby rows are read as
        one slice, a contiguous run straight into the output."""
        n = self.shape[1]
        out = np.empty((len(rows), n, n), np.float32)
        if len(rows) == 0:
            return out
        cuts = np.flatnonzero(np.diff(rows) > _GAP) + 1
        for run in np.split(np.arange(len(rows)), cuts):
            lo, hi = int(rows[run[0]]), int(rows[run[-1]]) + 1
            try:
                if hi - lo == len(run):
                    dest = np.s_[int(run[0]) : int(run[-1]) + 1]
                    self._ds.read_direct(out, source_sel=np.s_[lo:hi], dest_sel=dest)
                else:
                    out[run] = self._ds[lo:hi][rows[run] - lo]
            except Exception as exc:  # h5py reports damage with many exception types
                raise contract_error(
                    self.path, self.key, f"readable patterns {lo}..{hi - 1}", f"{exc}"
                ) from exc
        return out

    def _amplitude(self, raw: np.ndarray) -> np.ndarray:
        if self.intensity:
            np.sqrt(raw, out=raw)
        if self._bad is not None:
            raw[:, self._bad] = 0
        return raw

    def chunks(self) -> Any:
        """``(start, amplitudes)`` for consecutive chunks of about :data:`CHUNK_BYTES`."""
        m, n, _ = self.shape
        step = max(1, CHUNK_BYTES // (4 * n * n))
        for start in range(0, m, step):
            yield start, self[slice(start, min(m, start + step))]

    # ------------------------------------------------------------------ validation, α
    def validate(self) -> None:
        """One pass over the stack: finite, non-negative; keeps per-pattern energies (float64)."""
        m = len(self)
        energies = np.empty(m, np.float64)
        what = "non-negative counts" if self.intensity else "non-negative amplitudes"
        for start, raw in self._raw_chunks():
            _check_finite(raw, self.key, self.path)
            negative = int(np.count_nonzero(raw < 0))
            if negative:
                raise contract_error(
                    self.path, self.key, what, f"{negative} negative value(s) in chunk {start}"
                )
            d = self._amplitude(raw).astype(np.float64)
            np.multiply(d, d, out=d)
            energies[start : start + len(d)] = np.sum(d, axis=(-2, -1))
        self._energies = energies

    def _raw_chunks(self) -> Any:
        m, n, _ = self.shape
        step = max(1, CHUNK_BYTES // (4 * n * n))
        for start in range(0, m, step):
            stop = min(m, start + step)
            if self._rows is None:
                yield start, self._read_raw(np.arange(start, stop))
            else:
                uniq, inverse = np.unique(self._rows[start:stop], return_inverse=True)
                yield start, self._read_raw(uniq)[inverse]

    def mean_energy(self) -> float:
        """``mean_m Σ_hw X_m²`` (float64), as :func:`ptycho_core.physics.estimate_nphotons`."""
        if self._energies is None:
            self.validate()
        assert self._energies is not None
        return float(np.mean(self._energies))

    def norm_factor(self) -> float:
        """α = ``sqrt((N/2)² / mean energy)``, as :func:`physics.diffraction_norm_factor`."""
        energy = self.mean_energy()
        if energy <= 0:
            raise contract_error(self.path, self.key, "non-zero patterns", "zero energy")
        return float(np.sqrt((self.shape[1] / 2) ** 2 / energy))

    def close(self) -> None:
        """Close the HDF5 file (further reads fail)."""
        self._file.close()


@dataclass(eq=False)
class StreamingScan(ScanData):
    """A :class:`ScanData` whose ``diffraction`` is an :class:`H5PatternStack` (never held
    whole). Everything that indexes ``diffraction`` (grouping, inference) reads only what it
    needs; ``np.asarray(scan.diffraction)`` or :meth:`load` read the whole stack. ``Y`` is
    never read (inference does not use it)."""

    def __post_init__(self) -> None:
        if not isinstance(self.diffraction, H5PatternStack):  # e.g. subset(): a plain stack
            super().__post_init__()
            return
        src, (m, n, _) = self.source, self.diffraction.shape
        self._validate_frame(m, n, src)
        self.Y = None
        self.diffraction.validate()

    def load(self) -> ScanData:
        """The same scan fully in memory (reads the whole stack)."""
        return ScanData(
            np.asarray(self.diffraction),
            self.xcoords,
            self.ycoords,
            self.probe,
            object=self.object,
            xcoords_start=self.xcoords_start,
            ycoords_start=self.ycoords_start,
            scan_index=self.scan_index,
            metadata=dict(self.metadata),
            source=self.source,
        )

    def close(self) -> None:
        if isinstance(self.diffraction, H5PatternStack):
            self.diffraction.close()


def _dataset(h5: Any, path: Path, key: str) -> np.ndarray | None:
    """Dataset ``key`` read whole (small arrays only), None when absent."""
    import h5py

    node = h5.get(key)
    if node is None:
        return None
    if not isinstance(node, h5py.Dataset):
        raise contract_error(path, key, "a dataset", type(node).__name__)
    try:
        return np.asarray(node[()])
    except Exception as exc:  # h5py reports damage with many exception types
        raise contract_error(path, key, "a readable dataset", f"{exc}") from exc


def _required(h5: Any, path: Path, key: str) -> np.ndarray:
    value = _dataset(h5, path, key)
    if value is None:
        raise contract_error(path, key, "a dataset", f"none (datasets: {sorted(h5.keys())})")
    return value


def _open_scan_h5(path: Path, key: str, h5: Any) -> StreamingScan:
    raw = h5.attrs.get("_metadata")
    meta: Any = {}
    if raw is not None:
        try:
            meta = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            raise contract_error(path, "_metadata", "JSON text", f"{exc}") from exc
        if not isinstance(meta, dict):
            raise contract_error(path, "_metadata", "a JSON object", type(meta).__name__)
    stack: Any = H5PatternStack(path, key)  # ScanData duck-types the stack (see the class)
    return StreamingScan(
        stack,
        _required(h5, path, "xcoords"),
        _required(h5, path, "ycoords"),
        _required(h5, path, "probeGuess"),
        object=_dataset(h5, path, "objectGuess"),
        xcoords_start=_dataset(h5, path, "xcoords_start"),
        ycoords_start=_dataset(h5, path, "ycoords_start"),
        scan_index=_dataset(h5, path, "scan_index"),
        metadata=meta,
        source=str(path),
    )


def _open_ptychodus(diffraction: Path, product_path: Path, h5: Any) -> StreamingScan:
    if not product_path.is_file():
        raise FileNotFoundError(
            f"{diffraction}: a Ptychodus diffraction file needs its product (positions, probe); "
            f"expected {product_path}"
        )
    product = read_product(product_path)
    indexes = _required(h5, diffraction, "indexes")
    if indexes.ndim != 1 or indexes.dtype.kind not in "iu":
        raise contract_error(diffraction, "indexes", "(M,) integers", f"{indexes.dtype}")
    order = np.argsort(indexes, kind="stable")
    wanted = np.asarray(product.probe_position_indexes, np.int64)
    found = np.searchsorted(indexes[order], wanted)
    found = np.minimum(found, len(order) - 1)
    missing = indexes[order][found] != wanted
    if missing.any():
        raise contract_error(
            diffraction,
            "indexes",
            f"every probe_position_indexes value of {product_path}",
            f"{int(missing.sum())} missing (first: {int(wanted[missing][0])})",
        )
    bad = _dataset(h5, diffraction, "bad_pixels")
    probe = np.asarray(product.probe)
    while probe.ndim > 2 and probe.shape[0] == 1:
        probe = probe[0]
    stack: Any = H5PatternStack(  # ScanData duck-types the stack (see the class)
        diffraction, "patterns", rows=order[found], intensity=True, bad_pixels=bad
    )
    if bad is not None and bad.shape != stack.shape[1:]:
        stack.close()
        raise contract_error(diffraction, "bad_pixels", f"shape {stack.shape[1:]}", f"{bad.shape}")
    pos = product_positions_px(product)
    meta = {"object_pixel_size_m": product.object_pixel_width_m, "product": product_path.name}
    from ptycho_core.io.product_frame import FRAME_KEY, ProductFrame

    meta[FRAME_KEY] = ProductFrame.from_product(product).to_metadata()  # recon.h5 keeps the frame
    if product.probe_photon_count:
        meta["nphotons"] = float(product.probe_photon_count)
    return StreamingScan(
        stack,
        pos[:, 0],
        pos[:, 1],
        probe,
        object=np.asarray(product.object[0]),
        metadata=meta,
        source=str(diffraction),
    )


def open_h5_scan(
    path: str | os.PathLike[str], product: str | os.PathLike[str] | None = None
) -> StreamingScan:
    """Open an HDF5 scan for streaming (layouts: module docstring); validates it in one
    chunked pass. ``product``: the Ptychodus product of a ``diffraction.h5`` (default:
    ``product.h5`` beside it); a ``product.h5`` given as ``path`` finds ``diffraction.h5``
    beside it. Errors: ``FileNotFoundError``, :class:`DataContractError` naming file and key."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: scan file not found")
    ok, head = _is_hdf5(p)
    if not ok:
        raise contract_error(p, "diffraction", "an HDF5 file", f"first bytes {head[:8]!r}")
    with h5py.File(p, "r") as h5:
        keys = set(h5.keys())
    if "probe_position_x_m" in keys and "patterns" not in keys:  # a product: find its data
        return open_h5_scan(p.parent / "diffraction.h5", product=p)
    with h5py.File(p, "r") as h5:
        if "diffraction" in keys or "diff3d" in keys:
            return _open_scan_h5(p, "diffraction" if "diffraction" in keys else "diff3d", h5)
        if "patterns" in keys:
            return _open_ptychodus(p, Path(product) if product else p.parent / "product.h5", h5)
    raise contract_error(
        p,
        "diffraction",
        "a scan.h5 ('diffraction', 'xcoords', ...) or a Ptychodus diffraction.h5 ('patterns')",
        f"datasets {sorted(keys)}",
    )


def load_scan(path: str | os.PathLike[str], *, skip: tuple[str, ...] = ()) -> ScanData:
    """A scan by file suffix: ``.h5``/``.hdf5`` → :func:`open_h5_scan` (streaming), else
    :func:`ptycho_core.io.load_npz` (``skip``: optional NPZ keys left unread)."""
    if Path(path).suffix.lower() in H5_SUFFIXES:
        return open_h5_scan(path)
    return load_npz(path, skip=skip)


def save_h5_scan(path: str | os.PathLike[str], scan: ScanData, chunk_patterns: int = 64) -> Path:
    """Write ``scan`` as a scan.h5 (module docstring; ``Y`` is not written), atomically, with
    the diffraction chunked ``chunk_patterns`` patterns at a time and written chunk by chunk."""
    import h5py

    p = Path(path)
    m, n = scan.M, scan.N
    with atomic_path(p) as tmp, h5py.File(tmp, "w") as h5:
        ds = h5.create_dataset(
            "diffraction", shape=(m, n, n), dtype=np.float32, chunks=(min(m, chunk_patterns), n, n)
        )
        step = max(1, CHUNK_BYTES // (4 * n * n))
        for s in range(0, m, step):
            ds[s : s + step] = np.asarray(scan.diffraction[s : s + step], np.float32)
        for key, value in (
            ("xcoords", scan.xcoords),
            ("ycoords", scan.ycoords),
            ("xcoords_start", scan.xcoords_start),
            ("ycoords_start", scan.ycoords_start),
            ("scan_index", scan.scan_index),
            ("probeGuess", scan.probe),
            ("objectGuess", scan.object),
        ):
            if value is not None:
                h5.create_dataset(key, data=value)
        h5.attrs["_metadata"] = json.dumps(scan.metadata, default=json_default)
    return p
