"""Regression tests for the audited CLI defects of issue 11 (D2, D3, D8, D9, D12, D13, D14, D16),
``ptycho inspect --verify`` and the progress display (``specs/cli.md``).

Every reproducer runs through :func:`ptycho_cli.main.main` with the framework-free fake backends
of ``conftest.py``; a run that fails must exit 1 with one ``ptycho: error:`` line naming the file
and the key, before any backend is loaded when the input alone shows the problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ptycho_cli.main import main
from ptycho_core.io import load_npz, save_npz

from .conftest import make_scan


# ----------------------------------------------------------------------------- helpers
def _error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    errors = [ln for ln in err if ln.startswith("ptycho: error: ")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _fails(argv: list[str], capsys) -> str:
    assert main(argv) == 1
    return _error_line(capsys)


@pytest.fixture
def fake_run(fake_backends, scan_file, tmp_path):
    """A folder trained by the fake pytorch backend (a real bundle of NumpyHooks weights)."""
    run = tmp_path / "run"
    assert main(["-q", "train", str(scan_file()), "-o", str(run), "--epochs", "2"]) == 0
    assert (run / "wts.h5.zip").is_file()
    fake_backends.loaded.clear()
    fake_backends.modules["pytorch"].calls.clear()
    return run


def _rewrite_manifest(src: Path, dst: Path, **changes) -> Path:
    """A copy of bundle ``src`` with manifest keys changed (dotted keys reach into mappings),
    re-hashed so only the changed values are wrong. NaN is written as JSON ``NaN``."""
    with zipfile.ZipFile(src) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        files = {n: zf.read(n) for n in zf.namelist() if n != "manifest.json"}
    for key, value in changes.items():
        *parents, last = key.split("__")
        target = manifest
        for part in parents:
            target = target[part]
        target[last] = value
    manifest["files"] = {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for name, data in files.items():
            zf.writestr(name, data)
    return dst


def _replace_entry(src: Path, dst: Path, name: str, data: bytes) -> Path:
    """A copy of bundle ``src`` whose entry ``name`` holds ``data``, re-hashed (so the bundle
    reader accepts it and the entry's decoder has to find the damage)."""
    with zipfile.ZipFile(src) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        files = {n: zf.read(n) for n in zf.namelist() if n != "manifest.json"}
    files[name] = data
    manifest["files"] = {
        n: {"size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()
    }
    dst.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for entry, payload in files.items():
            zf.writestr(entry, payload)
    return dst


def _recon(path: Path, **changes) -> Path:
    """A valid recon.npz (a 40×30 canvas at origin (5, 9) of the 64×64 truth), then ``changes``
    (None removes a key)."""
    rng = np.random.default_rng(3)
    obj = (0.5 + rng.random((40, 30))) * np.exp(0.2j)
    arrays = {
        "object": obj.astype(np.complex64),
        "coverage": np.ones(obj.shape, np.float32),
        "origin": np.array([5.0, 9.0]),
        "amplitude": np.abs(obj).astype(np.float32),
        "phase": np.angle(obj).astype(np.float32),
        "positions": np.zeros((1, 2)),
    }
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# ----------------------------------------------------------------------------- D2, D9 evaluate
@pytest.mark.parametrize(
    "changes, key",
    [
        ({"coverage": np.zeros((40, 30), np.float32)}, "coverage"),  # D2
        ({"coverage": np.full((40, 30), np.nan, np.float32)}, "coverage"),
        ({"coverage": np.ones((3, 3), np.float32)}, "coverage"),
        ({"origin": np.array([np.nan, 0.0])}, "origin"),  # was "cannot convert float NaN"
        ({"origin": np.array([1.0])}, "origin"),
        ({"origin": np.array(["a", "b"])}, "origin"),
        ({"object": np.ones(5, np.complex64)}, "object"),  # was "not enough values to unpack"
        ({"object": np.array("x")}, "object"),
        ({"object": np.full((40, 30), np.nan, np.complex64)}, "object"),
    ],
)
def test_evaluate_bad_recon_names_file_and_key(changes, key, scan_file, tmp_path, capsys):
    truth = scan_file()
    rec = _recon(tmp_path / "recon.npz", **changes)
    line = _fails(["evaluate", str(rec), str(truth), "-o", str(tmp_path / "e")], capsys)
    assert str(rec) in line and f"'{key}'" in line and "internal error" not in line
    assert not (tmp_path / "e").exists()


def test_evaluate_recon_outside_truth_names_both_files(scan_file, tmp_path, capsys):
    truth = scan_file()
    rec = _recon(tmp_path / "recon.npz", origin=np.array([500.0, 500.0]))
    line = _fails(["evaluate", str(rec), str(truth)], capsys)
    assert str(rec) in line and str(truth) in line and "overlap" in line


def test_evaluate_text_file_is_not_called_pickled(scan_file, tmp_path, capsys):
    txt = tmp_path / "t.npz"
    txt.write_text("hi\n")
    line = _fails(["evaluate", str(txt), str(scan_file())], capsys)
    assert str(txt) in line and "text file" in line and "pickle" not in line


def test_evaluate_negative_margin_is_a_usage_error(tmp_path, capsys):  # D13
    rec = _recon(tmp_path / "recon.npz")
    assert main(["evaluate", str(rec), str(rec), "--margin", "-5"]) == 2
    assert "--margin" in capsys.readouterr().err


def test_evaluate_margin_is_applied(scan_file, tmp_path):
    truth = load_npz(scan_file()).object
    canvas = truth[9:49, 5:35]
    rec = _recon(tmp_path / "recon.npz", object=canvas.astype(np.complex64))
    assert main(["-q", "evaluate", str(rec), str(tmp_path / "scan.npz"), "--margin", "3"]) == 0
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["scored_pixels"] == (40 - 6) * (30 - 6)
    assert record["options"]["margin"] == 3


def test_metrics_empty_mask_is_a_contract_error():  # D2 in the library
    from ptycho_core.errors import DataContractError
    from ptycho_core.metrics import evaluate

    img = np.ones((8, 8), np.complex64)
    with pytest.raises(DataContractError, match="mask selects no pixels"):
        evaluate(img, img, mask=np.zeros((8, 8), bool))
    with pytest.raises(DataContractError, match="no pixel to evaluate"):
        evaluate(np.full((8, 8), np.nan, np.complex64), img)


# ----------------------------------------------------------------------------- D3, D9 manifests
@pytest.mark.parametrize("value", [float("nan"), True, "x", None, -1.0, 0])
def test_bad_intensity_scale_fails_before_the_backend(
    value, fake_run, fake_backends, scan_file, tmp_path, capsys
):
    bad = _rewrite_manifest(fake_run / "wts.h5.zip", tmp_path / "bad" / "wts.h5.zip")
    bad = _rewrite_manifest(bad, bad, intensity_scale=value)
    out = tmp_path / "o"
    line = _fails(["infer", str(bad.parent), str(scan_file()), "-o", str(out)], capsys)
    assert str(bad) in line and "'intensity_scale'" in line
    assert fake_backends.loaded == [] and not out.exists()


@pytest.mark.parametrize("value", ["x", None, [1, 2]])
def test_bad_model_config_names_the_key(value, fake_run, scan_file, tmp_path, capsys):
    bad = _rewrite_manifest(fake_run / "wts.h5.zip", tmp_path / "b" / "wts.h5.zip")
    bad = _rewrite_manifest(bad, bad, model_config=value)
    line = _fails(["infer", str(bad), str(scan_file()), "-o", str(tmp_path / "o")], capsys)
    assert str(bad) in line and "'model_config'" in line and "dictionary update" not in line


@pytest.mark.parametrize("command", ["infer", "inspect"])
def test_damaged_probe_entry_names_bundle_and_entry(command, fake_run, scan_file, tmp_path, capsys):
    """The audit's "array: not a valid .npy": the line must name the bundle and the entry."""
    bad = _replace_entry(fake_run / "wts.h5.zip", tmp_path / "p" / "wts.h5.zip", "probe.npy", b"x")
    argv = (
        ["infer", str(bad), str(scan_file()), "-o", str(tmp_path / "o")]
        if command == "infer"
        else ["inspect", "--verify", str(bad)]
    )
    line = _fails(argv, capsys)
    assert f"{bad}:probe.npy: not a valid" in line


# ----------------------------------------------------------------------------- D8 positions
def _shifted_scan(path: Path, dx: float, with_object: bool = True, m: int = 12) -> Path:
    scan = make_scan(m=m, with_object=with_object)
    scan = type(scan)(
        diffraction=scan.diffraction,
        xcoords=scan.xcoords + dx,
        ycoords=scan.ycoords,
        probe=scan.probe,
        object=scan.object,
        metadata=scan.metadata,
    )
    save_npz(path, scan)
    return path


@pytest.mark.parametrize("dx", [1e4, 1e12])
def test_positions_off_the_object_are_refused(dx, fake_run, fake_backends, tmp_path, capsys):
    far = _shifted_scan(tmp_path / "far.npz", dx)
    out = tmp_path / "o"
    line = _fails(["infer", str(fake_run), str(far), "-o", str(out)], capsys)
    assert str(far) in line and "'xcoords'" in line and "'objectGuess'" in line
    assert fake_backends.loaded == [] and not out.exists()


def test_positions_without_object_spanning_a_huge_canvas_are_refused(
    fake_run, fake_backends, tmp_path, capsys
):
    scan = make_scan(with_object=False)
    scan.xcoords[0] = 1e12  # one position in metres-as-pixels: an impossible canvas
    save_npz(tmp_path / "wide.npz", scan)
    line = _fails(["infer", str(fake_run), str(tmp_path / "wide.npz")], capsys)
    assert "wide.npz" in line and "canvas" in line and fake_backends.loaded == []


def test_some_positions_off_the_object_warn_on_one_line(fake_run, tmp_path, capsys):
    scan = make_scan(m=12)
    scan.xcoords[:3] += 1000.0
    save_npz(tmp_path / "part.npz", scan)
    assert (
        main(["infer", str(fake_run), str(tmp_path / "part.npz"), "-o", str(tmp_path / "o")]) == 0
    )
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "3 of 12 positions" in warnings[0] and "part.npz" in warnings[0]


# ----------------------------------------------------------------------------- D12 convert
def test_convert_into_missing_folder_names_the_target(scan_file, tmp_path, capsys):
    dst = tmp_path / "nodir" / "sub" / "out.h5"
    line = _fails(["convert", str(scan_file()), str(dst)], capsys)
    assert str(dst) in line and ".tmp" not in line and "does not exist" in line


def test_atomic_write_errors_name_the_target(tmp_path):
    from ptycho_core.io import atomic_path, atomic_write

    target = tmp_path / "missing" / "x.bin"
    with pytest.raises(FileNotFoundError) as info, atomic_write(target):
        pass
    assert info.value.filename == str(target)
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir" / "f").write_text("keep a folder non-empty")
    with pytest.raises(OSError) as info2:
        with atomic_path(tmp_path / "adir") as tmp:
            tmp.write_bytes(b"x")
    assert info2.value.filename == str(tmp_path / "adir")


def test_convert_diffraction_errors_blame_the_diffraction_file(scan_file, tmp_path, capsys):
    src = scan_file()
    assert main(["-q", "convert", str(src), str(tmp_path / "p.h5")]) == 0
    diff = load_npz(src).diffraction
    cases = {
        "nan.npy": np.full_like(diff, np.nan),
        "neg.npy": -diff - 1,
        "flat.npy": diff[0],
        "rect.npy": diff[:, :, :16],
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
    (tmp_path / "text.npy").write_text("not an array\n")
    for name in [*cases, "text.npy"]:
        path = tmp_path / name
        line = _fails(
            [
                "convert",
                str(tmp_path / "p.h5"),
                str(tmp_path / "o.npz"),
                "--diffraction",
                str(path),
            ],
            capsys,
        )
        assert str(path) in line and "p.h5:" not in line.split(str(path))[0], line
        assert "pickle" not in line
    assert not (tmp_path / "o.npz").exists()


# ----------------------------------------------------------------------------- D14 stale files
def test_infer_into_an_evaluated_folder_removes_the_old_scores(fake_run, scan_file, tmp_path):
    out = tmp_path / "rec"
    first, second = scan_file("a.npz", seed=1), scan_file("b.npz", seed=2)
    assert main(["-q", "infer", str(fake_run), str(first), "-o", str(out)]) == 0
    assert main(["-q", "evaluate", str(out), str(first)]) == 0
    assert (out / "metrics.json").is_file() and (out / "comparison.png").is_file()
    assert main(["-q", "infer", str(fake_run), str(second), "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["recon.h5", "recon.npz", "recon.png"], names
    with np.load(out / "recon.npz") as z:
        np.testing.assert_allclose(z["positions"][:, 0], load_npz(second).xcoords)


# ----------------------------------------------------------------------------- D16 outputs
@pytest.mark.parametrize("command", ["infer", "train"])
def test_output_path_that_is_a_file_fails_before_any_work(
    command, fake_run, fake_backends, scan_file, tmp_path, capsys
):
    scan = scan_file()
    before = scan.read_bytes()
    model = [str(fake_run)] if command == "infer" else []
    line = _fails([command, *model, str(scan), "-o", str(scan)], capsys)
    assert line == f"ptycho: error: {scan}: output folder is an existing file, not a folder"
    assert fake_backends.loaded == [] and scan.read_bytes() == before
    line = _fails([command, *model, str(scan), "-o", str(scan / "sub")], capsys)
    assert str(scan / "sub") in line and "is a file" in line


def test_read_only_output_folder_fails_before_any_work(
    fake_run, fake_backends, scan_file, tmp_path, capsys, monkeypatch
):
    from ptycho_cli import outputs

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        outputs.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode)
    )
    line = _fails(["infer", str(fake_run), str(scan_file()), "-o", str(locked)], capsys)
    assert line == f"ptycho: error: {locked}: output folder is not writable"
    line = _fails(["infer", str(fake_run), str(scan_file()), "-o", str(locked / "new")], capsys)
    assert str(locked / "new") in line and "not writable" in line
    assert fake_backends.loaded == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_read_only_output_folder_real_permissions(fake_run, scan_file, tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _fails(["infer", str(fake_run), str(scan_file()), "-o", str(locked)], capsys)
    finally:
        locked.chmod(0o755)
    assert str(locked) in line and "not writable" in line


def test_evaluate_output_that_is_a_file(tmp_path, capsys):
    rec = _recon(tmp_path / "recon.npz")
    line = _fails(["evaluate", str(rec), str(rec), "-o", str(rec)], capsys)
    assert line == f"ptycho: error: {rec}: output folder is an existing file, not a folder"


# ----------------------------------------------------------------------------- long errors
def test_error_lines_are_short(capsys):
    from ptycho_cli.console import MAX_ERROR_CHARS, Console

    Console().error("x.zip: " + "size mismatch for layer; " * 400)
    line = capsys.readouterr().err.rstrip("\n")
    assert "\n" not in line and len(line) <= MAX_ERROR_CHARS + len("ptycho: error: ")
    assert line.startswith("ptycho: error: x.zip: ") and "--debug" in line


# ----------------------------------------------------------------------------- inspect --verify
def test_inspect_verify_loads_the_weights(fake_run, fake_backends, capsys):
    assert main(["inspect", "--verify", str(fake_run)]) == 0
    out = capsys.readouterr().out
    assert "verified: 2 entries match their SHA-256" in out and "agrees" in out
    assert fake_backends.loaded == ["pytorch"]
    assert [c[0] for c in fake_backends.modules["pytorch"].calls] == ["load_bundle"]


def test_inspect_without_verify_loads_no_backend(fake_run, fake_backends, capsys):
    assert main(["inspect", str(fake_run)]) == 0
    assert "verified" not in capsys.readouterr().out and fake_backends.loaded == []


def test_inspect_verify_finds_a_tampered_entry(fake_run, fake_backends, tmp_path, capsys):
    bad = tmp_path / "tampered.zip"
    with zipfile.ZipFile(fake_run / "wts.h5.zip") as src, zipfile.ZipFile(bad, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "probe.npy":
                data = data[:-8] + b"\x00" * 8
            dst.writestr(name, data)
    assert main(["inspect", str(bad)]) == 0  # the manifest alone looks fine
    capsys.readouterr()
    line = _fails(["inspect", "--verify", str(bad)], capsys)
    assert str(bad) in line and "'probe.npy'" in line and "checksum" in line
    assert fake_backends.loaded == []


def test_inspect_verify_finds_weights_that_do_not_load(bundle_file, fake_backends, capsys):
    bundle = bundle_file("pytorch")  # its weights entry is not the backend's format
    line = _fails(["inspect", "--verify", str(bundle)], capsys)
    assert str(bundle) in line


def test_inspect_verify_finds_a_scale_that_disagrees_with_the_weights(
    fake_run, fake_backends, tmp_path, capsys
):
    bad = _rewrite_manifest(fake_run / "wts.h5.zip", tmp_path / "s" / "wts.h5.zip")
    scale = json.loads(zipfile.ZipFile(bad).read("manifest.json"))["intensity_scale"]
    bad = _rewrite_manifest(bad, bad, intensity_scale=scale * 2)
    line = _fails(["inspect", "--verify", str(bad)], capsys)
    assert str(bad) in line and "'intensity_scale'" in line and "disagrees" in line


# ----------------------------------------------------------------------------- progress
def _epoch_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("ptycho: epoch ")]


def test_progress_lines_when_output_is_not_a_terminal(fake_backends, scan_file, tmp_path, capsys):
    assert main(["train", str(scan_file()), "-o", str(tmp_path / "r"), "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    lines = _epoch_lines(err)
    assert [ln.split()[2] for ln in lines] == ["1/3", "2/3", "3/3"], err
    assert all("train_loss" in ln and ln.endswith(" s)") for ln in lines)
    assert "\r" not in err
    _, execution = fake_backends.modules["pytorch"].calls[0]
    assert execution.enable_progress_bar is False  # no live bar into a file


def test_live_bar_and_no_epoch_lines_on_a_terminal(
    fake_backends, scan_file, tmp_path, capsys, monkeypatch
):
    from ptycho_cli import console

    monkeypatch.setattr(console, "_isatty", lambda stream: True)
    assert main(["train", str(scan_file()), "-o", str(tmp_path / "r"), "--epochs", "2"]) == 0
    assert _epoch_lines(capsys.readouterr().err) == []
    _, execution = fake_backends.modules["pytorch"].calls[0]
    assert execution.enable_progress_bar is True


def test_quiet_shows_no_progress(fake_backends, scan_file, tmp_path, capsys):
    assert main(["-q", "train", str(scan_file()), "-o", str(tmp_path / "r"), "--epochs", "2"]) == 0
    assert capsys.readouterr().err == ""
    _, execution = fake_backends.modules["pytorch"].calls[0]
    assert execution.enable_progress_bar is False


def test_inference_progress_in_steps_of_ten_percent(fake_run, scan_file, tmp_path, capsys):
    scan = scan_file("big.npz", m=40)
    argv = ["infer", str(fake_run), str(scan), "-o", str(tmp_path / "o")]
    assert main([*argv, "--inference-batch-size", "4"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "% (" in ln]
    percents = [int(ln.split("reconstructed ")[1].split("%")[0]) for ln in lines]
    assert percents == [10, 20, 30, 40, 50, 60, 70, 80, 90], lines
    assert main(["-q", *argv]) == 0  # quiet: none; one batch: none either
    assert "% (" not in capsys.readouterr().err


def test_history_recorder_logs_one_progress_record_per_epoch(caplog):
    from ptycho_core.training import PROGRESS_LOGGER, HistoryRecorder

    rec = HistoryRecorder(None, total_epochs=2)
    quiet = HistoryRecorder(None, write=False, total_epochs=2)  # e.g. a DDP rank > 0
    with caplog.at_level(logging.INFO, logger=PROGRESS_LOGGER):
        for epoch in range(2):
            rec.record(epoch, train_loss=1.0 / (epoch + 1), val_loss=float("nan"))
            quiet.record(epoch, train_loss=1.0)
    messages = [r.getMessage() for r in caplog.records if r.name == PROGRESS_LOGGER]
    assert len(messages) == 2 and messages[0].startswith("epoch 1/2  train_loss 1 ")
    assert "val_loss" not in messages[0]  # NaN values are left out
    assert all(getattr(r, "progress", None) == "epoch" for r in caplog.records)
