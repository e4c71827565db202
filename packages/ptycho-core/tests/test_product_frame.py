"""A Ptychodus product's frame and experiment survive product → scan (.npz) → product
(``ptycho_core.io.ProductFrame``, ``specs/data-contracts.md`` "Product frame")."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptycho_core.errors import DataContractError
from ptycho_core.io import (
    Product,
    ProductFrame,
    ScanData,
    load_npz,
    product_positions_px,
    read_product,
    save_npz,
    scan_to_product,
    write_product,
)
from ptycho_core.io.product_frame import FRAME_KEY

N = 8
H, W = 24, 30  # the input product's object grid
CX, CY = 3e-6, -2e-6  # its centre (m)
PW, PH = 1e-8, 1.2e-8  # its object pixel width / height (m)


def _input_product(rng) -> Product:
    """A product as Ptychodus would hand it over: off-centre, non-square pixels, a probe pixel
    size of its own, experiment values set."""
    m = 7
    # positions in metres inside the object (computed from the world-frame rule, not our code)
    col = rng.uniform(N / 2, W - N / 2, m)
    row = rng.uniform(N / 2, H - N / 2, m)
    return Product(
        probe_position_x_m=CX + (col - (W - 1) / 2) * PW,
        probe_position_y_m=CY + (row - (H - 1) / 2) * PH,
        probe=(rng.random((N, N)) + 1j).astype(np.complex64),
        object=np.ones((H, W), np.complex64),
        probe_pixel_width_m=2e-8,
        probe_pixel_height_m=2.5e-8,
        object_center_x_m=CX,
        object_center_y_m=CY,
        object_pixel_width_m=PW,
        object_pixel_height_m=PH,
        probe_energy_eV=10000.0,
        detector_object_distance_m=2.0,
        exposure_time_s=0.1,
        mass_attenuation_m2_kg=3.0,
        tomography_angle_deg=45.0,
    )


def _scan(product: Product, rng) -> ScanData:
    pos = product_positions_px(product)
    frame = ProductFrame.from_product(product)
    return ScanData(
        diffraction=rng.random((pos.shape[0], N, N)),
        xcoords=pos[:, 0],
        ycoords=pos[:, 1],
        probe=product.probe,
        object=product.object[0],
        metadata={FRAME_KEY: frame.to_metadata()},
    )


def test_frame_survives_the_npz_json(tmp_path):
    product = _input_product(np.random.default_rng(0))
    frame = ProductFrame.from_product(product)
    assert frame.object_shape == (H, W)
    assert (frame.object_center_x_m, frame.object_pixel_height_m) == (CX, PH)
    assert (frame.probe_pixel_width_m, frame.probe_energy_eV) == (2e-8, 10000.0)
    scan = _scan(product, np.random.default_rng(1))
    save_npz(tmp_path / "scan.npz", scan)
    with np.load(tmp_path / "scan.npz", allow_pickle=False) as z:
        stored = json.loads(str(z["_metadata"]))[FRAME_KEY]
    assert stored["object_shape"] == [H, W] and stored["detector_object_distance_m"] == 2.0
    back = ProductFrame.from_metadata(load_npz(tmp_path / "scan.npz").metadata)
    assert back == frame


@pytest.mark.parametrize(
    ("shape", "origin"), [((H, W), (0.0, 0.0)), ((40, 33), (-5.0, 3.0)), ((17, 18), (2.5, 4.0))]
)
def test_product_written_from_a_canvas_keeps_the_world_frame(tmp_path, shape, origin):
    """Any canvas in the scan's object-pixel frame (a stitched reconstruction with its origin)
    is written so that positions and every object pixel keep their world coordinates."""
    rng = np.random.default_rng(2)
    product = _input_product(rng)
    scan = _scan(product, rng)
    frame = ProductFrame.from_metadata(scan.metadata)
    assert frame is not None
    canvas = np.ones(shape, np.complex64)
    out = scan_to_product(
        scan, canvas, origin_px=origin, **frame.product_fields(shape, origin), name="recon"
    )
    write_product(tmp_path / "recon.h5", out)
    back = read_product(tmp_path / "recon.h5")
    np.testing.assert_allclose(back.probe_position_x_m, product.probe_position_x_m, atol=1e-18)
    np.testing.assert_allclose(back.probe_position_y_m, product.probe_position_y_m, atol=1e-18)
    # canvas pixel (0, 0) is object-frame (x0, y0): the input grid's rule gives its world x, y
    x00 = CX + (origin[0] - (W - 1) / 2) * PW
    y00 = CY + (origin[1] - (H - 1) / 2) * PH
    assert back.object_center_x_m - (shape[1] - 1) / 2 * PW == pytest.approx(x00, abs=1e-18)
    assert back.object_center_y_m - (shape[0] - 1) / 2 * PH == pytest.approx(y00, abs=1e-18)
    if origin == (0.0, 0.0) and shape == (H, W):
        assert (back.object_center_x_m, back.object_center_y_m) == (CX, CY)
    assert (back.object_pixel_width_m, back.object_pixel_height_m) == (PW, PH)
    assert (back.probe_pixel_width_m, back.probe_pixel_height_m) == (2e-8, 2.5e-8)
    assert back.probe_energy_eV == 10000.0 and back.detector_object_distance_m == 2.0
    assert back.exposure_time_s == 0.1 and back.mass_attenuation_m2_kg == 3.0
    assert back.tomography_angle_deg == 45.0


def test_no_frame_in_the_metadata_is_none():
    assert ProductFrame.from_metadata({}) is None
    assert ProductFrame.from_metadata({"object_pixel_size_m": 1e-8}) is None


def test_experiment_values_not_recorded_default_to_zero():
    frame = ProductFrame.from_metadata(
        {
            FRAME_KEY: {
                "object_shape": [4, 6],
                "object_center_x_m": 1.0,
                "object_center_y_m": 2,
                "object_pixel_width_m": 1e-8,
                "object_pixel_height_m": 2e-8,
                "probe_pixel_width_m": 1e-8,
                "probe_pixel_height_m": 2e-8,
                "future_field": "ignored",
            }
        }
    )
    assert frame is not None
    assert frame.probe_energy_eV == 0.0 and frame.detector_object_distance_m == 0.0
    assert frame.object_center_y_m == 2.0 and frame.object_shape == (4, 6)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"object_shape": [4]}, "object_shape"),
        ({"object_shape": [4, 0]}, "object_shape"),
        ({"object_shape": [4.0, 6]}, "object_shape"),
        ({"object_center_x_m": None}, "object_center_x_m"),
        ({"object_center_x_m": "3e-6"}, "object_center_x_m"),
        ({"object_pixel_width_m": 0.0}, "object_pixel_width_m"),
        ({"probe_pixel_height_m": -1e-8}, "probe_pixel_height_m"),
        ({"probe_energy_eV": True}, "probe_energy_eV"),
        ({"detector_object_distance_m": float("inf")}, "detector_object_distance_m"),
        ({"object_pixel_height_m": "missing"}, "object_pixel_height_m"),
    ],
)
def test_malformed_frame_names_the_key(change, key):
    raw = ProductFrame.from_product(_input_product(np.random.default_rng(3))).to_metadata()
    for k, v in change.items():
        if v == "missing":
            del raw[k]
        else:
            raw[k] = v
    with pytest.raises(DataContractError) as info:
        ProductFrame.from_metadata({FRAME_KEY: raw}, "scan.npz")
    msg = str(info.value)
    assert msg.startswith("scan.npz:") and f"_metadata.{FRAME_KEY}.{key}" in msg, msg


def test_frame_that_is_not_an_object_is_refused():
    with pytest.raises(DataContractError, match=f"_metadata.{FRAME_KEY}"):
        ProductFrame.from_metadata({FRAME_KEY: [1, 2]}, "scan.npz")
