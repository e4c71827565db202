"""The audit's reader reproducers through the CLI (issue 11: D1, D10, D11, D15, D18).

Each must exit 1 with one ``ptycho: error:`` line naming the file (and the key when one is at
fault), no traceback, no output file. The reader-level tests are in
``packages/ptycho-core/tests`` (``test_npz.py``, ``test_product.py``, ``test_fuzz_readers.py``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptycho_cli.main import main
from ptycho_core.io import npz as npz_module
from ptycho_core.io import save_npz, scan_to_product, write_product

from .conftest import make_scan


def _one_error_line(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    errors = [ln for ln in err if ln.startswith("ptycho: error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _scan(tmp_path: Path) -> Path:
    path = tmp_path / "scan.npz"
    save_npz(path, make_scan(m=12))
    return path


def test_d1_damaged_npy_header(tmp_path, capsys):
    """An NPZ whose diffraction.npy header is ``{'descr': (`` (was: internal error
    (TokenError))."""
    good = _scan(tmp_path)
    bad = tmp_path / "tok.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "diffraction.npy":
                hlen = int.from_bytes(data[8:10], "little")
                text = b"{'descr': (\n"
                data = data[:8] + len(text).to_bytes(2, "little") + text + data[10 + hlen :]
            zout.writestr(info.filename, data)
    line = _one_error_line(["convert", str(bad), str(tmp_path / "tok.h5")], capsys)
    assert str(bad) in line and "'diffraction'" in line and ".npy header" in line
    assert "internal error" not in line and not (tmp_path / "tok.h5").exists()


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda p: p.write_text("hi\n"), "a text file"),
        (lambda p: h5py.File(p, "w").close(), "an HDF5 file"),
    ],
)
def test_d10_text_or_hdf5_given_as_a_scan(tmp_path, capsys, make, what):
    """``echo hi > t.npz``: was "contains pickled data ... allow_pickle"."""
    path = tmp_path / "t.npz"
    make(path)
    line = _one_error_line(["convert", str(path), str(tmp_path / "t.h5")], capsys)
    assert str(path) in line and what in line
    assert "pickle" not in line and "allow_pickle" not in line


def test_d11_npy_renamed_npz(tmp_path, capsys):
    """``np.save('s.npy', ...); mv s.npy s.npz``: was "'numpy.ndarray' object does not
    support the context manager protocol"."""
    path = tmp_path / "s.npz"
    with open(path, "wb") as fh:
        np.save(fh, np.ones((4, 8, 8), np.float32))
    line = _one_error_line(["convert", str(path), str(tmp_path / "s.h5")], capsys)
    assert str(path) in line and "a single .npy array" in line
    assert "context manager" not in line


def test_d15_product_with_an_empty_object(tmp_path, capsys):
    """``convert`` of a product whose object is (1, 0, 0): was exit 0."""
    product = tmp_path / "p.h5"
    write_product(product, scan_to_product(make_scan(m=12), pixel_size_m=1e-8))
    with h5py.File(product, "a") as h5:
        attrs = dict(h5["object"].attrs)
        del h5["object"], h5["object_layer_spacing_m"]
        ds = h5.create_dataset("object", data=np.zeros((1, 0, 0), np.complex64))
        for key, value in attrs.items():
            ds.attrs[key] = value
    diffraction = tmp_path / "d.npy"
    np.save(diffraction, make_scan(m=12).diffraction)
    out = tmp_path / "p.npz"
    argv = ["convert", str(product), str(out), "--diffraction", str(diffraction)]
    line = _one_error_line(argv, capsys)
    assert str(product) in line and "'object'" in line and "non-empty" in line
    assert not out.exists()


def test_d18_deflated_bomb(tmp_path, capsys, monkeypatch):
    """An NPZ of deflated zeros that would inflate far beyond its size: was exit 0 after
    inflating 2.4 GiB. Scaled down (floor 1 MiB, 64 MiB of zeros); the full-size reproducer
    is ``test_npz.py::test_decompression_guard_on_the_audit_reproducer`` (slow)."""
    monkeypatch.setattr(npz_module, "EXPANSION_FLOOR_BYTES", 1 << 20)
    path = tmp_path / "bomb.npz"
    m = 16_384
    np.savez_compressed(
        path,
        diffraction=np.zeros((m, 32, 32), np.float32),
        xcoords=np.zeros(m),
        ycoords=np.zeros(m),
        probeGuess=np.ones((32, 32), np.complex64),
    )
    assert path.stat().st_size < 200_000
    line = _one_error_line(["convert", str(path), str(tmp_path / "bomb.h5")], capsys)
    assert str(path) in line and "'diffraction'" in line and "decompression guard" in line
    assert not (tmp_path / "bomb.h5").exists()


def test_d17_infer_payload_does_not_hold_y(bundle_file, tmp_path):
    """``ptycho infer`` loads the scan without its ground-truth patches ``Y`` (twice the size
    of the diffraction stack; inference never uses them)."""
    from ptycho_cli.factories import create_inference_payload

    scan = make_scan(m=12)
    scan.Y = (scan.diffraction + 0j).astype(np.complex64)
    path = tmp_path / "with_y.npz"
    save_npz(path, scan)
    payload = create_inference_payload(bundle_file(), path, tmp_path / "out")
    assert payload.data is not None and payload.data.M == 12
    assert payload.data.Y is None
