"""Multi-device inference requests (``specs/training.md``, "Multi-device inference"): how many
processes an execution asks for, and the clear error of a backend that runs in one process."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from ptycho_core import engine
from ptycho_core.config import ExecutionConfig, InferenceConfig
from ptycho_core.errors import ConfigError


@pytest.mark.parametrize(
    ("devices", "expected"), [(1, 1), (2, 2), ((0, 1, 3), 3), ("auto", 1), (-1, 1)]
)
def test_requested_devices(devices, expected):
    assert engine.requested_devices(ExecutionConfig(devices=devices)) == expected


def test_one_process_backend_refuses_several_devices_before_loading_anything():
    hooks: Any = SimpleNamespace(name="tensorflow")  # no inference_shard hook
    with pytest.raises(ConfigError, match="tensorflow backend reconstructs in one process"):
        engine.reconstruct(hooks, InferenceConfig(), ExecutionConfig(devices=2))
    # one device: the request passes the check and fails later, on the missing bundle
    with pytest.raises(ConfigError, match="model_path = None"):
        engine.reconstruct(hooks, InferenceConfig(), ExecutionConfig(devices=1))
