"""DATA-001: the NPZ scan contract (``specs/data-contracts.md``). One test per bad-input case."""

from __future__ import annotations

import json
import logging
import os
import zipfile

import numpy as np
import pytest

from ptycho_core.errors import DataContractError, PtychoError
from ptycho_core.io import ScanData, atomic_write, check_enough_patterns, load_npz, save_npz
from ptycho_core.io import npz as npz_module
from ptycho_core.io.npz import (
    EXPANSION_FLOOR_BYTES,
    EXPANSION_RATIO,
    expansion_limit,
    read_npz_arrays,
)

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
    _fails(path, "expected an .npz archive", "got a text file")


# D10: a text file or an HDF5 file given as a scan was reported as "pickled data ... load it
# unsafely using allow_pickle" (wrong, and the wrong advice).
@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"hi\n", "a text file"),
        (b"\x89HDF\r\n\x1a\n" + bytes(64), "an HDF5 file"),
        (b"", "an empty file"),
        (b"\x80\x04\x95" + bytes(16), "pickle (never loaded"),
        (bytes(range(200, 256)), "unrecognised binary file"),
    ],
)
def test_non_zip_files_are_named_for_what_they_are(tmp_path, content, what):
    path = tmp_path / "t.npz"
    path.write_bytes(content)
    msg = _fails(path, "expected an .npz archive", what)
    assert "allow_pickle" not in msg


