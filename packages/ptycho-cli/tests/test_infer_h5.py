"""``ptycho infer`` on an HDF5 scan (streamed, ``specs/data-contracts.md``) and on several
devices with a backend that reconstructs in one process (``specs/training.md``). Fake,
framework-free backends (conftest)."""

from __future__ import annotations

import numpy as np

from ptycho_cli.main import main
from ptycho_core.io import load_npz, save_h5_scan


def test_infer_streams_an_h5_scan_to_the_same_outputs(fake_backends, scan_file, tmp_path):
    run = tmp_path / "run"
    assert main(["-q", "train", str(scan_file("train.npz")), "-o", str(run), "--epochs", "1"]) == 0
    npz = scan_file("test.npz", m=40, seed=2)
    h5 = save_h5_scan(tmp_path / "test.h5", load_npz(npz))
    for name, data in (("from_npz", npz), ("from_h5", h5)):
        assert main(["-q", "infer", str(run), str(data), "-o", str(tmp_path / name)]) == 0
    with (
        np.load(tmp_path / "from_npz" / "recon.npz", allow_pickle=False) as a,
        np.load(tmp_path / "from_h5" / "recon.npz", allow_pickle=False) as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for key in ("object", "coverage", "origin", "positions"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert (a["coverage"] > 0).any()
    assert (tmp_path / "from_h5" / "recon.h5").is_file()


def test_several_devices_with_a_one_process_backend_is_a_clear_error(
    fake_backends, scan_file, tmp_path, capsys
):
    run = tmp_path / "run"
    assert main(["-q", "train", str(scan_file("train.npz")), "-o", str(run), "--epochs", "1"]) == 0
    argv = ["infer", str(run), str(scan_file("test.npz")), "-o", str(tmp_path / "out")]
    assert main([*argv, "--devices", "2"]) == 1
    err = capsys.readouterr().err
    assert "devices = 2" in err and "reconstructs in one process" in err, err
    assert not (tmp_path / "out" / "recon.npz").exists()
