"""The CLI on the typed backend results (``TrainResult``, ``Reconstruction``), run end to end with
framework-free fake backends (``conftest.fake_backends``): dispatch's type checks, the files each
command writes (``loss.png`` by the CLI only), the default backend, removed config keys."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from ptycho_cli import dispatch, figures
from ptycho_cli.factories import create_inference_payload, create_training_payload
from ptycho_cli.main import main
from ptycho_core import backends as core_backends
from ptycho_core.backends import BACKEND_NAMES, BACKENDS, DEFAULT_BACKEND
from ptycho_core.bundle import read_manifest
from ptycho_core.engine import TrainResult
from ptycho_core.workflow import Reconstruction

FRAMEWORKS = ("torch", "tensorflow", "keras", "lightning")
TINY = ["--epochs", "3", "--batch-size", "4", "--quiet"]


@pytest.fixture(autouse=True)
def _no_framework_imported():
    before = {m for m in FRAMEWORKS if m in sys.modules}
    yield
    assert {m for m in FRAMEWORKS if m in sys.modules} == before


# ----------------------------------------------------------------------------- dispatch
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_dispatch_returns_the_typed_results(backend, fake_backends, scan_file, tmp_path):
    data = scan_file(m=16)
    payload = create_training_payload(
        data, tmp_path / "run", overrides={"backend": backend, "nepochs": 2}
    )
    trained = dispatch.train(payload)
    assert isinstance(trained, TrainResult) and trained.backend == backend
    assert fake_backends.loaded == [backend]
    assert trained.epochs_trained == 2 and trained.timings["total_s"] >= 0
    # dispatch handed the backend a resolved accelerator
    assert fake_backends.modules[backend].calls[0][1].accelerator == "cpu"

    inf = create_inference_payload(trained.bundle_path, data, tmp_path / "rec")
    recon = dispatch.reconstruct(inf)
    assert isinstance(recon, Reconstruction) and recon.backend == backend
    assert fake_backends.loaded == [backend, backend]
    assert recon.object.dtype == np.complex64 and (recon.coverage > 0).any()


def _replace_train(fake_backends, backend: str, result) -> None:
    fake_backends.modules[backend].train = lambda *a, **k: result


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"backend": "pytorch", "bundle_path": "x", "history": {}}, "expected ptycho_core.engine"),
        (None, "returned NoneType"),
    ],
)
def test_dispatch_rejects_untyped_train_results(
    result, message, fake_backends, scan_file, tmp_path
):
    _replace_train(fake_backends, "pytorch", result)
    payload = create_training_payload(scan_file(), tmp_path, overrides={"backend": "pytorch"})
    with pytest.raises(RuntimeError, match=message):
        dispatch.train(payload)


def test_dispatch_rejects_a_result_of_another_backend(fake_backends, scan_file, tmp_path):
    data = scan_file(m=16)
    good = dispatch.train(
        create_training_payload(data, tmp_path, overrides={"backend": "tensorflow", "nepochs": 1})
    )
    _replace_train(fake_backends, "pytorch", good)  # a "pytorch" backend answering "tensorflow"
    payload = create_training_payload(data, tmp_path, overrides={"backend": "pytorch"})
    with pytest.raises(RuntimeError, match="'tensorflow' backend"):
        dispatch.train(payload)


def test_dispatch_rejects_untyped_reconstructions(fake_backends, scan_file, bundle_file, tmp_path):
    fake_backends.modules["tensorflow"].reconstruct = lambda *a, **k: {"object": np.ones((2, 2))}
    inf = create_inference_payload(bundle_file("tensorflow"), scan_file(), tmp_path)
    with pytest.raises(RuntimeError, match="expected ptycho_core.workflow.Reconstruction"):
        dispatch.reconstruct(inf)


# ----------------------------------------------------------------------------- commands
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_train_writes_bundle_history_and_loss_png(
    backend, fake_backends, scan_file, tmp_path, monkeypatch, capsys
):
    drawn = []
    real = figures.loss_figure

    def spy(path, history):
        drawn.append(history)
        return real(path, history)

    monkeypatch.setattr(figures, "loss_figure", spy)
    out = tmp_path / "run"
    assert main(["train", str(scan_file(m=16)), "-o", str(out), "--backend", backend, *TINY]) == 0
    assert {p.name for p in out.iterdir()} >= {"wts.h5.zip", "history.csv", "loss.png"}
    assert (out / "loss.png").stat().st_size > 5_000
    assert read_manifest(out / "wts.h5.zip")["backend"] == backend
    # the CLI drew the loss curve once, from the TrainResult's history
    assert len(drawn) == 1 and len(drawn[0]["train_loss"]) == 3
    text = capsys.readouterr().out
    assert f"trained with the {backend} backend" in text and "3 epochs" in text
    assert str(out / "loss.png") in text


def test_no_fake_backend_writes_loss_png(fake_backends, scan_file, tmp_path):
    """The backend (here: the core skeleton every backend runs) writes no loss.png."""
    for backend in BACKEND_NAMES:
        payload = create_training_payload(
            scan_file(m=16), tmp_path / backend, overrides={"backend": backend, "nepochs": 2}
        )
        dispatch.train(payload)
        names = {p.name for p in (tmp_path / backend).iterdir()}
        assert "loss.png" not in names and "wts.h5.zip" in names


def test_loss_figure_numbers_epochs_from_one(tmp_path):
    plt = figures._plt()
    fig, ax = plt.subplots()
    history = {
        "epoch": [0.0, 1.0, 2.0, 3.0],
        "train_loss": [4.0, 3.0, 2.0, 1.0],
        "val_loss": [math.nan] * 4,  # no validation data: not drawn
        "lr": [1e-3] * 4,
    }
    figures._loss_axes(ax, history)
    lines = ax.get_lines()
    assert len(lines) == 1
    np.testing.assert_array_equal(lines[0].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(lines[0].get_ydata(), history["train_loss"])
    plt.close(fig)


def test_train_with_test_data_uses_the_backends_reconstruction(
    fake_backends, scan_file, tmp_path, monkeypatch, capsys
):
    def no_second_reconstruction(*a, **k):
        raise AssertionError("the test data were reconstructed twice")

    monkeypatch.setattr(dispatch, "reconstruct", no_second_reconstruction)
    out = tmp_path / "run"
    test = scan_file("test.npz", m=12, seed=1)
    argv = ["train", str(scan_file(m=16)), "--test-data", str(test), "-o", str(out), *TINY]
    assert main(argv) == 0
    assert {"recon.npz", "recon.h5", "recon.png", "loss.png"} <= {p.name for p in out.iterdir()}
    with np.load(out / "recon.npz", allow_pickle=False) as z:
        obj, covered = z["object"], z["coverage"] > 0
        meta = json.loads(str(z["_metadata"]))
    assert meta["backend"] == DEFAULT_BACKEND
    value = fake_backends.modules[DEFAULT_BACKEND].hooks.PATCH_VALUE
    np.testing.assert_allclose(obj[covered], value, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_infer_writes_the_reconstruction(backend, fake_backends, scan_file, tmp_path, capsys):
    data = scan_file(m=16)
    assert main(["train", str(data), "-o", str(tmp_path / "run"), "--backend", backend, *TINY]) == 0
    rec = tmp_path / "rec"
    assert main(["infer", str(tmp_path / "run"), str(data), "-o", str(rec), "--quiet"]) == 0
    assert {p.name for p in rec.iterdir()} == {"recon.npz", "recon.h5", "recon.png"}
    text = capsys.readouterr().out
    assert f"with the {backend} backend" in text and "covered" in text
    with np.load(rec / "recon.npz", allow_pickle=False) as z:
        assert json.loads(str(z["_metadata"]))["backend"] == backend
        assert z["positions"].shape == (16, 2)


def test_ignored_execution_settings_are_reported(fake_backends, scan_file, tmp_path, capsys):
    fake_backends.modules["tensorflow"].hooks.notes = {"ignored_execution": {"num_workers": 2}}
    argv = ["train", str(scan_file(m=16)), "-o", str(tmp_path), "--backend", "tensorflow", *TINY]
    assert main([*argv, "--num-workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "ptycho: warning: the tensorflow backend ignored" in err and "num_workers=2" in err


def test_demo_quick_runs_on_typed_results(fake_backends, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out), "--backend", "tensorflow", "--quiet"]) == 0
    for name in ("demo.png", "metrics.json", "recon.npz", "loss.png", "wts.h5.zip"):
        assert (out / name).is_file(), name
    record = json.loads((out / "metrics.json").read_text())
    assert record["demo"]["backend"] == "tensorflow"
    # the flat-object floor, scored on the same region as the reconstruction
    flat = record["demo"]["flat_object"]
    assert set(flat) == {"ssim_amp", "ssim_phase"}
    assert all(-1.0 <= v <= 1.0 for v in flat.values())
    assert flat != {k: record["metrics"][k] for k in flat}
    assert fake_backends.loaded == ["tensorflow", "tensorflow"]


# ----------------------------------------------------------------------------- default backend
def _installed(monkeypatch, names: list[str]) -> None:
    monkeypatch.setattr(core_backends, "available_backends", lambda: list(names))


@pytest.mark.parametrize("only", BACKEND_NAMES)
def test_a_single_installed_backend_is_the_default(only, monkeypatch, fake_backends, scan_file):
    _installed(monkeypatch, [only])
    payload = create_training_payload(scan_file(), "out")
    assert payload.config.backend == only
    assert payload.provenance["training.backend"] == "installed backends"


def test_plain_train_on_a_tensorflow_only_install(monkeypatch, fake_backends, scan_file, tmp_path):
    _installed(monkeypatch, ["tensorflow"])
    assert main(["train", str(scan_file(m=16)), "-o", str(tmp_path / "o"), *TINY]) == 0
    assert fake_backends.loaded == ["tensorflow"]
    assert read_manifest(tmp_path / "o" / "wts.h5.zip")["backend"] == "tensorflow"


@pytest.mark.parametrize("installed", [list(BACKEND_NAMES), []])
def test_default_with_both_or_none_installed(installed, monkeypatch, scan_file):
    _installed(monkeypatch, installed)
    assert create_training_payload(scan_file(), "out").config.backend == "pytorch"


def test_a_chosen_backend_beats_the_default(monkeypatch, scan_file, tmp_path):
    _installed(monkeypatch, ["tensorflow"])
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training:\n  backend: pytorch\n")
    assert create_training_payload(scan_file(), "o", config_file=cfg).config.backend == "pytorch"
    over = create_training_payload(scan_file(), "o", overrides={"backend": "pytorch"})
    assert over.config.backend == "pytorch"


def test_backends_command_reads_the_table(monkeypatch, capsys):
    _installed(monkeypatch, ["tensorflow"])
    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for info in BACKENDS:
        (line,) = [ln for ln in lines if ln.split()[0] == info.name]
        if info.name == "tensorflow":
            assert "installed" in line
        else:
            assert "missing" in line and info.install_command in line
            assert f"ptycho-cli[{info.cli_extra}]" in line
    assert "default backend: tensorflow" in lines


# ----------------------------------------------------------------------------- removed keys
def test_config_file_with_positions_provided_still_works(scan_file, tmp_path):
    cfg = tmp_path / "old.yaml"
    cfg.write_text("training:\n  positions_provided: true\n  nepochs: 3\n")
    with pytest.warns(DeprecationWarning, match="positions_provided"):
        payload = create_training_payload(scan_file(), tmp_path, config_file=cfg)
    assert payload.config.nepochs == 3
    assert "positions_provided" not in payload.config.to_dict()
    assert not any("positions_provided" in key for key in payload.provenance)