def test_real_hdf5_file_is_named(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "product.npz"
    with h5py.File(path, "w") as h5:
        h5["x"] = np.ones(3)
    msg = _fails(path, "an HDF5 file", "ptycho convert")
    assert "pickle" not in msg


# D11: a .npy renamed .npz failed with "'numpy.ndarray' object does not support the context
# manager protocol".
def test_single_npy_is_not_a_scan(tmp_path):
    path = tmp_path / "s.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.ones((M, N, N), np.float32))
    msg = _fails(path, "expected an .npz archive", "a single .npy array", "numpy.savez")
    assert "context manager" not in msg


def _rewrite_member(src, dst, key, transform):
    """Copy the archive ``src`` to ``dst`` with member ``key.npy`` replaced by
    ``transform(bytes)``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == f"{key}.npy":
                data = transform(data)
            zout.writestr(info.filename, data)
    return dst


def _header(data: bytes, text: bytes) -> bytes:
    """``.npy`` v1.0 bytes with the header text replaced by ``text`` (data kept)."""
    hlen = int.from_bytes(data[8:10], "little")
    new = text + b"\n"
    return data[:8] + len(new).to_bytes(2, "little") + new + data[10 + hlen :]


# D1: a damaged .npy header escaped as tokenize.TokenError (not a ValueError, not a PtychoError).
@pytest.mark.parametrize(
    "text",
    [
        b"{'descr': (",  # the audit's reproducer: TokenError inside numpy's header filter
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (6, 8, 8), 'x': 1}",
        b"{'descr': '|O', 'fortran_order': False, 'shape': (6, 8, 8), }",
        b"{'descr': '<f4', 'fortran_order': 'no', 'shape': (6, 8, 8), }",
        b"[" * 150,
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (-6, 8, 8), }",
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (10**12, 8, 8), }",
        b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6, 8, 8), }",
    ],
)
def test_damaged_npy_header_names_the_key(tmp_path, text):
    good = _write(tmp_path)
    bad = _rewrite_member(good, tmp_path / "tok.npz", "diffraction", lambda d: _header(d, text))
    _fails(bad, "'diffraction'")


def test_data_shorter_than_header_declares(tmp_path):
    good = _write(tmp_path)
    bad = _rewrite_member(good, tmp_path / "short.npz", "xcoords", lambda d: d[:-8])
    _fails(bad, "'xcoords'", "bytes")


def test_unknown_keys_are_not_read(tmp_path):
    """A damaged member outside the contract does not matter: it is never read."""
    good = _write(tmp_path, extra=np.ones(3))
    bad = _rewrite_member(good, tmp_path / "x.npz", "extra", lambda d: d[:12])
    assert load_npz(bad).M == M


def test_skip_leaves_optional_keys_unread(tmp_path):
    y = (np.ones((M, N, N)) * (1 + 1j)).astype(np.complex64)
    good = _write(tmp_path, Y=y)
    assert load_npz(good).Y is not None
    assert load_npz(good, skip=("Y",)).Y is None
    # even a damaged Y does not matter when skipped
    bad = _rewrite_member(good, tmp_path / "y.npz", "Y", lambda d: d[:20])
    assert load_npz(bad, skip=("Y",)).M == M
    _fails(bad, "'Y'")
    with pytest.raises(ValueError, match="diffraction"):
        load_npz(good, skip=("diffraction",))


def test_fortran_order_and_big_endian_members(tmp_path):
    d = np.asfortranarray(np.random.default_rng(3).random((M, N, N))).astype(">f8")
    scan = load_npz(_write(tmp_path, diffraction=d))
    np.testing.assert_array_equal(scan.diffraction, d.astype(np.float32))


def test_compressed_scan_round_trips(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **_arrays())
    np.testing.assert_array_equal(load_npz(path).diffraction, _arrays()["diffraction"])


def _bomb(path, n_patterns, n=32):
    """A scan whose diffraction is ``n_patterns`` deflated all-zero patterns (tiny on disk)."""
    arrays = _arrays(
        diffraction=np.zeros((n_patterns, n, n), np.float32),
        xcoords=np.zeros(n_patterns),
        ycoords=np.zeros(n_patterns),
        probeGuess=np.ones((n, n), np.complex64),
    )
    np.savez_compressed(path, **arrays)
    return path


# D18: no decompression cap for scans: a 2 MB NPZ of deflated zeros inflated to 2.4 GiB RSS.
def test_decompression_guard_refuses_a_small_file_that_expands_hugely(tmp_path, monkeypatch):
    """The audit's reproducer, scaled down with the floor: 64 MiB of zeros in a ~70 kB file."""
    monkeypatch.setattr(npz_module, "EXPANSION_FLOOR_BYTES", 1 << 20)
    path = _bomb(tmp_path / "bomb.npz", 16_384)
    assert path.stat().st_size < 200_000
    msg = _fails(path, "'diffraction'", "decompression guard", "numpy.savez", "67108992 for")
    assert "max_expanded_bytes" in msg
    assert load_npz(path, max_expanded_bytes=1 << 27).M == 16_384  # the documented override


@pytest.mark.slow
def test_decompression_guard_on_the_audit_reproducer(tmp_path):
    """500,000 x 32 x 32 deflated zeros (2 GB of float32 in a ~2 MB file), default guard.
    Slow only because writing it deflates 2 GB (~7 s); the refusal itself reads nothing."""
    path = _bomb(tmp_path / "bomb.npz", 500_000)
    assert path.stat().st_size < 5_000_000
    _fails(path, "'diffraction'", "decompression guard", "2048000128 for")


def test_decompression_guard_rule():
    assert expansion_limit(10) == EXPANSION_FLOOR_BYTES
    assert (
        expansion_limit(10 * EXPANSION_FLOOR_BYTES) == EXPANSION_RATIO * 10 * EXPANSION_FLOOR_BYTES
    )
    assert expansion_limit(10, 5) == 5


def test_explicit_limit_applies_to_load_npz(tmp_path):
    path = _write(tmp_path)
    _fails(path, "decompression guard", max_expanded_bytes=100)
    assert load_npz(path, max_expanded_bytes=10**6).M == M


def test_uncompressed_large_scan_is_never_capped(tmp_path):
    """Stored (uncompressed) arrays are no larger than the file: the guard always passes."""
    path = _write(tmp_path)
    assert sum(v.nbytes for v in read_npz_arrays(path).values()) <= path.stat().st_size


def test_non_finite_metadata_nphotons(tmp_path):
    _fails(_write(tmp_path, _metadata=np.array('{"nphotons": NaN}')), "'_metadata'", "JSON")
    _fails(
        _write(tmp_path, _metadata=np.array('{"nphotons": "many"}')),
        "'_metadata.nphotons'",
        "finite number",
    )


def test_empty_object_is_refused(tmp_path):
    _fails(_write(tmp_path, objectGuess=np.ones((0, 5), np.complex64)), "'objectGuess'", "empty")


def test_nan_in_optional_arrays(tmp_path):
    y = np.ones((M, N, N), np.complex64)
    y[1, 2, 3] = np.nan
    _fails(_write(tmp_path, Y=y), "'Y'", "finite")
    o = np.ones((20, 20), np.complex64)
    o[0, 0] = np.inf
    _fails(_write(tmp_path, objectGuess=o), "'objectGuess'", "finite")
    _fails(_write(tmp_path, scan_index=np.full(M, np.nan)), "'scan_index'", "integers")


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


# ----------------------------------------------------------------------------- counts
# A training file as Ptychodus 1.7's "Export Training Data" writes it (the keys and dtypes its
# save_ptychopinn_training_data uses): counts in the source dtype, a (modes, N, N) probe stack.
def _ptychodus_export(tmp_path, counts, name="exported.npz"):
    m = counts.shape[0]
    rng = np.random.default_rng(5)
    x, y = rng.uniform(4, 12, m), rng.uniform(4, 12, m)
    path = tmp_path / name
    np.savez(
        path,
        xcoords=x,
        ycoords=y,
        xcoords_start=x,
        ycoords_start=y,
        diff3d=counts,
        bad_pixels=np.eye(counts.shape[1], dtype=bool),
        probeGuess=np.ones((1, N, N), np.complex64),
        objectGuess=np.ones((20, 20), np.complex64),
        scan_index=np.zeros(m, dtype=int),
    )
    return path


def _counts(dtype=np.uint32, peak=1.2e4):
    # detector counts far above any amplitude: the bright centre holds ~peak**2 photons
    rng = np.random.default_rng(3)
    return rng.poisson(peak**2 * rng.random((M, N, N)) ** 8).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint32, np.int64, np.uint16, np.float32])
