"""Ptychodus files through the CLI (``specs/cli.md``): a product's frame and experiment reach
``recon.h5`` through ``convert`` and ``infer``, ``recon.h5`` records the model's training
losses, and Ptychodus's training export (detector counts) is square-rooted. Fake backends: no
framework is imported."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ptycho_cli.main import main
from ptycho_core.io import Product, load_npz, read_product, write_product

N = 32
H, W = 80, 90
CX, CY = 3e-6, -2e-6
PW, PH = 1e-8, 1.2e-8


@pytest.fixture
def product_and_counts(tmp_path):
    """A Ptychodus-like product (off-centre object, non-square pixels, experiment values) and
    detector counts for its positions, as files."""
    rng = np.random.default_rng(7)
    m = 12
    col = rng.uniform(N / 2, W - N / 2, m)
    row = rng.uniform(N / 2, H - N / 2, m)
    product = Product(
        probe_position_x_m=CX + (col - (W - 1) / 2) * PW,
        probe_position_y_m=CY + (row - (H - 1) / 2) * PH,
        probe=np.ones((1, 1, N, N), np.complex64),
        object=np.ones((1, H, W), np.complex64),
        probe_pixel_width_m=2e-8,
        probe_pixel_height_m=2.5e-8,
        object_center_x_m=CX,
        object_center_y_m=CY,
        object_pixel_width_m=PW,
        object_pixel_height_m=PH,
        probe_energy_eV=10000.0,
        detector_object_distance_m=2.0,
        tomography_angle_deg=30.0,
    )
    write_product(tmp_path / "product.h5", product)
    counts = rng.poisson(400.0, (m, N, N)).astype(np.uint32)
    return tmp_path / "product.h5", product, counts


def _trained_run(tmp_path, scan_file, epochs=3):
    run = tmp_path / "run"
    train = scan_file("train.npz")
    assert main(["-q", "train", str(train), "-o", str(run), "--epochs", str(epochs)]) == 0
    return run


def test_infer_writes_the_products_frame_and_the_training_losses(
    fake_backends, scan_file, product_and_counts, tmp_path
):
    h5, product, counts = product_and_counts
    np.save(tmp_path / "counts.npy", counts)
    scan = tmp_path / "scan.npz"
    argv = ["-q", "convert", str(h5), str(scan), "--diffraction", str(tmp_path / "counts.npy")]
    assert main([*argv, "--intensity"]) == 0
    run = _trained_run(tmp_path, scan_file, epochs=3)
    out = tmp_path / "recon"
    assert main(["-q", "infer", str(run), str(scan), "-o", str(out)]) == 0

    recon = read_product(out / "recon.h5")
    # every probe position back where the input product had it, in metres
    np.testing.assert_allclose(recon.probe_position_x_m, product.probe_position_x_m, atol=1e-15)
    np.testing.assert_allclose(recon.probe_position_y_m, product.probe_position_y_m, atol=1e-15)
    assert (recon.object_pixel_width_m, recon.object_pixel_height_m) == (PW, PH)
    assert (recon.probe_pixel_width_m, recon.probe_pixel_height_m) == (2e-8, 2.5e-8)
    assert recon.probe_energy_eV == 10000.0 and recon.detector_object_distance_m == 2.0
    assert recon.tomography_angle_deg == 30.0
    # the canvas's pixel (0, 0) sits at object-frame `origin`: its world position follows from
    # the input grid's rule (specs/data-contracts.md)
    with np.load(out / "recon.npz", allow_pickle=False) as z:
        x0, y0 = z["origin"]
        hh, ww = z["object"].shape
    assert recon.object_center_x_m == pytest.approx(
        CX + (x0 + (ww - 1) / 2 - (W - 1) / 2) * PW, abs=1e-18
    )
    assert recon.object_center_y_m == pytest.approx(
        CY + (y0 + (hh - 1) / 2 - (H - 1) / 2) * PH, abs=1e-18
    )
    assert "nominal" not in recon.comments and "product.h5" in recon.comments

    # the losses are the model's training history, as the bundle's history.csv records it
    rows = (run / "history.csv").read_text().splitlines()
    header = rows[0].split(",")
    table = [dict(zip(header, r.split(","), strict=True)) for r in rows[1:]]
    np.testing.assert_allclose(recon.loss_values, [float(r["train_loss"]) for r in table])
    np.testing.assert_array_equal(recon.loss_epochs, [int(float(r["epoch"])) for r in table])
    assert recon.loss_values.size == 3


def test_infer_on_a_plain_scan_keeps_the_nominal_pixel_and_losses(
    fake_backends, scan_file, tmp_path
):
    run = _trained_run(tmp_path, scan_file, epochs=2)
    out = tmp_path / "recon"
    assert main(["-q", "infer", str(run), str(scan_file("other.npz", seed=3)), "-o", str(out)]) == 0
    recon = read_product(out / "recon.h5")
    assert recon.object_pixel_width_m == 1e-8 and "nominal" in recon.comments
    assert recon.probe_energy_eV == 0.0 and recon.loss_values.size == 2


def test_convert_back_to_a_product_keeps_the_frame(product_and_counts, tmp_path):
    h5, product, counts = product_and_counts
    np.save(tmp_path / "counts.npy", counts)
    scan = tmp_path / "scan.npz"
    argv = ["-q", "convert", str(h5), str(scan), "--diffraction", str(tmp_path / "counts.npy")]
    assert main([*argv, "--intensity"]) == 0
    assert main(["-q", "convert", str(scan), str(tmp_path / "again.h5")]) == 0
    again = read_product(tmp_path / "again.h5")
    np.testing.assert_allclose(again.probe_position_x_m, product.probe_position_x_m, atol=1e-15)
    np.testing.assert_allclose(again.probe_position_y_m, product.probe_position_y_m, atol=1e-15)
    assert (again.object_center_x_m, again.object_center_y_m) == (CX, CY)
    assert (again.object_pixel_height_m, again.probe_pixel_height_m) == (PH, 2.5e-8)
    assert again.detector_object_distance_m == 2.0
    # an explicit --pixel-size-m still wins
    out = tmp_path / "px.h5"
    assert main(["-q", "convert", str(scan), str(out), "--pixel-size-m", "5e-9"]) == 0
    px = read_product(out)
    assert (px.object_pixel_width_m, px.object_pixel_height_m) == (5e-9, 5e-9)
    assert (px.object_center_x_m, px.probe_energy_eV) == (CX, 10000.0)


def _export(path, counts, rng):
    """A training file as Ptychodus 1.7's "Export Training Data" writes it."""
    m = counts.shape[0]
    x, y = rng.uniform(N / 2, 60, m), rng.uniform(N / 2, 60, m)
    np.savez(
        path,
        xcoords=x,
        ycoords=y,
        xcoords_start=x,
        ycoords_start=y,
        diff3d=counts,
        bad_pixels=np.zeros((N, N), bool),
        probeGuess=np.ones((1, N, N), np.complex64),
        objectGuess=np.ones((80, 80), np.complex64),
        scan_index=np.zeros(m, dtype=int),
    )
    return path


