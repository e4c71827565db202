"""Ptychodus conformance (``specs/data-contracts.md``): our product files open with Ptychodus's
own reader, and files written by Ptychodus's own writer open with ours.

Ptychodus is a test dependency (``pip install --no-deps ptychodus``; scripts/test.sh installs it).
When it is missing these tests FAIL with the install command instead of skipping, so a CI run
cannot pass without checking conformance.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from ptycho_core.io import (
    ScanData,
    product_positions_px,
    read_product,
    scan_to_product,
    write_product,
)

pytestmark = pytest.mark.conformance


@pytest.fixture(scope="module")
def pio():
    try:
        return importlib.import_module("ptychodus.api.io")
    except ImportError as exc:  # pragma: no cover - exercised only in a broken environment
        pytest.fail(
            "Ptychodus is required for the conformance tests: "
            f"pip install --no-deps ptychodus (plus pydantic) ({exc})",
            pytrace=False,
        )


def _scan_and_object(rng):
    m, n = 9, 8
    obj = (rng.random((24, 32)) * np.exp(1j * rng.normal(size=(24, 32)))).astype(np.complex64)
    scan = ScanData(
        diffraction=rng.random((m, n, n)),
        xcoords=rng.uniform(5, 27, m),
        ycoords=rng.uniform(5, 19, m),
        probe=(rng.random((n, n)) + 1j * rng.random((n, n))).astype(np.complex64),
        metadata={"nphotons": 1e6},
    )
    return scan, obj


def test_ptychodus_reads_our_product(tmp_path, pio):
    rng = np.random.default_rng(11)
    scan, obj = _scan_and_object(rng)
    product = scan_to_product(
        scan,
        obj,
        pixel_size_m=1e-8,
        pixel_height_m=1.5e-8,
        center_x_m=2e-6,
        center_y_m=-3e-6,
        loss_values=[0.9, 0.5, 0.25],
        name="conformance",
        probe_energy_eV=10000.0,
        detector_object_distance_m=2.0,
    )
    path = tmp_path / "ours.h5"
    write_product(path, product)

    theirs = pio.load_product(path)
    meta = theirs.metadata
    assert meta.name == "conformance"
    assert meta.photon_energy_eV == 10000.0 and meta.detector_distance_m == 2.0
    assert meta.probe_photon_count == 1e6

    pos = theirs.probe_positions
    np.testing.assert_array_equal(pos.get_indexes(), np.arange(scan.M))
    # positions in metres by the specs/data-contracts.md mapping, computed here independently of
    # our converter
    x_m = 2e-6 + (scan.xcoords - (32 - 1) / 2) * 1e-8
    y_m = -3e-6 + (scan.ycoords - (24 - 1) / 2) * 1.5e-8
    np.testing.assert_allclose(pos.get_coordinates_x_m(), x_m, rtol=0, atol=1e-15)
    np.testing.assert_allclose(pos.get_coordinates_y_m(), y_m, rtol=0, atol=1e-15)

    # Ptychodus's own geometry maps the metres back to our object pixels
    geometry = theirs.object_.get_geometry()
    np.testing.assert_allclose(
        geometry.map_probe_positions_to_object_x_px(pos), scan.xcoords, atol=1e-8
    )
    np.testing.assert_allclose(
        geometry.map_probe_positions_to_object_y_px(pos), scan.ycoords, atol=1e-8
    )
    assert (geometry.width_px, geometry.height_px) == (32, 24)

    np.testing.assert_array_equal(np.squeeze(theirs.object_.get_array()), obj)
    np.testing.assert_array_equal(np.squeeze(theirs.probes.get_array()), scan.probe)
    assert [(loss.epoch, loss.value) for loss in theirs.losses] == [(0, 0.9), (1, 0.5), (2, 0.25)]


def _ptychodus_product(rng):
    from ptychodus.api.geometry import PixelGeometry  # type: ignore[attr-defined]
    from ptychodus.api.object import Object, ObjectCenter
    from ptychodus.api.probe import ProbeSequence
    from ptychodus.api.probe_positions import ProbePosition, ProbePositionSequence
    from ptychodus.api.product import LossValue, Product, ProductMetadata

    obj = (rng.random((2, 10, 12)) + 1j * rng.random((2, 10, 12))).astype(np.complex64)
    probe = (rng.random((1, 3, 8, 8)) + 1j * rng.random((1, 3, 8, 8))).astype(np.complex64)
    xs, ys = rng.normal(size=4) * 1e-7, rng.normal(size=4) * 1e-7
    product = Product(
        metadata=ProductMetadata(
            name="from-ptychodus",
            comments="c",
            detector_distance_m=1.5,
            photon_energy_eV=7000.0,
            probe_photon_count=5e8,
            exposure_time_s=0.2,
            mass_attenuation_m2_per_kg=3.0,
            tomography_angle_deg=45.0,
        ),
        probe_positions=ProbePositionSequence(
            [ProbePosition(i, x, y) for i, (x, y) in enumerate(zip(xs, ys, strict=False))]
        ),
        probes=ProbeSequence(probe, None, PixelGeometry(width_m=2e-8, height_m=3e-8)),
        object_=Object(
            obj,
            PixelGeometry(width_m=2e-8, height_m=3e-8),
            ObjectCenter(x_m=1e-7, y_m=-1e-7),
            layer_spacing_m=[4e-6],
        ),
        losses=[LossValue(0, 2.0), LossValue(1, 1.0)],
    )
    return product, obj, probe, xs, ys


def test_we_read_ptychodus_written_product(tmp_path, pio):
    rng = np.random.default_rng(12)
    try:
        product, obj, probe, xs, ys = _ptychodus_product(rng)
    except (ImportError, TypeError) as exc:  # the API moved: say so loudly
        pytest.fail(f"cannot build a product with this Ptychodus version's API: {exc}")
    path = tmp_path / "theirs.h5"
    pio.save_product(path, product)

    ours = read_product(path)
    assert ours.name == "from-ptychodus"
    assert ours.probe_energy_eV == 7000.0  # read through the photon_energy_eV alias
    assert ours.mass_attenuation_m2_kg == 3.0  # read through the _per_kg alias
    assert ours.probe_photon_count == 5e8 and ours.tomography_angle_deg == 45.0
    np.testing.assert_array_equal(ours.object, obj)
    np.testing.assert_array_equal(ours.probe, probe)
    np.testing.assert_array_equal(ours.object_layer_spacing_m, [4e-6])
    np.testing.assert_array_equal(ours.probe_position_x_m, xs)
    np.testing.assert_array_equal(ours.probe_position_y_m, ys)
    np.testing.assert_array_equal(ours.loss_values, [2.0, 1.0])
    assert ours.probe_pixel_height_m == 3e-8 and ours.object_center_x_m == 1e-7
    # our inverse mapping agrees with Ptychodus's own
    geometry = product.object_.get_geometry()
    np.testing.assert_allclose(
        product_positions_px(ours)[:, 0],
        geometry.map_probe_positions_to_object_x_px(product.probe_positions),
        atol=1e-9,
    )


def test_frame_of_a_ptychodus_product_reaches_a_reconstruction(tmp_path, pio):
    """Ptychodus's product → our scan (positions in its object pixels, frame in the metadata)
    → a product written for a different canvas (as ``recon.h5`` is) → Ptychodus's reader: the
    positions, geometry, experiment and losses are Ptychodus's own (``specs/data-contracts.md``,
    "Product frame")."""
    from ptycho_core.io import ProductFrame
    from ptycho_core.io.product_frame import FRAME_KEY

    rng = np.random.default_rng(13)
    try:
        product, _obj, probe, xs, ys = _ptychodus_product(rng)
    except (ImportError, TypeError) as exc:
        pytest.fail(f"cannot build a product with this Ptychodus version's API: {exc}")
    pio.save_product(tmp_path / "theirs.h5", product)
    ours = read_product(tmp_path / "theirs.h5")
    pos = product_positions_px(ours)
    scan = ScanData(
        diffraction=rng.random((pos.shape[0], 8, 8)),
        xcoords=pos[:, 0],
        ycoords=pos[:, 1],
        probe=probe[0, 0],
        metadata={FRAME_KEY: ProductFrame.from_product(ours).to_metadata()},
    )
    frame = ProductFrame.from_metadata(scan.metadata)
    assert frame is not None
    canvas, origin = np.ones((15, 19), np.complex64), (-3.0, -2.0)
    recon = scan_to_product(
        scan,
        canvas,
        origin_px=origin,
        loss_values=[0.5, 0.25],
        **frame.product_fields(canvas.shape, origin),
    )
    write_product(tmp_path / "recon.h5", recon)

    theirs = pio.load_product(tmp_path / "recon.h5")
    meta = theirs.metadata
    assert meta.detector_distance_m == 1.5 and meta.photon_energy_eV == 7000.0
    assert meta.exposure_time_s == 0.2 and meta.tomography_angle_deg == 45.0
    assert meta.mass_attenuation_m2_per_kg == 3.0
    positions = theirs.probe_positions
    np.testing.assert_allclose(positions.get_coordinates_x_m(), xs, rtol=0, atol=1e-18)
    np.testing.assert_allclose(positions.get_coordinates_y_m(), ys, rtol=0, atol=1e-18)
    geometry = theirs.object_.get_geometry()
    assert (geometry.pixel_width_m, geometry.pixel_height_m) == (2e-8, 3e-8)
    # Ptychodus maps the positions to the canvas's pixels: ours shifted by the canvas origin
    np.testing.assert_allclose(
        geometry.map_probe_positions_to_object_x_px(positions), pos[:, 0] - origin[0], atol=1e-8
    )
    np.testing.assert_allclose(
        geometry.map_probe_positions_to_object_y_px(positions), pos[:, 1] - origin[1], atol=1e-8
    )
    probe_pixels = theirs.probes.get_pixel_geometry()
    assert (probe_pixels.width_m, probe_pixels.height_m) == (2e-8, 3e-8)
    assert [(loss.epoch, loss.value) for loss in theirs.losses] == [(0, 0.5), (1, 0.25)]
