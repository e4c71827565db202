"""DATA-001: the NPZ scan contract (``specs/data-contracts.md``). One test per bad-input case."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from ptycho_core.errors import DataContractError, PtychoError
from ptycho_core.io import ScanData, atomic_write, check_enough_patterns, load_npz, save_npz

M, N = 6, 8


def _arrays(rng=None, **over):
    rng = np.random.default_rng(0) if rng is None else rng
    a = {
        "diffraction": rng.random((M, N, N)).astype(np.float32),
        "xcoords": rng.random(M) * 10 + 4,
        "ycoords": rng.random(M) * 10 + 4,
        "probeGuess": (rng.random((N, N)) + 1j * rng.random((N, N))).astype(np.complex64),
    }
    a.update(over)
    return {k: v for k, v in a.items() if v is not None}


def _write(tmp_path, name="scan.npz", **over):
    path = tmp_path / name
    np.savez(path, **_arrays(**over))
    return path


# ----------------------------------------------------------------------------- good input
def test_round_trip_preserves_every_array(tmp_path):
    rng = np.random.default_rng(1)
    obj = (rng.random((20, 24)) * np.exp(1j * rng.random((20, 24)))).astype(np.complex64)
    y = (rng.random((M, N, N)) + 1j).astype(np.complex64)
    scan = ScanData(
        diffraction=rng.random((M, N, N)),
        xcoords=rng.random(M),
        ycoords=rng.random(M),
        probe=np.ones((N, N), np.complex64),
        object=obj,
        scan_index=np.arange(M) % 2,
        Y=y,
        xcoords_start=np.arange(M, dtype=float),
        metadata={"note": "hello"},
    )
    path = tmp_path / "rt.npz"
    save_npz(path, scan, nphotons=1e6)
    back = load_npz(path)
    np.testing.assert_array_equal(back.diffraction, scan.diffraction)
    np.testing.assert_array_equal(back.positions, scan.positions)
    np.testing.assert_array_equal(back.object, obj)
    np.testing.assert_array_equal(back.Y, y)
    np.testing.assert_array_equal(back.scan_index, [0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(back.xcoords_start, np.arange(M))
    np.testing.assert_array_equal(back.ycoords_start, scan.ycoords)
    assert back.metadata["note"] == "hello"
    assert back.metadata["nphotons"] == 1e6
    assert back.metadata["creator"] == "ptycho-core"
    assert back.source == str(path)


def test_writer_emits_diffraction_and_metadata_json(tmp_path):
    path = tmp_path / "w.npz"
    save_npz(
        path, ScanData(**{k if k != "probeGuess" else "probe": v for k, v in _arrays().items()})
    )
    with np.load(path, allow_pickle=False) as npz:
        assert "diffraction" in npz.files and "diff3d" not in npz.files
        meta = json.loads(str(npz["_metadata"]))
    assert meta["nphotons"] is None
    assert meta["creator"] == "ptycho-core" and meta["creator_version"]
    assert "amplitude" in meta["units"]["diffraction"]


def test_defaults_for_optional_keys(tmp_path):
    scan = load_npz(_write(tmp_path))
    a = _arrays()
    np.testing.assert_array_equal(scan.xcoords_start, a["xcoords"])
    np.testing.assert_array_equal(scan.ycoords_start, a["ycoords"])
    np.testing.assert_array_equal(scan.scan_index, np.zeros(M))
    assert scan.Y is None and scan.object is None and scan.metadata == {}
    assert scan.diffraction.dtype == np.float32 and scan.probe.dtype == np.complex64
    assert scan.positions.shape == (M, 2) and scan.N == N and scan.M == M


def test_diff3d_fallback_is_used_and_logged(tmp_path, caplog):
    d = np.full((M, N, N), 2.0)
    path = _write(tmp_path, diffraction=None, diff3d=d)
    with caplog.at_level(logging.INFO, logger="ptycho_core.io.npz"):
        scan = load_npz(path)
    assert np.all(scan.diffraction == 2.0)
    assert "diff3d" in caplog.text


def test_diffraction_preferred_over_diff3d(tmp_path):
    path = _write(tmp_path, diffraction=np.full((M, N, N), 1.0), diff3d=np.full((M, N, N), 5.0))
    assert np.all(load_npz(path).diffraction == 1.0)


def test_nnm_stack_is_transposed_with_warning(tmp_path):
    d = np.random.default_rng(2).random((M, N, N))
    path = _write(tmp_path, diffraction=np.moveaxis(d, 0, 2))
    with pytest.warns(UserWarning, match="transposing"):
        scan = load_npz(path)
    np.testing.assert_allclose(scan.diffraction, d.astype(np.float32))


@pytest.mark.parametrize("shape", [(1, N, N), (N, N, 1)])
def test_single_mode_probe_is_squeezed(tmp_path, shape):
    path = _write(tmp_path, probeGuess=np.ones(shape, np.complex128))
    assert load_npz(path).probe.shape == (N, N)


def test_subset_keeps_rows_together():
    scan = ScanData(**{k if k != "probeGuess" else "probe": v for k, v in _arrays().items()})
    sub = scan.subset(np.array([4, 1]))
    np.testing.assert_array_equal(sub.diffraction, scan.diffraction[[4, 1]])
    np.testing.assert_array_equal(sub.positions, scan.positions[[4, 1]])
    assert sub.M == 2


# ----------------------------------------------------------------------------- bad input
def _fails(path, *fragments, **kw):
    with pytest.raises(DataContractError) as info:
        load_npz(path, **kw)
    msg = str(info.value)
    assert str(path) in msg, msg
    for f in fragments:
        assert f in msg, msg
    assert isinstance(info.value, ValueError) and isinstance(info.value, PtychoError)
    return msg


def test_missing_diffraction_names_both_keys(tmp_path):
    _fails(_write(tmp_path, diffraction=None), "'diffraction'", "'diff3d'")


def test_missing_coordinates(tmp_path):
    _fails(_write(tmp_path, ycoords=None), "ycoords")


def test_missing_probe(tmp_path):
    _fails(_write(tmp_path, probeGuess=None), "probeGuess")


def test_non_square_patterns(tmp_path):
    _fails(
        _write(tmp_path, diffraction=np.ones((M, N, N + 2))),
        "'diffraction'",
        "square",
        "(6, 8, 10)",
    )


def test_odd_patterns(tmp_path):
    _fails(
        _write(tmp_path, diffraction=np.ones((M, 7, 7)), probeGuess=np.ones((7, 7))),
        "'diffraction'",
        "even",
        "7",
    )


def test_probe_size_differs_from_pattern(tmp_path):
    _fails(
        _write(tmp_path, probeGuess=np.ones((N + 2, N + 2))), "'probeGuess'", "(8, 8)", "(10, 10)"
    )


def test_multi_mode_probe_names_the_shape(tmp_path):
    _fails(_write(tmp_path, probeGuess=np.ones((3, N, N))), "'probeGuess'", "(3, 8, 8)")


def test_coordinate_lengths_differ(tmp_path):
    _fails(_write(tmp_path, ycoords=np.zeros(M - 1)), "'ycoords'", "(6,)", "(5,)")


def test_nan_in_diffraction(tmp_path):
    d = np.ones((M, N, N))
    d[2, 3, 3] = np.nan
    _fails(_write(tmp_path, diffraction=d), "'diffraction'", "finite", "1 NaN")


def test_inf_in_coordinates(tmp_path):
    x = np.zeros(M)
    x[0] = np.inf
    _fails(_write(tmp_path, xcoords=x), "'xcoords'", "finite")


def test_nan_in_probe(tmp_path):
    p = np.ones((N, N), complex)
    p[0, 0] = np.nan
    _fails(_write(tmp_path, probeGuess=p), "'probeGuess'", "finite")


def test_negative_amplitudes(tmp_path):
    d = np.ones((M, N, N))
    d[0, 0, 0] = -0.5
    _fails(_write(tmp_path, diffraction=d), "'diffraction'", "non-negative", "-0.5")


def test_complex_diffraction(tmp_path):
    _fails(_write(tmp_path, diffraction=np.ones((M, N, N), complex)), "'diffraction'", "complex")


def test_complex_diff3d_names_diff3d(tmp_path):
    _fails(_write(tmp_path, diffraction=None, diff3d=np.ones((M, N, N), complex)), "'diff3d'")


def test_pickled_object_array_is_refused_not_loaded(tmp_path):
    path = tmp_path / "pickle.npz"
    arrays = _arrays()
    arrays["xcoords"] = np.array([{"a": 1}] * M, dtype=object)
    np.savez(path, **arrays)  # np.savez pickles object arrays
    _fails(path, "'xcoords'", "pickle")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_npz(tmp_path / "nope.npz")


def test_not_a_zip(tmp_path):
    path = tmp_path / "text.npz"
    path.write_text("this is not a zip archive at all")
    _fails(path, "not a valid")


def test_single_npy_is_not_a_scan(tmp_path):
    path = tmp_path / "one.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.ones(3))
    _fails(path, ".npz")


def test_bad_metadata_json(tmp_path):
    _fails(_write(tmp_path, _metadata=np.array("{not json")), "'_metadata'", "JSON")


def test_fewer_patterns_than_a_group_needs(tmp_path):
    path = _write(tmp_path)
    _fails(path, "at least 9 patterns", "6 pattern", min_patterns=9)
    scan = load_npz(path, min_patterns=M)
    with pytest.raises(DataContractError, match="at least 7"):
        check_enough_patterns(scan, 7)


def test_scan_data_validates_in_memory_too():
    with pytest.raises(DataContractError, match="<in-memory scan>.*'xcoords'"):
        ScanData(np.ones((M, N, N)), np.zeros(M + 1), np.zeros(M), np.ones((N, N)))


# ----------------------------------------------------------------------------- atomic_write
def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic_write(target) as fh:
        fh.write(b"new")
        assert target.read_bytes() == b"old"  # not visible until the block ends
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_write_failure_leaves_target_and_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, "w") as fh:
            fh.write("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_save_npz_failure_leaves_no_partial_file(tmp_path):
    scan = ScanData(
        **{k if k != "probeGuess" else "probe": v for k, v in _arrays().items()},
        metadata={"bad": object()},
    )
    with pytest.raises(TypeError):
        save_npz(tmp_path / "x.npz", scan)
    assert os.listdir(tmp_path) == []