def test_convert_with_a_ptychodus_export_as_diffraction(product_and_counts, tmp_path, caplog):
    h5, product, counts = product_and_counts
    export = _export(tmp_path / "exported.npz", counts, np.random.default_rng(1))
    scan = tmp_path / "scan.npz"
    with caplog.at_level(logging.WARNING):
        argv = ["convert", str(h5), str(scan), "--diffraction", str(export)]
        assert main(argv) == 0
    assert "Ptychodus training export" in caplog.text and str(export) in caplog.text
    np.testing.assert_allclose(load_npz(scan).diffraction, np.sqrt(counts), rtol=1e-6)


@pytest.mark.parametrize("intensity", [False, True])
def test_convert_npz_to_npz(tmp_path, intensity, capsys):
    rng = np.random.default_rng(2)
    counts = rng.poisson(900.0, (6, N, N)).astype(np.int32)
    src = tmp_path / "counts.npz"
    np.savez(
        src,
        diffraction=counts,
        xcoords=rng.uniform(16, 48, 6),
        ycoords=rng.uniform(16, 48, 6),
        probeGuess=np.ones((N, N), np.complex64),
    )
    dst = tmp_path / "amp.npz"
    assert main(["convert", str(src), str(dst), *(["--intensity"] if intensity else [])]) == 0
    err = capsys.readouterr().err
    out = load_npz(dst)
    if intensity:
        np.testing.assert_allclose(out.diffraction, np.sqrt(counts), rtol=1e-6)
        assert "warning" not in err
    else:  # kept as amplitudes, with the hint how to convert
        np.testing.assert_array_equal(out.diffraction, counts.astype(np.float32))
        assert "--intensity" in err and "warning" in err
    with np.load(dst, allow_pickle=False) as z:
        meta = json.loads(str(z["_metadata"]))
    assert meta.get("amplitude_from_intensity", False) is intensity


def test_infer_on_a_ptychodus_pair_keeps_the_frame(
    fake_backends, scan_file, product_and_counts, tmp_path
):
    """``ptycho infer RUN product.h5`` with Ptychodus's ``diffraction.h5`` beside it (its batch
    folder layout): recon.h5 is in the product's frame."""
    import h5py

    h5, product, counts = product_and_counts
    with h5py.File(tmp_path / "diffraction.h5", "w") as f:
        f["patterns"] = counts
        f["indexes"] = np.arange(counts.shape[0])
    run = _trained_run(tmp_path, scan_file, epochs=2)
    out = tmp_path / "recon"
    assert main(["-q", "infer", str(run), str(h5), "-o", str(out)]) == 0
    recon = read_product(out / "recon.h5")
    np.testing.assert_allclose(recon.probe_position_x_m, product.probe_position_x_m, atol=1e-15)
    np.testing.assert_allclose(recon.probe_position_y_m, product.probe_position_y_m, atol=1e-15)
    assert (recon.object_pixel_height_m, recon.probe_pixel_width_m) == (PH, 2e-8)
    assert recon.probe_energy_eV == 10000.0 and recon.detector_object_distance_m == 2.0
    assert recon.loss_values.size == 2
