"""``ptycho train --inference-projection-steps K`` is recorded in the bundle and ``ptycho infer
--projection-steps K`` reaches the inference config (``specs/cli.md``; framework-free fake
backends of ``conftest``)."""

from __future__ import annotations

import pytest

from ptycho_cli.main import main
from ptycho_core import bundle as core_bundle
from ptycho_core.config import ModelConfig

BACKEND = "pytorch"


@pytest.fixture
def trained(record_reconstructions, scan_file, tmp_path):
    seen = record_reconstructions(BACKEND)
    data = scan_file(m=16)
    args = ["train", str(data), "-o", str(tmp_path / "run"), "--backend", BACKEND, "--quiet"]
    assert main([*args, "--epochs", "1", "--inference-projection-steps", "7"]) == 0
    return data, tmp_path / "run", seen


def test_training_flag_is_recorded_in_the_bundle(trained):
    _, run, _ = trained
    manifest = core_bundle.read_manifest(run / core_bundle.BUNDLE_NAME)
    assert manifest["model_config"]["inference_projection_steps"] == 7
    assert ModelConfig().inference_projection_steps != 7


def test_inference_flag_reaches_the_config(trained, tmp_path):
    data, run, seen = trained
    argv = ["infer", str(run), str(data), "--quiet"]
    assert main([*argv, "-o", str(tmp_path / "default")]) == 0
    assert main([*argv, "-o", str(tmp_path / "five"), "--projection-steps", "5"]) == 0
    assert [c.projection_steps for c, _ in seen] == [None, 5]
    assert (tmp_path / "five" / "recon.npz").is_file()


@pytest.mark.parametrize("value", ["0", "-2", "x"])
def test_invalid_counts_are_refused(trained, tmp_path, capsys, value):
    data, run, _ = trained
    argv = ["infer", str(run), str(data), "-o", str(tmp_path / "o"), "--projection-steps", value]
    assert main(argv) == 2
    assert "--projection-steps" in capsys.readouterr().err
