"""Ptychodus product HDF5 files (``specs/data-contracts.md``): round trip, aliases, world↔pixel
mapping."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

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


# ----------------------------------------------------------------------------- bad content
def _edit(path, fn):
    with h5py.File(path, "a") as h5:
        fn(h5)
    return path


def _replace(key, value):
    def fn(h5):
        attrs = dict(h5[key].attrs)
        del h5[key]
        ds = h5.create_dataset(key, data=value)
        for k, v in attrs.items():
            ds.attrs[k] = v

    return fn


def _fails(path, *fragments):
    with pytest.raises(DataContractError) as info:
        read_product(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg
    return msg


def _good(tmp_path, name="p.h5"):
    path = tmp_path / name
    write_product(path, _product())
    return path


# D15: read_product accepted NaN and empty arrays; convert of a (1, 0, 0) object exited 0.
@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("object", np.ones((1, 0, 0), np.complex64), "non-empty"),
        ("object", np.full((1, 4, 4), np.nan, np.complex64), "finite"),
        ("probe", np.ones((0, 8), np.complex64), "non-empty"),
        ("probe", np.full((8, 8), np.inf, np.complex64), "finite"),
        ("probe_position_x_m", np.array([np.nan] * 5), "finite"),
        ("probe_position_x_m", np.zeros(0), "at least one position"),
        ("probe_position_indexes", np.array([0.5] * 5), "integers"),
        ("object_layer_spacing_m", np.array([np.inf]), "finite"),
        ("loss_epochs", np.array([0.0, np.nan, 2.0]), "integers"),
        ("object", np.full((1, 4, 4), 1e300), "complex64 range"),
        ("object", np.array([b"ab", b"cd"]), "numeric dataset"),
    ],
)
def test_nan_and_empty_arrays_are_refused(tmp_path, key, value, fragment):
    path = _good(tmp_path)
    if key == "probe_position_x_m" and value.size == 0:
        _edit(path, _replace("probe_position_y_m", value))
        _edit(path, _replace("probe_position_indexes", np.zeros(0, int)))
    _fails(_edit(path, _replace(key, value)), f"'{key}'", fragment)


@pytest.mark.parametrize(
    ("where", "attr", "value", "fragment"),
    [
        ("/", "probe_energy_eV", np.nan, "'probe_energy_eV'"),
        ("/", "probe_photon_count", np.inf, "'probe_photon_count'"),
        ("/", "probe_photon_count", -5.0, "'probe_photon_count'"),
        ("/", "detector_object_distance_m", "far", "'detector_object_distance_m'"),
        ("/", "tomography_angle_deg", np.ones(3), "'tomography_angle_deg'"),
        ("object", "center_x_m", np.nan, "'object/@center_x_m'"),
        ("object", "pixel_width_m", -1.0, "'object_pixel_width_m'"),
        ("probe", "pixel_width_m", np.inf, "'probe/@pixel_width_m'"),
    ],
)
def test_bad_attributes_name_the_key(tmp_path, where, attr, value, fragment):
    def fn(h5):
        h5[where].attrs[attr] = value

    _fails(_edit(_good(tmp_path), fn), fragment)


def test_vlen_numeric_attribute_is_not_read(tmp_path):
    def fn(h5):
        h5.attrs["probe_energy_eV"] = "8000"  # a variable-length string where a number belongs

    _fails(_edit(_good(tmp_path), fn), "'probe_energy_eV'", "a number")


def test_in_memory_product_is_validated_too():
    with pytest.raises(DataContractError, match="<in-memory scan>: key 'object'.*non-empty"):
        _product(object=np.ones((1, 0, 0), np.complex64))
    with pytest.raises(DataContractError, match="'exposure_time_s'.*finite"):
        _product(exposure_time_s=float("nan"))


def test_convert_reproducer_empty_object(tmp_path):
    """The audit's D15 reproducer: a product whose object is (1, 0, 0)."""
    path = _edit(_good(tmp_path), _replace("object", np.zeros((1, 0, 0), np.complex64)))
    _fails(path, "'object'", "non-empty", "(1, 0, 0)")


def test_links_and_groups_are_refused(tmp_path):
    def external(h5):
        del h5["probe"]
        h5["probe"] = h5py.ExternalLink("/etc/hostname", "/x")

    _fails(_edit(_good(tmp_path, "e.h5"), external), "'probe'", "another file")

    def group(h5):
        del h5["object"]
        h5.create_group("object")

    _fails(_edit(_good(tmp_path, "g.h5"), group), "'object'", "dataset")

    def dangling(h5):
        del h5["probe_position_x_m"]
        h5["probe_position_x_m"] = h5py.SoftLink("/nowhere")

    _fails(_edit(_good(tmp_path, "d.h5"), dangling), "'probe_position_x_m'")


