"""``ptycho infer --adapt-epochs K --save-adapted DIR`` through the factories and dispatch, with
the framework-free fake backends of ``conftest`` (the real backends: ``tests/test_cli_adapt.py``
and each backend's ``test_adaptation.py``)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from ptycho_cli.factories import create_inference_payload
from ptycho_cli.main import main
from ptycho_core import engine
from ptycho_core.bundle import read_manifest, write_bundle
from ptycho_core.errors import ConfigError

BACKEND = "pytorch"


@pytest.fixture
def run_folder(fake_backends, scan_file, tmp_path):
    """A scan and a bundle trained by the fake backend; its ``reconstruct`` takes the adaptation
    keywords (as the real backends' do) and records them."""
    module = fake_backends.modules[BACKEND]
    seen: list[dict] = []

    def reconstruct(config, execution=None, *, data=None, **adapt):
        seen.append(adapt)
        return engine.reconstruct(module.hooks, config, execution, data=data, **adapt)

    module.reconstruct = reconstruct
    data = scan_file(m=16)
    args = ["train", str(data), "-o", str(tmp_path / "run"), "--backend", BACKEND]
    assert main([*args, "--epochs", "1", "--quiet"]) == 0
    return data, tmp_path / "run", seen


def test_adapt_save_and_reload(run_folder, tmp_path, capsys):
    data, run, seen = run_folder
    capsys.readouterr()
    bundle = run / "wts.h5.zip"
    before = bundle.read_bytes()
    kept = tmp_path / "adapted"
    argv = ["infer", str(run), str(data), "-o", str(tmp_path / "rec")]
    assert main([*argv, "--adapt-epochs", "2", "--save-adapted", str(kept)]) == 0
    out, err = capsys.readouterr()
    assert seen == [{"adapt_epochs": 2, "save_adapted": kept}]
    assert "adapting a copy of the model" in err and "2 epochs" in err
    assert "adapted the model for 2 epochs in" in out
    assert str(kept / "wts.h5.zip") in out and str(kept / "history.csv") in out
    assert bundle.read_bytes() == before
    manifest = read_manifest(kept / "wts.h5.zip")
    assert manifest["adapted_from"]["scan"] == data.name and manifest["epochs_trained"] == 2
    assert (tmp_path / "rec" / "recon.npz").is_file()

    # the kept model is a normal bundle: ptycho infer reconstructs with it
    assert main(["infer", str(kept), str(data), "-o", str(tmp_path / "again"), "--quiet"]) == 0
    assert seen[-1] == {} and (tmp_path / "again" / "recon.npz").is_file()


def test_default_is_no_adaptation(run_folder, tmp_path, capsys):
    data, run, seen = run_folder
    assert main(["infer", str(run), str(data), "-o", str(tmp_path / "rec"), "--quiet"]) == 0
    assert seen == [{}]  # the backend is called exactly as before
    assert "adapted" not in capsys.readouterr().out


def test_save_adapted_needs_adapt_epochs(run_folder, tmp_path, capsys):
    data, run, seen = run_folder
    argv = ["infer", str(run), str(data), "-o", str(tmp_path / "rec")]
    assert main([*argv, "--save-adapted", str(tmp_path / "kept")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "save_adapted" in lines[0] and "--adapt-epochs" in lines[0]
    assert seen == [] and not (tmp_path / "kept").exists() and not (tmp_path / "rec").exists()
    assert main([*argv, "--adapt-epochs", "-1"]) == 2  # usage error


def test_supervised_bundle_is_refused_before_the_backend_loads(run_folder, fake_backends, tmp_path):
    data, run, _ = run_folder
    manifest = dict(read_manifest(run / "wts.h5.zip"))
    manifest.pop("files")
    manifest["model_config"] = dict(manifest["model_config"], model_type="supervised")
    with zipfile.ZipFile(run / "wts.h5.zip") as zf:
        files = {n: zf.read(n) for n in zf.namelist() if n != "manifest.json"}
    (tmp_path / "sup").mkdir()
    sup = write_bundle(tmp_path / "sup" / "wts.h5.zip", json.loads(json.dumps(manifest)), files)
    loaded = list(fake_backends.loaded)
    with pytest.raises(ConfigError, match="supervised"):
        create_inference_payload(sup, data, tmp_path / "o", adapt_epochs=1)
    assert main(["infer", str(sup), str(data), "-o", str(tmp_path / "o"), "--adapt-epochs", "1"])
    assert fake_backends.loaded == loaded  # refused before any backend was loaded
    payload = create_inference_payload(sup, data, tmp_path / "o")  # no adaptation: fine
    assert payload.adapt_epochs == 0 and payload.save_adapted is None


def test_payload_fields(run_folder, tmp_path):
    data, run, _ = run_folder
    payload = create_inference_payload(
        run, data, tmp_path / "o", adapt_epochs=3, save_adapted=str(tmp_path / "k")
    )
    assert payload.adapt_epochs == 3 and payload.save_adapted == Path(tmp_path / "k")
    for bad in (-1, True, 1.0):
        with pytest.raises(ConfigError, match="adapt_epochs"):
            create_inference_payload(run, data, tmp_path / "o", adapt_epochs=bad)
