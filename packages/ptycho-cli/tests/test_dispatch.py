"""Dispatch: the backend named by the config / bundle runs, and only that one.

Framework work happens in subprocesses (this pytest process must not import torch or
TensorFlow); a backend is made "absent" by hiding its packages with an import blocker.
"""

from __future__ import annotations

import json
import sys

import pytest

from ptycho_cli import dispatch
from ptycho_cli.factories import create_inference_payload, create_training_payload
from ptycho_core.backends import BACKEND_NAMES, BACKENDS, backend_info
from ptycho_core.errors import BundleBackendMismatchError

FRAMEWORKS = tuple(m for info in BACKENDS for m in info.framework_modules)
_PACKAGES = {"pytorch": "ptycho_torch", "tensorflow": "ptycho_tf"}
#: What to hide to make a backend "not installed": its package and its frameworks.
HIDE = {info.name: (_PACKAGES[info.name], *info.framework_modules) for info in BACKENDS}


def test_mismatch_is_raised_before_any_framework_import(scan_file, bundle_file, tmp_path):
    before = {m for m in FRAMEWORKS if m in sys.modules}
    payload = create_inference_payload(
        bundle_file("pytorch"), scan_file(), tmp_path, overrides={"backend": "tensorflow"}
    )
    with pytest.raises(BundleBackendMismatchError) as exc:
        dispatch.reconstruct(payload)
    assert exc.value.archived == "pytorch" and exc.value.active == "tensorflow"
    assert "pytorch" in str(exc.value) and "tensorflow" in str(exc.value)
    assert {m for m in FRAMEWORKS if m in sys.modules} == before


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_missing_backend_train(backend, scan_file, run_python, tmp_path):
    data = scan_file(n=32)
    other = "tensorflow" if backend == "pytorch" else "pytorch"
    code = f"""
from ptycho_cli import dispatch
from ptycho_cli.factories import create_training_payload
from ptycho_core.errors import BackendUnavailableError
p = create_training_payload({str(data)!r}, {str(tmp_path / "out")!r},
                            overrides={{'backend': {backend!r}, 'nepochs': 1}})
try:
    dispatch.train(p)
except BackendUnavailableError as exc:
    print('MESSAGE', exc)
    import sys
    print('IMPORTED', sorted(m for m in sys.modules if m in {HIDE[other]!r}))
else:
    raise SystemExit('no error: silent fallback?')
"""
    out = run_python(code, block=HIDE[backend], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = backend_info(backend)
    message = out.stdout.split("MESSAGE", 1)[1]
    assert f"{info.display_name} backend selected" in message
    assert info.install_command in message
    assert "IMPORTED []" in out.stdout  # the other backend was not tried either
    assert not (tmp_path / "out" / "wts.h5.zip").exists()


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_missing_backend_reconstruct(backend, scan_file, bundle_file, run_python, tmp_path):
    bundle = bundle_file(backend)
    data = scan_file(n=32)
    code = f"""
from ptycho_cli import dispatch
from ptycho_cli.factories import create_inference_payload
from ptycho_core.errors import BackendUnavailableError
p = create_inference_payload({str(bundle)!r}, {str(data)!r}, {str(tmp_path / "o")!r})
try:
    dispatch.reconstruct(p)
except BackendUnavailableError as exc:
    print('MESSAGE', exc)
"""
    out = run_python(code, block=HIDE[backend], timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    info = backend_info(backend)
    assert f"{info.display_name} backend selected" in out.stdout
    assert info.install_command in out.stdout


_ROUND_TRIP = """
import json, sys
import numpy as np
from ptycho_cli import dispatch
from ptycho_cli.factories import create_inference_payload, create_training_payload
backend, data, out = sys.argv[1:4]
p = create_training_payload(data, out, overrides={'backend': backend, 'nepochs': 1,
    'n_filters_scale': 1, 'batch_size': 8}, execution_config={'enable_progress_bar': False,
    'logger_backend': 'none', 'accelerator': 'cpu'})
t = dispatch.train(p)
q = create_inference_payload(t.bundle_path, data, out)
r = dispatch.reconstruct(q)
print('RESULT', json.dumps({'train_type': type(t).__name__, 'train_backend': t.backend,
    'type': type(r).__name__, 'backend': r.backend, 'shape': list(np.shape(r.object)),
    'finite': bool(np.isfinite(r.object).all()), 'covered': float((r.coverage > 0).mean()),
    'epochs': t.epochs_trained,
    'other_framework': sorted(m for m in sys.modules if m in sys.argv[4].split(','))}))
"""


@pytest.mark.slow
def test_both_backends_give_the_same_result_structure(scan_file, run_python, tmp_path):
    data = scan_file(n=32, m=24)
    found = {}
    for backend in BACKEND_NAMES:
        other = ",".join(m for b in BACKENDS if b.name != backend for m in b.framework_modules)
        out = run_python(
            _ROUND_TRIP.replace(
                "sys.argv[1:4]", repr([backend, str(data), str(tmp_path / backend)])
            ).replace("sys.argv[4]", repr(other))
        )
        assert out.returncode == 0, out.stderr[-4000:]
        found[backend] = json.loads(out.stdout.split("RESULT", 1)[1])
        assert found[backend]["backend"] == found[backend]["train_backend"] == backend
        assert found[backend]["finite"] and found[backend]["covered"] > 0
        assert found[backend]["other_framework"] == []
        assert (tmp_path / backend / "wts.h5.zip").is_file()
        assert found[backend]["train_type"] == "TrainResult" and found[backend]["epochs"] == 1
        assert found[backend]["type"] == "Reconstruction"
    assert found["pytorch"]["shape"] == found["tensorflow"]["shape"]


def test_train_payload_backend_default_is_pytorch_with_both_installed(
    scan_file, tmp_path, monkeypatch
):
    from ptycho_core import backends

    monkeypatch.setattr(backends, "available_backends", lambda: list(BACKEND_NAMES))
    assert create_training_payload(scan_file(), tmp_path).config.backend == "pytorch"
