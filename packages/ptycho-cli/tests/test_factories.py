"""ADR-003 factories: every precedence level, N/gridsize inference and conflicts, every error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from ptycho_cli.factories import (
    create_inference_payload,
    create_training_payload,
    valid_keys,
)
from ptycho_core.bundle import BUNDLE_NAME
from ptycho_core.config import PyTorchExecutionConfig
from ptycho_core.errors import BundleError, ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- training
def test_defaults_and_n_from_data(scan_file, tmp_path):
    data = scan_file(n=32)
    p = create_training_payload(data, tmp_path / "out")
    assert p.config.model.N == 32  # from the data, not the default 64
    assert p.provenance["model.N"] == f"data {data}"
    assert p.config.nepochs == 50 and p.provenance["training.nepochs"] == "default"
    assert p.config.model.gridsize == 2 and p.provenance["model.gridsize"] == "default"
    assert p.execution.learning_rate == 1e-3
    assert p.config.train_data_file == data and p.config.output_dir == tmp_path / "out"
    assert p.train_data.M == 12 and p.test_data is None


@pytest.mark.parametrize(
    "suffix, text",
    [
        (
            ".yaml",
            "training:\n  nepochs: 7\n  batch_size: 4\nmodel:\n  gridsize: 2\n"
            "execution:\n  learning_rate: 0.005\ninference:\n  stitch_crop: 8\n",
        ),
        (
            ".toml",
            "nepochs = 7\nbatch_size = 4\ngridsize = 2\n[execution]\nlearning_rate = 0.005\n",
        ),
    ],
)
def test_config_file_beats_defaults(scan_file, tmp_path, suffix, text):
    cfg = _write(tmp_path / f"cfg{suffix}", text)
    p = create_training_payload(scan_file(), tmp_path / "out", config_file=cfg)
    assert (p.config.nepochs, p.config.batch_size, p.config.model.gridsize) == (7, 4, 2)
    assert p.execution.learning_rate == 0.005
    assert p.provenance["training.nepochs"] == f"config file {cfg}"
    assert p.provenance["execution.learning_rate"] == f"config file {cfg}"


def test_execution_config_beats_config_file(scan_file, tmp_path):
    cfg = _write(
        tmp_path / "c.yaml",
        "execution:\n  learning_rate: 0.005\n  num_workers: 0\n  scheduler: cosine\n",
    )
    p = create_training_payload(
        scan_file(),
        tmp_path,
        config_file=cfg,
        execution_config=PyTorchExecutionConfig(learning_rate=0.01),
    )
    assert p.execution.learning_rate == 0.01
    assert p.provenance["execution.learning_rate"] == "execution config"
    # fields the instance leaves at their default do not erase the config file's choice
    assert p.execution.scheduler == "cosine"


def test_execution_mapping_forces_a_default_value(scan_file, tmp_path):
    cfg = _write(tmp_path / "c.yaml", "scheduler: cosine\n")
    p = create_training_payload(
        scan_file(), tmp_path, config_file=cfg, execution_config={"scheduler": "plateau"}
    )
    assert p.execution.scheduler == "plateau"


def test_overrides_beat_execution_config_and_file(scan_file, tmp_path):
    cfg = _write(tmp_path / "c.yaml", "nepochs: 7\nlearning_rate: 0.005\n")
    p = create_training_payload(
        scan_file(),
        tmp_path,
        config_file=cfg,
        execution_config={"learning_rate": 0.01},
        overrides={"nepochs": 3, "execution.learning_rate": 0.02, "model.n_filters_scale": 1},
    )
    assert p.config.nepochs == 3 and p.provenance["training.nepochs"] == "override"
    assert p.execution.learning_rate == 0.02
    assert p.provenance["execution.learning_rate"] == "override"
    assert p.config.model.n_filters_scale == 1


def test_n_conflict_names_both_values(scan_file, tmp_path):
    with pytest.raises(ValueError, match=r"N = 64.*override.*N = 32"):
        create_training_payload(scan_file(n=32), tmp_path, overrides={"N": 64})


def test_n_conflict_from_config_file(scan_file, tmp_path):
    cfg = _write(tmp_path / "c.toml", "[model]\nN = 128\n")
    with pytest.raises(ValueError, match=r"N = 128.*config file.*N = 32"):
        create_training_payload(scan_file(n=32), tmp_path, config_file=cfg)


def test_matching_n_is_fine(scan_file, tmp_path):
    p = create_training_payload(scan_file(n=32), tmp_path, overrides={"N": 32})
    assert p.config.model.N == 32


def test_test_file_with_other_n(scan_file, tmp_path):
    with pytest.raises(ValueError, match=r"N = 64.*N = 32"):
        create_training_payload(
            scan_file("a.npz", n=32), tmp_path, test_data_file=scan_file("b.npz", n=64)
        )


def test_unknown_override_key_lists_valid_keys(scan_file, tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nepoch'\].*nepochs"):
        create_training_payload(scan_file(), tmp_path, overrides={"nepoch": 3})


def test_unknown_key_in_config_file(scan_file, tmp_path):
    cfg = _write(tmp_path / "c.yaml", "model:\n  nepochs: 3\n")  # right key, wrong section
    with pytest.raises(ValueError, match=r"model\.nepochs"):
        create_training_payload(scan_file(), tmp_path, config_file=cfg)


def test_unknown_execution_mapping_key(scan_file, tmp_path):
    with pytest.raises(ValueError, match="learning_rat"):
        create_training_payload(scan_file(), tmp_path, execution_config={"learning_rat": 1.0})


def test_invalid_value_is_a_config_error(scan_file, tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        create_training_payload(scan_file(), tmp_path, overrides={"batch_size": 0})


def test_gridsize_needs_enough_patterns(scan_file, tmp_path):
    with pytest.raises(ValueError, match="16 patterns"):
        create_training_payload(
            scan_file(m=12), tmp_path, overrides={"gridsize": 4, "neighbor_count": 15}
        )


def test_deprecated_n_images(scan_file, tmp_path):
    with pytest.warns(DeprecationWarning, match="n_images"):
        p = create_training_payload(scan_file(), tmp_path, overrides={"n_images": 5})
    assert p.config.n_groups == 5


@pytest.mark.parametrize("which", ["train", "test", "config"])
def test_missing_files(scan_file, tmp_path, which):
    good = scan_file()
    kwargs = (
        {"test_data_file": tmp_path / "nope.npz"}
        if which == "test"
        else {"config_file": tmp_path / "nope.yaml"}
        if which == "config"
        else {}
    )
    train = tmp_path / "nope.npz" if which == "train" else good
    with pytest.raises(FileNotFoundError, match="nope"):
        create_training_payload(train, tmp_path, **kwargs)


def test_applied_values_are_logged_with_source(scan_file, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="ptycho_cli.factories"):
        create_training_payload(scan_file(), tmp_path, overrides={"nepochs": 3})
    text = caplog.text
    assert "training.nepochs = 3 (from override)" in text
    assert "model.N = 32 (from data" in text


def test_valid_keys_cover_all_sections():
    keys = valid_keys("training")
    assert {"N", "gridsize", "nepochs", "learning_rate", "backend"} <= set(keys)
    assert "stitch_crop" not in keys and "train_data_file" not in keys


# ----------------------------------------------------------------------------- inference
def test_inference_takes_model_and_backend_from_bundle(scan_file, bundle_file, tmp_path):
    bundle = bundle_file("tensorflow", n=32, gridsize=2, n_filters_scale=1, neighbor_count=5)
    p = create_inference_payload(bundle, scan_file(n=32), tmp_path / "out")
    assert p.config.model.gridsize == 2 and p.config.model.n_filters_scale == 1
    assert p.provenance["model.gridsize"] == f"bundle {bundle}"
    assert p.config.backend == "tensorflow" and p.bundle_backend == "tensorflow"
    assert p.config.neighbor_count == 5  # bundle's training config
    assert p.manifest["backend"] == "tensorflow"
    assert p.data.M == 12


def test_inference_accepts_the_training_folder(scan_file, bundle_file, tmp_path):
    bundle = bundle_file()
    p = create_inference_payload(bundle.parent, scan_file(), tmp_path)
    assert p.bundle_path == bundle and bundle.name == BUNDLE_NAME


def test_inference_precedence_over_bundle(scan_file, bundle_file, tmp_path):
    cfg = _write(
        tmp_path / "c.yaml",
        "inference:\n  neighbor_count: 9\n  stitch_crop: 8\ntraining:\n  nepochs: 1\n",
    )
    bundle = bundle_file(neighbor_count=5)
    p = create_inference_payload(bundle, scan_file(), tmp_path, config_file=cfg)
    assert p.config.neighbor_count == 9  # config file > bundle
    assert p.config.stitch_crop == 8
    p = create_inference_payload(
        bundle,
        scan_file(),
        tmp_path,
        config_file=cfg,
        overrides={"neighbor_count": 7},
        execution_config={"inference_batch_size": 8},
    )
    assert p.config.neighbor_count == 7 and p.provenance["inference.neighbor_count"] == "override"
    assert p.execution.inference_batch_size == 8


def test_inference_gridsize_conflict_names_both(scan_file, bundle_file, tmp_path):
    with pytest.raises(ValueError, match=r"gridsize = 2 \(from override\).*gridsize = 1"):
        create_inference_payload(
            bundle_file(gridsize=1), scan_file(), tmp_path, overrides={"gridsize": 2}
        )


def test_inference_data_n_conflicts_with_bundle(scan_file, bundle_file, tmp_path):
    with pytest.raises(ValueError, match=r"N = 64.*N = 32"):
        create_inference_payload(bundle_file(n=32), scan_file(n=64), tmp_path)


def test_inference_backend_request_is_recorded(scan_file, bundle_file, tmp_path):
    p = create_inference_payload(
        bundle_file("pytorch"), scan_file(), tmp_path, overrides={"backend": "tensorflow"}
    )
    assert p.config.backend == "tensorflow" and p.bundle_backend == "pytorch"


def test_inference_unknown_key(scan_file, bundle_file, tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['nepochs'\]"):
        create_inference_payload(bundle_file(), scan_file(), tmp_path, overrides={"nepochs": 2})


def test_inference_missing_files(scan_file, bundle_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="model bundle"):
        create_inference_payload(tmp_path / "none.zip", scan_file(), tmp_path)
    with pytest.raises(FileNotFoundError, match="data file"):
        create_inference_payload(bundle_file(), tmp_path / "none.npz", tmp_path)


def test_inference_corrupt_bundle(scan_file, tmp_path):
    bad = tmp_path / BUNDLE_NAME
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BundleError, match=str(bad)):
        create_inference_payload(bad, scan_file(), tmp_path)
