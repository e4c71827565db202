"""``ptycho infer --grouping {every,cover}`` reaches the inference config and the grouping
(framework-free fake backends of ``conftest``)."""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_cli.main import main

BACKEND = "pytorch"


@pytest.fixture
def trained(record_reconstructions, scan_file, tmp_path):
    seen = record_reconstructions(BACKEND)
    data = scan_file(m=16)
    args = ["train", str(data), "-o", str(tmp_path / "run"), "--backend", BACKEND]
    assert main([*args, "--epochs", "1", "--gridsize", "2", "--quiet"]) == 0
    return data, tmp_path / "run", seen


def test_grouping_flag_reaches_the_config(trained, tmp_path):
    data, run, seen = trained
    for grouping in ("every", "cover"):
        out = tmp_path / grouping
        argv = ["infer", str(run), str(data), "-o", str(out), "--quiet"]
        assert main([*argv, "--grouping", grouping]) == 0
        assert (out / "recon.npz").is_file()
    (every_cfg, every), (cover_cfg, cover) = seen
    assert every_cfg.grouping == "every" and cover_cfg.grouping == "cover"
    # both hold every position: the same covered region
    np.testing.assert_array_equal(every.coverage > 0, cover.coverage > 0)


def test_default_grouping_is_every(trained, tmp_path):
    data, run, seen = trained
    assert main(["infer", str(run), str(data), "-o", str(tmp_path / "o"), "--quiet"]) == 0
    assert seen[-1][0].grouping == "every"


def test_unknown_grouping_is_refused(trained, tmp_path, capsys):
    data, run, _ = trained
    argv = ["infer", str(run), str(data), "-o", str(tmp_path / "o"), "--grouping", "all"]
    assert main(argv) == 2
    assert "invalid choice: 'all'" in capsys.readouterr().err
