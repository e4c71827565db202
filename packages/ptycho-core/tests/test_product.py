"""Ptychodus product HDF5 files (``specs/data-contracts.md``): round trip, aliases, world↔pixel
mapping."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from ptycho_core.errors import DataContractError
from ptycho_core.io import (
    Product,
    ScanData,
    product_positions_px,
    read_product,
    scan_to_product,
    write_product,
)

N = 8


def _product(rng=None, **over):
    rng = np.random.default_rng(0) if rng is None else rng
    m = 5
    fields = dict(
        probe_position_x_m=rng.normal(size=m) * 1e-6,
        probe_position_y_m=rng.normal(size=m) * 1e-6,
        probe=(rng.random((N, N)) + 1j * rng.random((N, N))).astype(np.complex64),
        object=(rng.random((2, 12, 14)) * np.exp(1j * rng.random((2, 12, 14)))).astype(
            np.complex64
        ),
        object_layer_spacing_m=[3e-6],
        name="test",
        comments="a comment",
        detector_object_distance_m=2.5,
        probe_energy_eV=8800.0,
        exposure_time_s=0.1,
        probe_photon_count=1e9,
        mass_attenuation_m2_kg=1.5,
        tomography_angle_deg=12.0,
        probe_pixel_width_m=1e-8,
        probe_pixel_height_m=2e-8,
        object_center_x_m=1e-6,
        object_center_y_m=-2e-6,
        object_pixel_width_m=1e-8,
        object_pixel_height_m=2e-8,
        loss_values=[3.0, 2.0, 1.5],
        loss_epochs=[0, 1, 2],
    )
    fields.update(over)
    return Product(**fields)


def test_round_trip(tmp_path):
    p = _product()
    path = tmp_path / "p.h5"
    write_product(path, p)
    q = read_product(path)
    for key in (
        "probe_position_x_m",
        "probe_position_y_m",
        "probe_position_indexes",
        "probe",
        "object",
        "object_layer_spacing_m",
        "loss_values",
        "loss_epochs",
    ):
        np.testing.assert_array_equal(getattr(q, key), getattr(p, key), err_msg=key)
    for key in (
        "name",
        "comments",
        "detector_object_distance_m",
        "probe_energy_eV",
        "exposure_time_s",
        "probe_photon_count",
        "mass_attenuation_m2_kg",
        "tomography_angle_deg",
        "probe_pixel_width_m",
        "probe_pixel_height_m",
        "object_center_x_m",
        "object_center_y_m",
        "object_pixel_width_m",
        "object_pixel_height_m",
    ):
        assert getattr(q, key) == getattr(p, key), key
    assert os.listdir(tmp_path) == ["p.h5"]


def test_writer_emits_both_spellings(tmp_path):
    path = tmp_path / "p.h5"
    write_product(path, _product())
    with h5py.File(path, "r") as h5:
        assert h5.attrs["probe_energy_eV"] == h5.attrs["photon_energy_eV"] == 8800.0
        assert h5.attrs["mass_attenuation_m2_kg"] == h5.attrs["mass_attenuation_m2_per_kg"] == 1.5
        assert h5["object"].shape == (2, 12, 14)
        assert h5["object"].attrs["pixel_height_m"] == 2e-8


def _write_raw(path, **datasets_and_attrs):
    obj = np.ones((1, 4, 4), np.complex128)
    with h5py.File(path, "w") as h5:
        h5.attrs["photon_energy_eV"] = 1234.0
        h5.attrs["mass_attenuation_m2_per_kg"] = 7.0
        h5.attrs["some_future_attr"] = "ignored"
        h5.create_dataset("probe_position_indexes", data=[0, 1])
        h5.create_dataset("probe_position_x_m", data=[0.0, 1e-7])
        h5.create_dataset("probe_position_y_m", data=[0.0, 2e-7])
        h5.create_dataset("probe", data=np.ones((1, 2, 4, 4), np.complex128))
        o = h5.create_dataset("object", data=obj)
        for k in ("center_x_m", "center_y_m"):
            o.attrs[k] = 0.0
        for k in ("pixel_width_m", "pixel_height_m"):
            o.attrs[k] = 1e-8
        h5.create_dataset("unknown_dataset", data=[1, 2, 3])
        h5.create_group("unknown_group")
        for k, v in datasets_and_attrs.items():
            h5.create_dataset(k, data=v)


def test_reader_aliases_and_unknown_keys(tmp_path):
    path = tmp_path / "alias.h5"
    _write_raw(path, costs=[5.0, 4.0])
    p = read_product(path)
    assert p.probe_energy_eV == 1234.0 and p.mass_attenuation_m2_kg == 7.0
    np.testing.assert_array_equal(p.loss_values, [5.0, 4.0])
    np.testing.assert_array_equal(p.loss_epochs, [0, 1])
    assert p.probe.dtype == np.complex128 and p.probe.shape == (1, 2, 4, 4)
    assert p.probe_pixel_width_m == 1e-8  # falls back to the object's pixel size
    assert p.probe_photon_count is None


def test_missing_dataset_names_it(tmp_path):
    path = tmp_path / "bad.h5"
    _write_raw(path)
    with h5py.File(path, "a") as h5:
        del h5["probe_position_y_m"]
    with pytest.raises(DataContractError, match="probe_position_y_m"):
        read_product(path)


def test_position_lengths_must_agree(tmp_path):
    with pytest.raises(DataContractError, match="probe_position_y_m"):
        _product(probe_position_y_m=np.zeros(3))


def test_not_hdf5_and_missing(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"\x89HDF nope" * 10)
    with pytest.raises(DataContractError, match="x.h5"):
        read_product(bad)
    with pytest.raises(FileNotFoundError):
        read_product(tmp_path / "missing.h5")


def test_world_pixel_mapping_follows_spec():
    """Pixel (row, col) of an H×W object sits at x = cx + (col − (W−1)/2)·pw (by hand)."""
    obj = np.zeros((10, 20), np.complex64)  # H = 10, W = 20
    scan = ScanData(
        np.ones((2, N, N)), xcoords=[9.5, 0.0], ycoords=[4.5, 9.0], probe=np.ones((N, N))
    )
    p = scan_to_product(
        scan, obj, pixel_size_m=1e-8, pixel_height_m=2e-8, center_x_m=5e-6, center_y_m=-1e-6
    )
    # position 0 is the array centre ((W-1)/2, (H-1)/2) = (9.5, 4.5) → exactly the centre
    assert p.probe_position_x_m[0] == pytest.approx(5e-6)
    assert p.probe_position_y_m[0] == pytest.approx(-1e-6)
    # position 1: col 0 → 9.5 pixels left of centre; row 9 → 4.5 pixels below the centre row
    assert p.probe_position_x_m[1] == pytest.approx(5e-6 - 9.5e-8)
    assert p.probe_position_y_m[1] == pytest.approx(-1e-6 + 4.5 * 2e-8)
    np.testing.assert_allclose(product_positions_px(p), scan.positions, atol=1e-9)


def test_scan_to_product_with_canvas_origin_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    scan = ScanData(
        rng.random((7, N, N)),
        rng.random(7) * 30 + 10,
        rng.random(7) * 20 + 10,
        np.ones((N, N)),
        metadata={"nphotons": 1e5},
    )
    canvas = np.ones((30, 40), np.complex64)
    p = scan_to_product(scan, canvas, pixel_size_m=5e-9, origin_px=(6.0, 4.0), name="recon")
    assert p.probe_photon_count == 1e5 and p.name == "recon"
    path = tmp_path / "c.h5"
    write_product(path, p)
    back = product_positions_px(read_product(path))
    np.testing.assert_allclose(back + [6.0, 4.0], scan.positions, atol=1e-9)


def test_placeholder_object_covers_every_patch():
    scan = ScanData(np.ones((2, N, N)), [4.0, 20.0], [4.0, 11.0], np.ones((N, N)))
    p = scan_to_product(scan, pixel_size_m=1e-8)
    px = product_positions_px(p)
    h, w = p.object.shape[-2:]
    assert np.all(px[:, 0] + N / 2 <= w) and np.all(px[:, 1] + N / 2 <= h)
    np.testing.assert_allclose(px, scan.positions, atol=1e-9)
