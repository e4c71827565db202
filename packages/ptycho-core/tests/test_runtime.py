"""Execution settings at run time (``specs/configuration.md``): the new fields, device choice,
what a backend can honour, the logger fallback, and the core helpers both backends' training
loops use (Keras/Lightning logs → history, callback state, variable assignment)."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from ptycho_core import checkpoint, runtime
from ptycho_core.checkpoint import TrainingSnapshot
from ptycho_core.config import ExecutionConfig
from ptycho_core.errors import ConfigError
from ptycho_core.training import HistoryRecorder, steps_per_epoch, unprefixed_name

TF_LIKE = {"gpu": ["G0", "G1"], "mps": ["G0", "G1"], "cpu": ["C0"]}
CPU_ONLY = {"gpu": [], "mps": [], "cpu": ["cpu"]}


def test_new_execution_fields_validate():
    ex = ExecutionConfig()
    assert (ex.precision, ex.compile, ex.num_nodes) == ("32-true", False, 1)
    assert ExecutionConfig.from_dict(ex.to_dict()) == ex
    for bad in (
        dict(precision="fp16"),
        dict(precision="16-mixed", accelerator="cpu"),
        dict(compile=1),
        dict(num_nodes=0),
        dict(num_nodes=1.0),
    ):
        with pytest.raises(ConfigError, match=f"ExecutionConfig.{next(iter(bad))} = "):
            ExecutionConfig(**bad)
    ExecutionConfig(precision="16-mixed", accelerator="gpu")  # checked where the GPU is known


def test_device_kind_and_selection():
    assert runtime.device_kind("auto", TF_LIKE) == "gpu"
    assert runtime.device_kind("auto", CPU_ONLY) == "cpu"
    assert runtime.device_kind("cuda", CPU_ONLY) == "gpu"
    sel = runtime.select_devices
    assert sel(ExecutionConfig(devices=1), TF_LIKE, "tf") == ["G0"]
    assert sel(ExecutionConfig(devices=-1), TF_LIKE, "tf") == ["G0", "G1"]
    assert sel(ExecutionConfig(devices=(1,), accelerator="mps"), TF_LIKE, "tf") == ["G1"]
    assert sel(ExecutionConfig(accelerator="cpu"), TF_LIKE, "tf") == ["C0"]
    with pytest.raises(RuntimeError, match=r"devices=3 requested; the tf backend sees 2 gpu"):
        sel(ExecutionConfig(devices=3), TF_LIKE, "tf")
    with pytest.raises(RuntimeError, match="0 gpu device"):
        sel(ExecutionConfig(accelerator="cuda"), CPU_ONLY, "tf")
    with pytest.raises(ConfigError, match=r"accelerator = 'tpu' is invalid for the tf backend"):
        sel(ExecutionConfig(accelerator="tpu"), TF_LIKE, "tf")
    # one process predicts on the kind's first device, whatever `devices` says
    assert runtime.first_device("auto", TF_LIKE, "tf") == "G0"


def test_check_execution_rules(caplog):
    full = runtime.ExecutionSupport("full")
    limited = runtime.ExecutionSupport(
        "limited",
        honoured={"precision", "compile", "deterministic", "accelerator"},
        required_values={"num_nodes": (1,)},
        compile_needs_nondeterminism=True,
    )
    fp16 = ExecutionConfig(precision="16-mixed")
    with pytest.raises(ConfigError, match=r"precision = '16-mixed' is invalid on a cpu device"):
        runtime.check_execution(fp16, full, CPU_ONLY)
    assert runtime.check_execution(fp16, full, TF_LIKE) == {}
    assert runtime.check_execution(ExecutionConfig(precision="bf16-mixed"), full, CPU_ONLY) == {}
    with pytest.raises(ConfigError, match=r"num_nodes = 4 is invalid for the limited backend"):
        runtime.check_execution(ExecutionConfig(num_nodes=4), limited, CPU_ONLY)
    assert runtime.check_execution(ExecutionConfig(num_nodes=4), full, CPU_ONLY) == {}
    jit = ExecutionConfig(compile=True)
    with pytest.raises(ConfigError, match="compile = True is invalid with deterministic=True"):
        runtime.check_execution(jit, limited, CPU_ONLY)
    assert runtime.check_execution(jit, limited, CPU_ONLY, training=False) == {}
    assert runtime.check_execution(jit, full, CPU_ONLY) == {}
    with caplog.at_level(logging.INFO, logger="ptycho_core.runtime"):
        ignored = runtime.check_execution(ExecutionConfig(num_workers=2), limited, CPU_ONLY)
    assert ignored == {"num_workers": 2} and "limited backend ignores" in caplog.text


def test_optional_logger_falls_back_to_csv(monkeypatch, caplog):
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: None)
    with caplog.at_level(logging.WARNING):
        assert runtime.usable_logger("mlflow") == "csv"
    assert "mlflow" in caplog.text
    assert runtime.usable_logger("none") == "none" and runtime.usable_logger("csv") == "csv"
    monkeypatch.setattr(runtime.importlib.util, "find_spec", lambda name: object())
    assert runtime.usable_logger("tensorboard") == "tensorboard"


def test_history_from_keras_and_lightning_logs():
    keras_rec = HistoryRecorder()
    keras_rec.record_logs(0, {"loss": 2.0, "nll": 1.5, "val_loss": 3.0, "learning_rate": 9}, lr=0.1)
    lightning_rec = HistoryRecorder()
    metrics = {"train_loss": 2.0, "train_nll": 1.5, "val_loss": 3.0, "epoch": 0, "other": 1}
    lightning_rec.record_logs(0, metrics, lr=0.1, prefixed=True)
    expected = {
        "epoch": [0.0],
        "train_loss": [2.0],
        "val_loss": [3.0],
        "lr": [0.1],
        "train_nll": [1.5],
    }
    assert keras_rec.history() == expected == lightning_rec.history()
    no_val = HistoryRecorder()
    no_val.record_logs(0, {"loss": 1.0})
    assert math.isnan(no_val.history()["val_loss"][0])
    assert unprefixed_name("train_loss") == "loss" and unprefixed_name("val_nll") == "val_nll"
    assert steps_per_epoch(17, 8) == 3 and steps_per_epoch(0, 8) == 1


class _Var:
    def __init__(self, path: str, shape: tuple[int, ...]) -> None:
        self.path, self.shape, self.value = path, shape, None

    def assign(self, value: np.ndarray) -> None:
        self.value = value


def _snapshot(**kw) -> TrainingSnapshot:
    base = dict(
        backend="x",
        epoch=0,
        nepochs=2,
        stopped=False,
        history={},
        callbacks={},
        weights=[np.ones((2, 3))],
        optimizer=[np.zeros(())],
    )
    return TrainingSnapshot(**{**base, **kw})


def test_callback_state_round_trip_and_checked_assignment():
    class Plateau(SimpleNamespace):
        pass

    cb = Plateau(wait=2, best=0.5, other="x")
    state = checkpoint.callback_state([cb, object()], {Plateau: ("wait", "best")})
    assert state == {"Plateau": {"wait": 2, "best": 0.5}}
    fresh = Plateau(wait=0, best=math.inf, other="y")
    checkpoint.restore_callback_state(_snapshot(callbacks=state), [fresh])
    assert (fresh.wait, fresh.best, fresh.other) == (2, 0.5, "y")

    w, o = _Var("w", (2, 3)), _Var("step", ())
    checkpoint.assign_state(_snapshot(), weights=[w], optimizer=[o])
    assert w.value.shape == (2, 3) and o.value.shape == ()
    bad_w, bad_o = _Var("w", (3, 2)), _Var("step", ())
    with pytest.raises(ConfigError, match=r"weights w: shape \[2, 3\]"):
        checkpoint.assign_state(_snapshot(), weights=[bad_w], optimizer=[bad_o])
    assert bad_o.value is None  # nothing assigned when any shape is off


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/status (Linux)")
def test_peak_rss_is_the_process_own_not_its_parents():
    """ru_maxrss survives fork+exec on Linux; peak_rss_bytes must not (memory tests and
    bench_scale measure in child processes of large parents)."""
    held = np.ones(300 * 2**20, dtype=np.uint8)  # this process now peaks above 300 MiB
    assert runtime.peak_rss_bytes() > 300 * 2**20
    child = (
        "import numpy as np\n"
        "from ptycho_core.runtime import peak_rss_bytes\n"
        "before = peak_rss_bytes()\n"
        "a = np.ones(100 * 2**20, dtype=np.uint8)\n"
        "print(before, peak_rss_bytes())\n"
    )
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, after = (int(v) for v in out.stdout.split())
    assert before < 200 * 2**20  # the child's own imports, not the parent's 300 MiB
    assert after - before > 90 * 2**20  # and it sees its own 100 MiB
    del held
