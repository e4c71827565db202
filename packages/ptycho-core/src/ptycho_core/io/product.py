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
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core.errors import DataContractError
from ptycho_core.io._atomic import atomic_path
from ptycho_core.io.scan import ScanData, contract_error

__all__ = ["Product", "read_product", "write_product", "scan_to_product", "product_positions_px"]

logger = logging.getLogger(__name__)

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
    probe_energy_eV: float = 0.0  # noqa: N815 - the file's spelling
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
        x = np.asarray(self.probe_position_x_m, dtype=np.float64).reshape(-1)
        y = np.asarray(self.probe_position_y_m, dtype=np.float64).reshape(-1)
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
        idx = np.asarray(self.probe_position_indexes).reshape(-1)
        if idx.shape != x.shape or not np.issubdtype(idx.dtype, np.number):
            raise contract_error(
                src,
                "probe_position_indexes",
                f"{x.size} integers",
                f"shape {idx.shape} dtype {idx.dtype}",
            )
        self.probe_position_indexes = idx.astype(np.int64)
        self.probe = _complex(self.probe, "probe", (2, 3, 4), src)
        obj = _complex(self.object, "object", (2, 3), src)
        self.object = obj[np.newaxis] if obj.ndim == 2 else obj
        spacing = np.asarray(self.object_layer_spacing_m, dtype=np.float64).reshape(-1)
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
        loss = np.asarray(self.loss_values, dtype=np.float64).reshape(-1)
        epochs = np.arange(loss.size) if self.loss_epochs is None else np.asarray(self.loss_epochs)
        epochs = epochs.reshape(-1)
        if epochs.shape != loss.shape:
            raise contract_error(
                src, "loss_epochs", f"shape {loss.shape} (as loss_values)", f"shape {epochs.shape}"
            )
        self.loss_values, self.loss_epochs = loss, epochs.astype(np.int64)
        for key in (
            "probe_pixel_width_m",
            "probe_pixel_height_m",
            "object_pixel_width_m",
            "object_pixel_height_m",
        ):
            v = float(getattr(self, key))
            if not (np.isfinite(v) and v > 0):
                raise contract_error(src, key, "a positive pixel size in metres", repr(v))
            setattr(self, key, v)

    @property
    def positions_m(self) -> np.ndarray:
        """``(M, 2)`` float64 probe positions ``(x, y)`` in metres."""
        return np.stack([self.probe_position_x_m, self.probe_position_y_m], axis=1)


def _complex(value: Any, key: str, ndims: tuple[int, ...], src: object) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype == object or not np.issubdtype(a.dtype, np.number):
        raise contract_error(src, key, "a complex array", f"dtype {a.dtype}")
    if a.ndim not in ndims:
        raise contract_error(
            src, key, f"a {'/'.join(map(str, ndims))}-D complex array", f"shape {a.shape}"
        )
    if a.dtype not in (np.complex64, np.complex128):
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


def _read(path: Path) -> Product:
    import h5py  # core dependency; imported here to keep `import ptycho_core` light

    # h5py has no type information, so its Dataset is typed Any here.
    def optional_dataset(h5: Any, key: str) -> Any | None:
        """The ``h5py.Dataset`` at ``key``, or None when the file has no such key."""
        if key not in h5:
            return None
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

    with h5py.File(path, "r") as h5:
        kwargs: dict[str, Any] = {"source": str(path)}
        for name, spellings, default in _ATTRS:
            for spelling in spellings:
                if spelling in h5.attrs:
                    value = _attr_value(h5.attrs[spelling])
                    break
            else:
                value = default
            if name in ("name", "comments"):
                kwargs[name] = str(value)
            elif value is not None:
                try:
                    kwargs[name] = float(value)
                except (TypeError, ValueError) as exc:
                    raise contract_error(path, spellings[0], "a number", repr(value)) from exc
        for key in ("probe_position_x_m", "probe_position_y_m", "probe_position_indexes"):
            kwargs[key] = dataset(h5, key)[()]
        probe = dataset(h5, "probe")
        kwargs["probe"] = probe[()]
        kwargs["probe_pixel_width_m"] = float(_attr_value(probe.attrs.get("pixel_width_m", 0.0)))
        kwargs["probe_pixel_height_m"] = float(_attr_value(probe.attrs.get("pixel_height_m", 0.0)))
        obj = dataset(h5, "object")
        kwargs["object"] = obj[()]
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
            kwargs[ours] = float(_attr_value(obj.attrs[theirs]))
        # A product written without probe pixel sizes uses the object's (as Ptychodus does).
        if kwargs["probe_pixel_width_m"] <= 0:
            kwargs["probe_pixel_width_m"] = kwargs["object_pixel_width_m"]
        if kwargs["probe_pixel_height_m"] <= 0:
            kwargs["probe_pixel_height_m"] = kwargs["object_pixel_height_m"]
        spacing = optional_dataset(h5, "object_layer_spacing_m")
        if spacing is not None:
            kwargs["object_layer_spacing_m"] = spacing[()]
        values = optional_dataset(h5, "loss_values")
        if values is None:
            values = optional_dataset(h5, "costs")
        epochs = optional_dataset(h5, "loss_epochs")
        if values is not None:
            kwargs["loss_values"] = values[()]
            if epochs is not None:
                kwargs["loss_epochs"] = epochs[()]
        return Product(**kwargs)


def read_product(path: str | os.PathLike[str]) -> Product:
    """Read a Ptychodus product HDF5 file (unknown keys ignored; complex64/128 accepted).

    Raises ``FileNotFoundError`` for a missing file and :class:`DataContractError` (naming the
    file and key) for anything else that is wrong, including a damaged or non-HDF5 file.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"product file not found: {p}")
    try:
        product = _read(p)
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