def test_ptychodus_export_counts_become_amplitudes_with_a_warning(tmp_path, caplog, dtype):
    counts = _counts(dtype, peak=250.0 if dtype == np.uint16 else 1.2e4)
    path = _ptychodus_export(tmp_path, counts)
    with caplog.at_level(logging.WARNING, logger="ptycho_core.io.npz"):
        scan = load_npz(path)
    expected = np.sqrt(counts.astype(np.float64))
    np.testing.assert_allclose(scan.diffraction, expected, rtol=1e-6)
    assert scan.diffraction.dtype == np.float32
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    text = warned[0].getMessage()
    assert str(path) in text and "Ptychodus" in text and "square roots" in text
    assert scan.metadata == {
        "amplitude_from_intensity": True,
        "source_format": "ptychodus-training-npz",
    }
    # the multi-mode-shaped (1, N, N) probe stack of the export is squeezed
    assert scan.probe.shape == (N, N)


def test_ptychodus_export_saved_by_us_is_not_converted_twice(tmp_path):
    counts = _counts()
    first = load_npz(_ptychodus_export(tmp_path, counts))
    again_path = tmp_path / "ours.npz"
    save_npz(again_path, first)
    again = load_npz(again_path)
    np.testing.assert_array_equal(again.diffraction, first.diffraction)
    assert again.metadata["amplitude_from_intensity"] is True


def test_intensity_false_reads_an_export_as_stored(tmp_path, caplog):
    counts = _counts()
    path = _ptychodus_export(tmp_path, counts)
    with caplog.at_level(logging.WARNING, logger="ptycho_core.io.npz"):
        scan = load_npz(path, intensity=False)
    np.testing.assert_array_equal(scan.diffraction, counts.astype(np.float32))
    assert caplog.records == [] and scan.metadata == {}


def test_intensity_true_square_roots_any_file_silently(tmp_path, caplog):
    intensity = np.random.default_rng(4).random((M, N, N)) * 100
    path = _write(tmp_path, diffraction=intensity)
    with caplog.at_level(logging.WARNING, logger="ptycho_core.io.npz"):
        scan = load_npz(path, intensity=True)
    np.testing.assert_allclose(scan.diffraction, np.sqrt(intensity), rtol=1e-6)
    assert scan.metadata == {"amplitude_from_intensity": True}
    assert caplog.records == []


@pytest.mark.parametrize("key", ["diffraction", "diff3d"])
def test_integer_amplitudes_are_kept_with_a_counts_warning(tmp_path, caplog, key):
    counts = _counts(np.int32, peak=30.0)
    over = {"diffraction": None, key: counts}
    path = _write(tmp_path, **over)
    with caplog.at_level(logging.WARNING, logger="ptycho_core.io.npz"):
        scan = load_npz(path)
    np.testing.assert_array_equal(scan.diffraction, counts.astype(np.float32))
    text = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(path) in text and f"'{key}'" in text
    assert "ptycho convert" in text and "--intensity" in text
    assert "amplitude_from_intensity" not in scan.metadata


def test_float_amplitudes_log_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ptycho_core.io.npz"):
        load_npz(_write(tmp_path))
    assert caplog.records == []


def test_negative_counts_name_the_key(tmp_path):
    counts = _counts(np.int32)
    counts[2, 3, 4] = -7
    _fails(_ptychodus_export(tmp_path, counts), "'diff3d'", "counts", "-7")
    _fails(_write(tmp_path, diffraction=counts), "'diffraction'", "-7", intensity=True)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"diff3d", "bad_pixels", "xcoords", "ycoords", "probeGuess"}, True),
        ({"diff3d", "xcoords", "ycoords", "probeGuess"}, False),  # legacy PtychoPINN file
        ({"diff3d", "bad_pixels", "diffraction"}, False),
        ({"diff3d", "bad_pixels", "_metadata"}, False),  # written by our writer
        ({"diffraction", "bad_pixels"}, False),
    ],
)
def test_is_ptychodus_export(keys, expected):
    assert npz_module.is_ptychodus_export(keys) is expected
