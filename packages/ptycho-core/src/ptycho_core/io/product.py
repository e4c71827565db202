"""Ptychodus product files (HDF5), ``specs/data-contracts.md``

Layout (root of the file):

- attributes ``name``, ``comments``, ``detector_object_distance_m``, ``probe_energy_eV`` *and*
  ``photon_energy_eV`` (Ptychodus ≥ 1.7 spelling), ``exposure_time_s``, ``probe_photon_count``
  (when known), ``mass_attenuation_m2_kg`` *and* ``mass_attenuation_m2_per_kg``,
  ``tomography_angle_deg``;
- datasets ``probe_position_indexes`` (M,) int, ``probe_position_x_m``/``_y_m`` (M,) float
  (metres, world frame); ``probe`` complex ``[H,W]``/``[I,H,W]``/``[C,I,H,W]`` with attributes
  ``pixel_width_m``/``pixel_height_m``; ``object`` complex ``[L,H,W]`` with ``center_x_m``,
  ``center_y_m``, ``pixel_width_m``, ``pixel_height_m``; ``object_layer_spacing_m`` (L−1,);
  ``loss_values`` (E,) and ``loss_epochs`` (E,) (``costs`` is read as an alias of ``loss_values``).

World ↔ object pixel: pixel ``(row, col)`` of an ``H×W`` object sits at
``x = center_x + (col − (W−1)/2)·pixel_width``, ``y = center_y + (row − (H−1)/2)·pixel_height``.

Reading trusts nothing: the file must be HDF5 (else it is named for what it is), its global
heaps are checked before libhdf5 parses them (:func:`_check_global_heaps`), every type before
its values are read (:func:`_check_type`), sizes against the decompression guard, and every
array and scalar returned is non-empty and finite. Every failure is a
:class:`~ptycho_core.errors.DataContractError` naming the file and the key.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core.errors import DataContractError
from ptycho_core.io._atomic import atomic_path
from ptycho_core.io.npz import (
    EXPANSION_FLOOR_BYTES,
    EXPANSION_RATIO,
    describe_file,
    expansion_limit,
)
from ptycho_core.io.scan import ScanData, _check_finite, contract_error

__all__ = ["Product", "read_product", "write_product", "scan_to_product", "product_positions_px"]

logger = logging.getLogger(__name__)

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# (our field, file spellings to read in order of preference, default)
_ATTRS: tuple[tuple[str, tuple[str, ...], Any], ...] = (
    ("name", ("name",), "ptycho"),
    ("comments", ("comments",), ""),
    ("detector_object_distance_m", ("detector_object_distance_m",), 0.0),
    ("probe_energy_eV", ("probe_energy_eV", "photon_energy_eV"), 0.0),
    ("exposure_time_s", ("exposure_time_s",), 0.0),
    ("probe_photon_count", ("probe_photon_count",), None),
    ("mass_attenuation_m2_kg", ("mass_attenuation_m2_kg", "mass_attenuation_m2_per_kg"), 0.0),
    ("tomography_angle_deg", ("tomography_angle_deg",), 0.0),
)


@dataclass(eq=False)
class Product:
    """A reconstruction product (Ptychodus's data model, flattened).

    Positions are metres in the world frame; ``object`` is ``(L, H, W)`` complex; ``probe`` is
    complex ``(H, W)``, ``(I, H, W)`` or ``(C, I, H, W)``. Pixel sizes are metres.
    """

    probe_position_x_m: np.ndarray
    probe_position_y_m: np.ndarray
    probe: np.ndarray
    object: np.ndarray
    probe_position_indexes: np.ndarray | None = None
    name: str = "ptycho"
    comments: str = ""
    detector_object_distance_m: float = 0.0
    probe_energy_eV: float = 0.0
    exposure_time_s: float = 0.0
    probe_photon_count: float | None = None
    mass_attenuation_m2_kg: float = 0.0
    tomography_angle_deg: float = 0.0
    probe_pixel_width_m: float = 1.0
    probe_pixel_height_m: float = 1.0
    object_center_x_m: float = 0.0
    object_center_y_m: float = 0.0
    object_pixel_width_m: float = 1.0
    object_pixel_height_m: float = 1.0
    object_layer_spacing_m: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss_epochs: np.ndarray | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        src = self.source
        x = _real(self.probe_position_x_m, "probe_position_x_m", src)
        y = _real(self.probe_position_y_m, "probe_position_y_m", src)
        if x.size == 0:
            raise contract_error(src, "probe_position_x_m", "at least one position", "none")
        if x.shape != y.shape:
            raise contract_error(
                src,
                "probe_position_y_m",
                f"shape {x.shape} (as probe_position_x_m)",
                f"shape {y.shape}",
            )
        self.probe_position_x_m, self.probe_position_y_m = x, y
        if self.probe_position_indexes is None:
            self.probe_position_indexes = np.arange(x.size, dtype=np.int64)
        idx = _real(self.probe_position_indexes, "probe_position_indexes", src, integral=True)
        if idx.shape != x.shape:
            raise contract_error(
                src, "probe_position_indexes", f"{x.size} integers", f"shape {idx.shape}"
            )
        self.probe_position_indexes = idx
        self.probe = _complex(self.probe, "probe", (2, 3, 4), src)
        obj = _complex(self.object, "object", (2, 3), src)
        self.object = obj[np.newaxis] if obj.ndim == 2 else obj
        spacing = _real(self.object_layer_spacing_m, "object_layer_spacing_m", src)
        layers = self.object.shape[0]
        if spacing.size != layers - 1:
            if spacing.size == 0:
                spacing = np.zeros(layers - 1)
            else:
                raise contract_error(
                    src,
                    "object_layer_spacing_m",
                    f"{layers - 1} value(s) for {layers} layer(s)",
                    f"{spacing.size}",
                )
        self.object_layer_spacing_m = spacing
        # Loss values are a record, never computed on: a diverged epoch (NaN, inf) is kept.
        loss = _real(self.loss_values, "loss_values", src, finite=False)
        epochs = (
            np.arange(loss.size, dtype=np.int64)
            if self.loss_epochs is None
            else _real(self.loss_epochs, "loss_epochs", src, integral=True)
        )
        if epochs.shape != loss.shape:
            raise contract_error(
                src, "loss_epochs", f"shape {loss.shape} (as loss_values)", f"shape {epochs.shape}"
            )
        self.loss_values, self.loss_epochs = loss, epochs
        for key in (
            "probe_pixel_width_m",
            "probe_pixel_height_m",
            "object_pixel_width_m",
            "object_pixel_height_m",
        ):
            v = _scalar(getattr(self, key), key, src)
            if not v > 0:
                raise contract_error(src, key, "a positive pixel size in metres", repr(v))
            setattr(self, key, v)
        for key in _FINITE_SCALARS:
            setattr(self, key, _scalar(getattr(self, key), key, src))
        if self.probe_photon_count is not None:
            count = _scalar(self.probe_photon_count, "probe_photon_count", src)
            if count < 0:
                raise contract_error(src, "probe_photon_count", "a count >= 0", repr(count))
            self.probe_photon_count = count

    @property
    def positions_m(self) -> np.ndarray:
        """``(M, 2)`` float64 probe positions ``(x, y)`` in metres."""
        return np.stack([self.probe_position_x_m, self.probe_position_y_m], axis=1)


#: Scalar fields that must be finite numbers (the pixel sizes must also be > 0).
_FINITE_SCALARS = (
    "detector_object_distance_m",
    "probe_energy_eV",
    "exposure_time_s",
    "mass_attenuation_m2_kg",
    "tomography_angle_deg",
    "object_center_x_m",
    "object_center_y_m",
)


def _scalar(value: Any, key: str, src: object) -> float:
    """A finite float; anything else (NaN, inf, text, arrays, bool) names the key."""
    if isinstance(value, bool | np.bool_):
        raise contract_error(src, key, "a finite number", repr(value))
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise contract_error(src, key, "a finite number", repr(value)[:80]) from None
    if not np.isfinite(v):
        raise contract_error(src, key, "a finite number", repr(v))
    return v


def _real(
    value: Any, key: str, src: object, *, integral: bool = False, finite: bool = True
) -> np.ndarray:
    """A flat real array: float64, or int64 when ``integral`` (whole numbers only)."""
    a = np.asarray(value)
    if a.dtype == object or not (
        np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)
    ):
        raise contract_error(src, key, "a real numeric array", f"dtype {a.dtype}")
    a = a.reshape(-1)
    if integral:
        if np.issubdtype(a.dtype, np.floating) and not (
            np.all(np.isfinite(a)) and np.all(np.mod(a, 1) == 0) and np.all(np.abs(a) < 2.0**63)
        ):
            raise contract_error(src, key, "integers", "non-integral, huge or non-finite values")
        return a.astype(np.int64)
    a = a.astype(np.float64)
    if finite:
        _check_finite(a, key, src)
    return a


def _complex(value: Any, key: str, ndims: tuple[int, ...], src: object) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == object or a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise contract_error(src, key, "a complex array", f"dtype {a.dtype}")
    if a.ndim not in ndims:
        raise contract_error(
            src, key, f"a {'/'.join(map(str, ndims))}-D complex array", f"shape {a.shape}"
        )
    if a.size == 0:
        raise contract_error(src, key, "a non-empty array", f"shape {a.shape}")
    _check_finite(a, key, src)
    if a.dtype not in (np.complex64, np.complex128):
        if np.abs(a).max() > np.finfo(np.float32).max:
            raise contract_error(src, key, "values within the complex64 range", "larger ones")
        a = a.astype(np.complex64)
    return a


def _attr_value(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    if isinstance(raw, np.ndarray) and raw.size == 1:
        raw = raw.reshape(()).item()
    if isinstance(raw, np.generic):
        return raw.item()
    return raw


@contextlib.contextmanager
def _reading(path: Path, key: str) -> Iterator[None]:
    """Map any low-level failure while reading ``key`` to a DataContractError naming it."""
    try:
        yield
    except DataContractError:
        raise
    except Exception as exc:  # h5py reports damage with many exception types
        raise contract_error(
            path, key, "a readable value", f"a damaged one ({type(exc).__name__}: {exc})"
        ) from exc


def _is_hdf5(path: Path) -> tuple[bool, bytes]:
    """Whether the HDF5 signature sits at offset 0, 512, 1024, ... (user blocks), and the
    file's first bytes."""
    with open(path, "rb") as fh:
        head = fh.read(512)
        offset = 0
        while True:
            fh.seek(offset)
            if fh.read(8) == _HDF5_SIGNATURE:
                return True, head
            if offset and fh.tell() < offset + 8:
                return False, head
            offset = 512 if offset == 0 else offset * 2


#: Global heap collection signature, version 1 (HDF5 file format, "Global Heap").
_GCOL = re.compile(rb"GCOL\x01\x00\x00\x00")
_MAX_HEAP_OBJECTS = 64


def _check_global_heaps(path: Path) -> None:
    """Refuse damaged global heaps before libhdf5 parses them (both found by fuzzing).

    A global heap collection holds variable-length values (the ``name`` and ``comments``
    strings). libhdf5 1.14 (i) loops forever on a collection whose free-space object has size
    0, and (ii) allocates *and zero-fills* a buffer of a value's stored length before looking
    at the heap, so one damaged 4-byte length costs up to 4 GiB and seconds. This walks each
    collection as libhdf5 does (8-byte lengths, h5py's default) and requires the objects to
    tile it; then each object's references (its heap ID in the raw file) may not declare more
    bytes than the object holds. Only the first :data:`_MAX_HEAP_OBJECTS` objects' references
    are checked.
    """
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        size = len(mm)
        objects: list[tuple[int, int, int]] = []
        for match in _GCOL.finditer(mm):
            start = match.start()
            end = start + int.from_bytes(mm[start + 8 : start + 16], "little")
            if end > size:
                continue  # libhdf5 cannot read it either: its own (fast) error
            pos = start + 16
            while pos + 16 <= end:
                index = int.from_bytes(mm[pos : pos + 2], "little")
                length = int.from_bytes(mm[pos + 8 : pos + 16], "little")
                need = 16 + (length + 7) // 8 * 8 if index else length
                if need == 0 or pos + need > end:
                    raise DataContractError(
                        f"{path}: damaged HDF5 global heap at byte {start} (object {index} of "
                        f"{length} bytes does not fit its collection)"
                    )
                if index and len(objects) < _MAX_HEAP_OBJECTS:
                    objects.append((start, index, length))
                pos += need
        for collection, index, length in objects:
            heap_id = collection.to_bytes(8, "little") + index.to_bytes(4, "little")
            at = mm.find(heap_id)
            while at != -1:
                stored = int.from_bytes(mm[at - 4 : at], "little") if at >= 4 else 0
                if stored > length:
                    raise DataContractError(
                        f"{path}: a variable-length value (a string attribute such as 'name' "
                        f"or 'comments') declares {stored} bytes but its heap object holds "
                        f"{length}; the file is damaged"
                    )
                at = mm.find(heap_id, at + 1)


def _check_type(path: Path, key: str, tid: Any, dtype: np.dtype[Any], *, text: bool) -> None:
    """The stored HDF5 type of ``key`` must be a well-formed one of what h5py reads it as;
    checked before any value is read (libhdf5 type introspection only, no conversion).

    Found by fuzzing, each a segmentation fault in libhdf5 1.14 while converting values: a
    complex (compound ``{r, i}``) dataset whose stored element size was damaged to 7 MB, still
    typed complex64 by h5py; and a variable-length *string* whose type bits were damaged into
    an invalid variable-length *sequence*. Text must be an HDF5 string (fixed or variable);
    numbers an integer, float, enum (bool) or a two-float compound (complex) whose stored size
    is the size of the numpy type.
    """
    import h5py

    cls = tid.get_class()
    if text:
        if cls != h5py.h5t.STRING:
            raise contract_error(path, key, "an HDF5 string", f"HDF5 type class {cls} (damaged)")
        return
    size = tid.get_size()
    ok = cls in (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.ENUM) or (
        cls == h5py.h5t.STRING and dtype.kind == "S"
    )
    if cls == h5py.h5t.COMPOUND and tid.get_nmembers() == 2:
        half = size // 2
        ok = all(
            tid.get_member_class(m) == h5py.h5t.FLOAT
            and tid.get_member_type(m).get_size() == half
            and tid.get_member_offset(m) == m * half
            for m in range(2)
        )
    if not ok or size != dtype.itemsize:
        raise contract_error(
            path,
            key,
            f"a well-formed stored type of {dtype.itemsize}-byte elements ({dtype})",
            f"HDF5 type class {cls} of {size}-byte elements (damaged type)",
        )


def _read(path: Path, max_expanded_bytes: int | None) -> Product:
    import h5py  # core dependency; imported here to keep `import ptycho_core` light

    limit = expansion_limit(path.stat().st_size, max_expanded_bytes)
    budget = [limit]

    # h5py has no type information, so its Dataset is typed Any here.
    def optional_dataset(h5: Any, key: str) -> Any | None:
        """The ``h5py.Dataset`` at ``key``, or None when the file has no such key."""
        with _reading(path, key):
            link = h5.get(key, getlink=True)
            if link is None:
                return None
            if isinstance(link, h5py.ExternalLink):
                raise contract_error(
                    path, key, "a dataset inside the file", "a link to another file"
                )
            node = h5[key]
        if not isinstance(node, h5py.Dataset):
            raise contract_error(path, key, "an HDF5 dataset", type(node).__name__)
        return node

    def dataset(h5: Any, key: str) -> Any:
        """The ``h5py.Dataset`` at ``key``; a missing key is a contract error."""
        node = optional_dataset(h5, key)
        if node is None:
            raise DataContractError(
                f"{path}: missing required dataset {key!r}; present: {sorted(h5.keys())}"
            )
        return node

    def values(node: Any, key: str) -> Any:
        """The whole dataset, after checking its type and charging its size to the
        decompression guard (nothing is read before both pass)."""
        with _reading(path, key):
            if node.dtype.kind not in "biufc":  # strings, references, compounds: never read
                raise contract_error(path, key, "a numeric dataset", f"dtype {node.dtype}")
            _check_type(path, key, node.id.get_type(), node.dtype, text=False)
            nbytes = int(np.prod(node.shape or (), dtype=np.float64)) * node.dtype.itemsize
            if nbytes > budget[0]:
                raise contract_error(
                    path,
                    key,
                    f"datasets that decompress to at most {limit} bytes in all (decompression "
                    f"guard: max({EXPANSION_FLOOR_BYTES / 2**30:g} GiB, {EXPANSION_RATIO} × "
                    "the file size); pass max_expanded_bytes to read_product)",
                    f"{nbytes} bytes for {key!r}",
                )
            budget[0] -= nbytes
            return node[()]

    def attr(attrs: Any, key: str, where: str = "", text: bool = False) -> Any:
        """Attribute ``key``; a number unless ``text``. Its type is checked before its value
        is read: a damaged variable-length value can make libhdf5 allocate gigabytes."""
        with _reading(path, where + key):
            aid = attrs.get_id(key)
            kind = aid.dtype.kind
            if kind not in ("biufcSO" if text else "biufcS"):
                what = "a string" if text else "a number"
                raise contract_error(path, where + key, what, f"an attribute of kind {kind!r}")
            _check_type(path, where + key, aid.get_type(), aid.dtype, text=kind in "SO")
            return _attr_value(attrs[key])

    with h5py.File(path, "r") as h5:
        kwargs: dict[str, Any] = {"source": str(path)}
        for name, spellings, default in _ATTRS:
            spelling = next((sp for sp in spellings if sp in h5.attrs), None)
            text = name in ("name", "comments")
            value = default if spelling is None else attr(h5.attrs, spelling, text=text)
            if name in ("name", "comments"):
                kwargs[name] = str(value)
            elif value is not None:
                kwargs[name] = _scalar(value, spelling or name, path)
        for key in ("probe_position_x_m", "probe_position_y_m", "probe_position_indexes"):
            kwargs[key] = values(dataset(h5, key), key)
        probe = dataset(h5, "probe")
        kwargs["probe"] = values(probe, "probe")
        for ours, theirs in (
            ("probe_pixel_width_m", "pixel_width_m"),
            ("probe_pixel_height_m", "pixel_height_m"),
        ):
            if theirs in probe.attrs:
                kwargs[ours] = _scalar(
                    attr(probe.attrs, theirs, "probe/@"), f"probe/@{theirs}", path
                )
        obj = dataset(h5, "object")
        kwargs["object"] = values(obj, "object")
        for ours, theirs in (
            ("object_center_x_m", "center_x_m"),
            ("object_center_y_m", "center_y_m"),
            ("object_pixel_width_m", "pixel_width_m"),
            ("object_pixel_height_m", "pixel_height_m"),
        ):
            if theirs not in obj.attrs:
                raise contract_error(
                    path, f"object/@{theirs}", "an attribute of the object dataset", "nothing"
                )
            kwargs[ours] = _scalar(attr(obj.attrs, theirs, "object/@"), f"object/@{theirs}", path)
        # A product written without probe pixel sizes (or with 0) uses the object's, as
        # Ptychodus does.
        for side in ("width", "height"):
            if kwargs.get(f"probe_pixel_{side}_m", 0.0) <= 0:
                kwargs[f"probe_pixel_{side}_m"] = kwargs[f"object_pixel_{side}_m"]
        spacing = optional_dataset(h5, "object_layer_spacing_m")
        if spacing is not None:
            kwargs["object_layer_spacing_m"] = values(spacing, "object_layer_spacing_m")
        loss_key = "loss_values"
        loss = optional_dataset(h5, loss_key)
        if loss is None:
            loss_key = "costs"
            loss = optional_dataset(h5, loss_key)
        epochs = optional_dataset(h5, "loss_epochs")
        if loss is not None:
            kwargs["loss_values"] = values(loss, loss_key)
            if epochs is not None:
                kwargs["loss_epochs"] = values(epochs, "loss_epochs")
        return Product(**kwargs)


def read_product(path: str | os.PathLike[str], *, max_expanded_bytes: int | None = None) -> Product:
    """Read a Ptychodus product HDF5 file (unknown keys ignored; complex64/128 accepted).

    Every array returned is non-empty and finite (``loss_values`` excepted: a record of the
    training, kept as written); every scalar is finite, pixel sizes > 0. The datasets read may
    decompress to at most :func:`~ptycho_core.io.npz.expansion_limit` bytes
    (``max_expanded_bytes`` replaces that limit). Links to other files are refused.

    Raises ``FileNotFoundError`` for a missing file and :class:`DataContractError` (naming the
    file and key) for anything else that is wrong, including a damaged or non-HDF5 file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"product file not found: {p}")
    is_hdf5, head = _is_hdf5(p)
    if not is_hdf5:
        raise DataContractError(
            f"{p}: expected an HDF5 file (a Ptychodus product), got {describe_file(head)}"
        )
    try:
        _check_global_heaps(p)
        product = _read(p, max_expanded_bytes)
    except DataContractError:
        raise
    except Exception as exc:  # h5py reports damage with many exception types
        raise DataContractError(
            f"{p}: not a readable Ptychodus product file ({type(exc).__name__}: {exc})"
        ) from exc
    logger.debug("%s: read product with %d positions", p, product.probe_position_x_m.size)
    return product


def write_product(path: str | os.PathLike[str], product: Product) -> None:
    """Write ``product`` atomically in the Ptychodus HDF5 layout (both attribute spellings)."""
    import h5py

    with atomic_path(path, suffix=".h5") as tmp, h5py.File(tmp, "w") as h5:
        attrs = h5.attrs
        attrs["name"] = product.name
        attrs["comments"] = product.comments
        attrs["detector_object_distance_m"] = float(product.detector_object_distance_m)
        attrs["probe_energy_eV"] = float(product.probe_energy_eV)
        attrs["photon_energy_eV"] = float(product.probe_energy_eV)
        attrs["exposure_time_s"] = float(product.exposure_time_s)
        if product.probe_photon_count is not None:
            attrs["probe_photon_count"] = float(product.probe_photon_count)
        attrs["mass_attenuation_m2_kg"] = float(product.mass_attenuation_m2_kg)
        attrs["mass_attenuation_m2_per_kg"] = float(product.mass_attenuation_m2_kg)
        attrs["tomography_angle_deg"] = float(product.tomography_angle_deg)
        h5.create_dataset("probe_position_indexes", data=product.probe_position_indexes)
        h5.create_dataset("probe_position_x_m", data=product.probe_position_x_m)
        h5.create_dataset("probe_position_y_m", data=product.probe_position_y_m)
        probe = h5.create_dataset("probe", data=product.probe)
        probe.attrs["pixel_width_m"] = product.probe_pixel_width_m
        probe.attrs["pixel_height_m"] = product.probe_pixel_height_m
        obj = h5.create_dataset("object", data=product.object)
        obj.attrs["center_x_m"] = float(product.object_center_x_m)
        obj.attrs["center_y_m"] = float(product.object_center_y_m)
        obj.attrs["pixel_width_m"] = product.object_pixel_width_m
        obj.attrs["pixel_height_m"] = product.object_pixel_height_m
        h5.create_dataset("object_layer_spacing_m", data=product.object_layer_spacing_m)
        h5.create_dataset("loss_epochs", data=product.loss_epochs)
        h5.create_dataset("loss_values", data=product.loss_values)
    logger.info("wrote product %s (%d positions)", path, product.probe_position_x_m.size)


def scan_to_product(
    scan: ScanData,
    object: np.ndarray | None = None,  # the product's own word
    *,
    pixel_size_m: float,
    pixel_height_m: float | None = None,
    origin_px: tuple[float, float] = (0.0, 0.0),
    center_x_m: float = 0.0,
    center_y_m: float = 0.0,
    probe: np.ndarray | None = None,
    loss_values: Any = None,
    loss_epochs: Any = None,
    **metadata: Any,
) -> Product:
    """Convert a scan (positions in object pixels) and an object into a :class:`Product`.

    Parameters
    ----------
    object:
        ``(H, W)`` or ``(L, H, W)`` complex; default ``scan.object``; when both are absent a
        placeholder of ones covering every patch (origin at pixel 0) is used.
    pixel_size_m, pixel_height_m:
        Object (and probe) pixel width / height in metres (height defaults to width).
    origin_px:
        ``(x0, y0)``: the object-frame position of the array's pixel ``(0, 0)`` (a stitched
        canvas's ``origin``); positions are shifted by it before conversion.
    center_x_m, center_y_m:
        World position of the array centre ``((W−1)/2, (H−1)/2)``.
    metadata:
        Any scalar :class:`Product` field (``name``, ``probe_energy_eV``, ...).
    """
    ph = float(pixel_size_m if pixel_height_m is None else pixel_height_m)
    pw = float(pixel_size_m)
    if object is None:
        object = scan.object
    if object is None:
        half = scan.N / 2
        w = int(np.ceil(float(np.max(scan.xcoords)) + half)) + 1
        h = int(np.ceil(float(np.max(scan.ycoords)) + half)) + 1
        object = np.ones((h, w), np.complex64)
    obj = np.asarray(object)
    height, width = obj.shape[-2:]
    x_px = scan.xcoords - float(origin_px[0])
    y_px = scan.ycoords - float(origin_px[1])
    fields: dict[str, Any] = dict(
        probe_position_x_m=center_x_m + (x_px - (width - 1) / 2) * pw,
        probe_position_y_m=center_y_m + (y_px - (height - 1) / 2) * ph,
        probe_position_indexes=np.arange(scan.M),
        probe=scan.probe if probe is None else probe,
        object=obj,
        probe_pixel_width_m=pw,
        probe_pixel_height_m=ph,
        object_pixel_width_m=pw,
        object_pixel_height_m=ph,
        object_center_x_m=center_x_m,
        object_center_y_m=center_y_m,
        loss_values=np.zeros(0) if loss_values is None else loss_values,
        loss_epochs=loss_epochs,
    )
    if metadata.get("probe_photon_count") is None and scan.metadata.get("nphotons") is not None:
        metadata["probe_photon_count"] = float(scan.metadata["nphotons"])
    fields.update(metadata)
    return Product(**fields)


def product_positions_px(product: Product) -> np.ndarray:
    """``(M, 2)`` float64 positions ``(x, y)`` in pixels of ``product.object`` (inverse mapping)."""
    height, width = product.object.shape[-2:]
    x = (product.probe_position_x_m - product.object_center_x_m) / product.object_pixel_width_m
    y = (product.probe_position_y_m - product.object_center_y_m) / product.object_pixel_height_m
    return np.stack([x + (width - 1) / 2, y + (height - 1) / 2], axis=1)
