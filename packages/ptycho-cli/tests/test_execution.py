"""Execution-config helpers: flags → PyTorchExecutionConfig, deprecated flags, accelerator."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from ptycho_cli.execution import (
    add_execution_arguments,
    build_execution_config,
    execution_overrides,
    resolve_accelerator,
)
from ptycho_core.config import PyTorchExecutionConfig


def _parse(*argv: str, training: bool = True) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--quiet", action="store_true")
    add_execution_arguments(p, training=training)
    return p.parse_args(list(argv))


def test_no_flags_means_no_overrides_and_defaults():
    args = _parse()
    assert execution_overrides(args) == {}
    assert build_execution_config(args) == PyTorchExecutionConfig()


def test_every_flag_maps_to_its_field():
    args = _parse(
        "--accelerator",
        "cpu",
        "--devices",
        "0,1",
        "--strategy",
        "ddp",
        "--no-deterministic",
        "--num-workers",
        "2",
        "--learning-rate",
        "5e-4",
        "--scheduler",
        "cosine",
        "--accumulate-grad-batches",
        "3",
        "--disable-checkpointing",
        "--checkpoint-save-top-k",
        "-1",
        "--checkpoint-monitor",
        "train_loss",
        "--checkpoint-mode",
        "max",
        "--early-stop-patience",
        "9",
        "--logger",
        "tensorboard",
        "--inference-batch-size",
        "32",
        "--gradient-clip-val",
        "0.5",
        "--quiet",
    )
    cfg = build_execution_config(args)
    assert cfg.accelerator == "cpu" and cfg.devices == (0, 1) and cfg.strategy == "ddp"
    assert cfg.deterministic is False and cfg.num_workers == 2
    assert cfg.learning_rate == 5e-4 and cfg.scheduler == "cosine" and cfg.accum_steps == 3
    assert cfg.enable_checkpointing is False and cfg.checkpoint_save_top_k == -1
    assert cfg.checkpoint_monitor_metric == "train_loss" and cfg.checkpoint_mode == "max"
    assert cfg.early_stop_patience == 9 and cfg.logger_backend == "tensorboard"
    assert cfg.inference_batch_size == 32 and cfg.gradient_clip_val == 0.5
    assert cfg.enable_progress_bar is False  # --quiet


def test_enable_checkpointing_flag():
    assert build_execution_config(_parse("--enable-checkpointing")).enable_checkpointing is True


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("-1", -1), ("4", 4)])
def test_devices_values(value, expected):
    assert build_execution_config(_parse("--devices", value)).devices == expected


def test_bad_devices_is_a_usage_error():
    with pytest.raises(SystemExit) as exc:
        _parse("--devices", "two")
    assert exc.value.code == 2


def test_deprecated_device_maps_to_accelerator():
    printed = []
    with pytest.warns(DeprecationWarning, match="--accelerator cuda"):
        cfg = build_execution_config(_parse("--device", "cuda:1"), warn=printed.append)
    assert cfg.accelerator == "cuda" and cfg.devices == (1,)
    assert printed and "--device is deprecated" in printed[0]


def test_deprecated_device_conflicting_with_accelerator():
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="conflicts"):
        execution_overrides(_parse("--device", "cpu", "--accelerator", "cuda"))


def test_deprecated_disable_mlflow_maps_to_logger_none():
    printed = []
    with pytest.warns(DeprecationWarning, match="--logger none"):
        cfg = build_execution_config(_parse("--disable_mlflow"), warn=printed.append)
    assert cfg.logger_backend == "none" and printed


def test_training_only_flags_absent_for_inference():
    with pytest.raises(SystemExit):
        _parse("--learning-rate", "0.1", training=False)


def test_invalid_value_via_config_validation():
    with pytest.raises(SystemExit):
        _parse("--learning-rate", "-1")


def test_explicit_accelerators_pass_through():
    for name in ("cpu", "cuda", "gpu", "mps"):
        assert resolve_accelerator(name) == name


def test_auto_resolution_in_subprocess():
    """`auto` resolves to a concrete device; torch is imported only for the pytorch backend."""
    code = (
        "import sys\n"
        "from ptycho_cli.execution import resolve_accelerator\n"
        "r = resolve_accelerator('auto', 'tensorflow')\n"
        "assert 'torch' not in sys.modules, 'torch imported for tensorflow'\n"
        "print(r, resolve_accelerator('auto', 'pytorch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tf_choice, torch_choice = out.stdout.split()
    assert tf_choice == "cpu"  # TensorFlow not imported: no probing, CPU
    assert torch_choice in ("cpu", "cuda", "mps")


def _fake_tf(gpus):
    import types

    def list_physical_devices(kind):
        if isinstance(gpus, Exception):
            raise gpus
        return gpus if kind == "GPU" else []

    return types.SimpleNamespace(
        config=types.SimpleNamespace(list_physical_devices=list_physical_devices)
    )


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [(["GPU:0"], "cuda"), ([], "cpu"), (RuntimeError("CUDA driver broken"), "cpu")],
)
def test_auto_asks_an_imported_tensorflow(monkeypatch, gpus, expected):
    monkeypatch.setitem(sys.modules, "tensorflow", _fake_tf(gpus))
    assert resolve_accelerator("auto", "tensorflow") == expected


def test_flag_choices_are_the_core_enumerations():
    from ptycho_core import config

    p = argparse.ArgumentParser()
    add_execution_arguments(p, training=True)
    choices = {a.dest: tuple(a.choices) for a in p._actions if a.choices}
    assert choices["accelerator"] == config.ACCELERATORS
    assert choices["scheduler"] == config.SCHEDULERS
    assert choices["logger"] == config.LOGGER_BACKENDS
    assert choices["checkpoint_mode"] == config.CHECKPOINT_MODES


def test_precision_compile_and_num_nodes_flags(tmp_path):
    args = _parse("--precision", "bf16-mixed", "--compile", "--num-nodes", "2", training=False)
    assert execution_overrides(args) == {"precision": "bf16-mixed", "compile": True, "num_nodes": 2}
    ex = build_execution_config(_parse("--no-compile"))
    assert (ex.precision, ex.compile, ex.num_nodes) == ("32-true", False, 1)
    with pytest.raises(SystemExit):
        _parse("--precision", "fp8")
    with pytest.raises(SystemExit):
        _parse("--num-nodes", "0")
    # float16 on the CPU: a ConfigError naming the field, before any framework is imported
    with pytest.raises(ValueError, match=r"precision = '16-mixed'.*accelerator='cpu'"):
        build_execution_config(_parse("--accelerator", "cpu", "--precision", "16-mixed"))


def test_precision_from_a_config_file(tmp_path):
    from ptycho_cli.factories import create_training_payload
    from ptycho_core.io import save_npz
    from ptycho_core.simulation import simulate_scan

    data = tmp_path / "scan.npz"
    save_npz(data, simulate_scan(N=32, n_positions=24, nphotons=1e5, seed=1))
    cfg = tmp_path / "run.toml"
    cfg.write_text('[execution]\nprecision = "bf16-mixed"\ncompile = true\nnum_nodes = 2\n')
    payload = create_training_payload(data, tmp_path / "out", config_file=cfg)
    ex = payload.execution
    assert (ex.precision, ex.compile, ex.num_nodes) == ("bf16-mixed", True, 2)
    assert payload.provenance["execution.precision"].endswith(str(cfg))