def test_damaged_string_length_is_refused_before_libhdf5_allocates(tmp_path):
    """Found by fuzzing: one damaged 4-byte length of the 'name' string made libhdf5 allocate
    and zero 4 GiB (10 s) before failing. The reader refuses it first, in milliseconds."""
    path = _good(tmp_path)
    raw = bytearray(path.read_bytes())
    gcol = raw.index(b"GCOL\x01\x00\x00\x00")
    heap_id = gcol.to_bytes(8, "little") + (1).to_bytes(4, "little")  # object 1: 'test'
    at = raw.index(heap_id)
    assert int.from_bytes(raw[at - 4 : at], "little") == len("test")
    raw[at - 4 : at] = (0xF9000000).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    t0 = time.perf_counter()
    _fails(path, "declares 4177526784 bytes", "damaged")
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"hello\n", "a text file"),
        (b"PK\x03\x04" + bytes(40), "a zip archive"),
        (b"\x93NUMPY\x01\x00" + bytes(40), "a single .npy array"),
        (b"", "an empty file"),
    ],
)
def test_non_hdf5_files_are_named_for_what_they_are(tmp_path, content, what):
    path = tmp_path / "x.h5"
    path.write_bytes(content)
    _fails(path, "expected an HDF5 file", what)


def test_decompression_guard(tmp_path, monkeypatch):
    """A small gzip-compressed product whose object expands to 32 MiB (floor set to 1 MiB)."""
    from ptycho_core.io import npz as npz_module

    monkeypatch.setattr(npz_module, "EXPANSION_FLOOR_BYTES", 1 << 20)
    path = _good(tmp_path)

    def big(h5):
        attrs = dict(h5["object"].attrs)
        del h5["object"]
        ds = h5.create_dataset(
            "object", data=np.zeros((1, 1024, 2048), np.complex128), compression="gzip"
        )
        for k, v in attrs.items():
            ds.attrs[k] = v
        del h5["object_layer_spacing_m"]

    _edit(path, big)
    assert path.stat().st_size < 1 << 20
    _fails(path, "'object'", "decompression guard", "33554432 bytes")
    assert read_product(path, max_expanded_bytes=1 << 26).object.shape == (1, 1024, 2048)


def test_free_space_of_size_zero_is_refused_instead_of_hanging(tmp_path):
    """Found by fuzzing: libhdf5 loops forever parsing a global heap whose free-space object
    has size 0. Run in a subprocess so that a regression fails (timeout) instead of hanging."""
    path = _good(tmp_path)
    raw = bytearray(path.read_bytes())
    start = raw.index(b"GCOL\x01\x00\x00\x00")
    pos = start + 16
    while int.from_bytes(raw[pos : pos + 2], "little") != 0:  # walk to the free-space object
        pos += 16 + (int.from_bytes(raw[pos + 8 : pos + 16], "little") + 7) // 8 * 8
    raw[pos + 8 : pos + 16] = bytes(8)
    path.write_bytes(bytes(raw))
    code = (
        "import sys\n"
        "from ptycho_core.errors import DataContractError\n"
        "from ptycho_core.io import read_product\n"
        "try:\n"
        f"    read_product({str(path)!r})\n"
        "except DataContractError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert "damaged HDF5 global heap" in out.stdout and str(path) in out.stdout, out


def test_damaged_element_size_is_refused_instead_of_crashing(tmp_path):
    """Found by fuzzing: a compound {r, i} (complex) dataset whose stored element size was
    damaged (8 -> 7,208,968 bytes) is still typed complex64 by h5py, and libhdf5 then read past
    its buffers (segmentation fault). In a subprocess, so that a regression fails, not crashes."""
    path = tmp_path / "p.h5"
    with h5py.File(path, "w") as h5:
        for key in ("probe_position_indexes", "probe_position_x_m", "probe_position_y_m"):
            h5.create_dataset(key, data=np.arange(3.0))
        h5.create_dataset("probe", data=np.ones((8, 8), np.complex64))
        obj = h5.create_dataset(
            "object", data=np.ones((1, 16, 16), np.complex64), compression="gzip", chunks=(1, 8, 8)
        )
        for key in ("center_x_m", "center_y_m"):
            obj.attrs[key] = 0.0
        for key in ("pixel_width_m", "pixel_height_m"):
            obj.attrs[key] = 1e-8
    raw = path.read_bytes()
    compound = b"\x16\x02\x00\x00\x08\x00\x00\x00r\x00"  # class 6 v1, 2 members, size 8, "r"
    assert raw.count(compound) == 2  # probe, object
    at = raw.rindex(compound)  # the object's datatype message
    path.write_bytes(raw[:at] + compound[:6] + b"\x6e" + raw[at + 7 :])
    code = (
        "from ptycho_core.errors import DataContractError\n"
        "from ptycho_core.io import read_product\n"
        "try:\n"
        f"    read_product({str(path)!r})\n"
        "except DataContractError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out
    assert "'object'" in out.stdout and "7208968-byte elements" in out.stdout, out


def test_damaged_string_type_bits_are_refused_instead_of_crashing(tmp_path):
    """Found by fuzzing: the variable-length string type of the 'name' attribute with its
    type bits damaged (string -> an invalid sequence type) crashed libhdf5 when read."""
    path = _good(tmp_path)
    raw = bytearray(path.read_bytes())
    found = re.search(rb"\x19\x01.\x00\x10\x00\x00\x00", bytes(raw), re.DOTALL)
    assert found is not None  # class 9 (variable length) v1, type 1 (string), size 16
    raw[found.start() + 1] = 0xB3
    path.write_bytes(bytes(raw))
    code = (
        "from ptycho_core.errors import DataContractError\n"
        "from ptycho_core.io import read_product\n"
        "try:\n"
        f"    read_product({str(path)!r})\n"
        "except DataContractError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out
    assert "expected an HDF5 string" in out.stdout and str(path) in out.stdout, out
