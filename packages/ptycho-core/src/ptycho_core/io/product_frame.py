"""A Ptychodus product's world frame and experiment, carried through a scan's metadata.

``ptycho convert product.h5 scan.npz`` records the product's geometry in the scan's
``_metadata`` under :data:`FRAME_KEY`; every product later written from that scan
(``recon.h5`` of ``ptycho infer``, ``ptycho convert scan.npz out.h5``) is placed in the same
world frame and keeps the experiment's values (``specs/data-contracts.md``, "Product frame").

The object centre refers to the product's own object grid (``object_shape``), so a product
written for any other array in the same object-pixel frame — a stitched canvas with its
``origin`` — gets the centre that keeps every probe position where the input product had it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ptycho_core.io.product import Product
from ptycho_core.io.scan import contract_error

__all__ = ["FRAME_KEY", "ProductFrame"]

#: Key of the scan metadata (the NPZ ``_metadata`` JSON) holding a :class:`ProductFrame`.
FRAME_KEY = "ptychodus_product"

#: Fields that are pixel sizes (finite and > 0); every other float field is finite.
_PIXEL_FIELDS = (
    "object_pixel_width_m",
    "object_pixel_height_m",
    "probe_pixel_width_m",
    "probe_pixel_height_m",
)


@dataclass(frozen=True)
class ProductFrame:
    """Geometry and experiment of a Ptychodus product (lengths in metres, energy in eV).

    ``object_shape`` ``(H, W)``: the product's object grid, whose pixel ``(row, col)`` sits at
    ``x = object_center_x_m + (col − (W−1)/2)·object_pixel_width_m`` (and likewise ``y``);
    the scan's positions are pixels of that grid.
    """

    object_shape: tuple[int, int]
    object_center_x_m: float
    object_center_y_m: float
    object_pixel_width_m: float
    object_pixel_height_m: float
    probe_pixel_width_m: float
    probe_pixel_height_m: float
    probe_energy_eV: float = 0.0
    detector_object_distance_m: float = 0.0
    exposure_time_s: float = 0.0
    mass_attenuation_m2_kg: float = 0.0
    tomography_angle_deg: float = 0.0

    @classmethod
    def from_product(cls, product: Product) -> ProductFrame:
        """The frame of ``product`` (its object grid is ``product.object.shape[-2:]``)."""
        height, width = product.object.shape[-2:]
        values = {
            f.name: float(getattr(product, f.name))
            for f in dataclasses.fields(cls)
            if f.name != "object_shape"
        }
        return cls(object_shape=(int(height), int(width)), **values)

    def to_metadata(self) -> dict[str, Any]:
        """A JSON-safe dict (``object_shape`` as a list), the value of :data:`FRAME_KEY`."""
        out: dict[str, Any] = dataclasses.asdict(self)
        out["object_shape"] = list(self.object_shape)
        return out

    @classmethod
    def from_metadata(
        cls, metadata: Mapping[str, Any], source: object = None
    ) -> ProductFrame | None:
        """The frame recorded in a scan's ``metadata`` (None when there is none).

        Raises :class:`~ptycho_core.errors.DataContractError` naming ``source`` and the key
        (``_metadata.ptychodus_product.<field>``) when the record is malformed: not an object,
        a missing or non-finite number, a pixel size <= 0, a shape that is not two positive
        integers. Unknown fields are ignored.
        """
        raw = metadata.get(FRAME_KEY)
        if raw is None:
            return None
        where = f"_metadata.{FRAME_KEY}"
        if not isinstance(raw, Mapping):
            raise contract_error(source, where, "a JSON object", type(raw).__name__)
        shape = raw.get("object_shape")
        if not (
            isinstance(shape, list | tuple)
            and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        ):
            raise contract_error(
                source, f"{where}.object_shape", "two positive integers [H, W]", repr(shape)
            )
        values: dict[str, float] = {}
        for f in dataclasses.fields(cls):
            if f.name == "object_shape" or (
                f.name not in raw and f.default is not dataclasses.MISSING
            ):
                continue  # an experiment value not recorded keeps its default (0)
            value = raw.get(f.name)
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
            ):
                raise contract_error(source, f"{where}.{f.name}", "a finite number", repr(value))
            if f.name in _PIXEL_FIELDS and not value > 0:
                raise contract_error(
                    source, f"{where}.{f.name}", "a pixel size > 0 in metres", repr(value)
                )
            values[f.name] = float(value)
        return cls(object_shape=(int(shape[0]), int(shape[1])), **values)

    def product_fields(
        self, shape: tuple[int, int], origin_px: tuple[float, float] = (0.0, 0.0)
    ) -> dict[str, float]:
        """Keyword arguments of :func:`~ptycho_core.io.product.scan_to_product` that put an
        ``(H, W)`` array whose pixel ``(0, 0)`` sits at object-frame ``origin_px`` (a stitched
        canvas's ``origin``) in this frame: pixel sizes, the centre of that array (so each
        object pixel, and each position, keeps its world coordinates) and the experiment."""
        height, width = shape
        grid_h, grid_w = self.object_shape
        pw, ph = self.object_pixel_width_m, self.object_pixel_height_m
        shift_x = float(origin_px[0]) + (width - 1) / 2 - (grid_w - 1) / 2
        shift_y = float(origin_px[1]) + (height - 1) / 2 - (grid_h - 1) / 2
        return {
            "pixel_size_m": pw,
            "pixel_height_m": ph,
            "center_x_m": self.object_center_x_m + shift_x * pw,
            "center_y_m": self.object_center_y_m + shift_y * ph,
            "probe_pixel_width_m": self.probe_pixel_width_m,
            "probe_pixel_height_m": self.probe_pixel_height_m,
            "probe_energy_eV": self.probe_energy_eV,
            "detector_object_distance_m": self.detector_object_distance_m,
            "exposure_time_s": self.exposure_time_s,
            "mass_attenuation_m2_kg": self.mass_attenuation_m2_kg,
            "tomography_angle_deg": self.tomography_angle_deg,
        }
