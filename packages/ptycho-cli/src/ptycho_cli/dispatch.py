"""Backend dispatch (``specs/packages.md``, ``specs/configuration.md``): run a payload on the
backend it names, never another one.

- :func:`train` uses ``payload.config.backend``; :func:`reconstruct` uses the backend recorded in
  the bundle's manifest. A ``--backend`` that contradicts the bundle raises
  :class:`~ptycho_core.errors.BundleBackendMismatchError` before any framework is imported.
- A backend that is not installed raises :class:`~ptycho_core.errors.BackendUnavailableError`
  ("<Name> backend selected … pip install …") from :func:`ptycho_core.backends.load_backend`.
- Both backends return the same result structure; ``results["backend"]`` is always set, and a
  backend result missing one of the agreed keys is an error, not a silent gap.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ptycho_cli.execution import resolve_accelerator
from ptycho_cli.factories import InferencePayload, TrainingPayload
from ptycho_core.backends import load_backend
from ptycho_core.errors import BundleBackendMismatchError

__all__ = ["train", "reconstruct", "TRAIN_RESULT_KEYS", "check_inference_backend"]

logger = logging.getLogger(__name__)

#: Keys every backend's ``train`` returns (specs/core-api.md).
TRAIN_RESULT_KEYS = (
    "backend",
    "bundle_path",
    "history",
    "intensity_scale",
    "norm_factor",
    "timings",
    "config",
)


def _resolved_execution(execution: Any, backend: str) -> Any:
    accel = resolve_accelerator(execution.accelerator, backend)
    if accel != execution.accelerator:
        logger.info("execution.accelerator = %r (resolved from %r)", accel, execution.accelerator)
        execution = dataclasses.replace(execution, accelerator=accel)
    return execution


def _check_keys(results: Any, keys: tuple[str, ...], backend: str, what: str) -> dict[str, Any]:
    if not isinstance(results, dict):
        raise RuntimeError(
            f"{backend} backend {what} returned {type(results).__name__}, expected a dict"
        )
    missing = [k for k in keys if k not in results]
    if missing:
        raise RuntimeError(f"{backend} backend {what} result lacks the agreed keys {missing}")
    return results


def _load(name: str, on_backend_loaded: Callable[[ModuleType], None] | None) -> ModuleType:
    module = load_backend(name)
    if on_backend_loaded is not None:
        on_backend_loaded(module)
    return module


def train(
    payload: TrainingPayload, *, on_backend_loaded: Callable[[ModuleType], None] | None = None
) -> dict[str, Any]:
    """Train on ``payload.config.backend``; returns the backend's result dict (``backend`` set).

    ``on_backend_loaded(module)`` runs after the backend (and its framework) was imported and
    before it works (the CLI uses it to tame framework logging)."""
    name = payload.config.backend
    module = _load(name, on_backend_loaded)
    execution = _resolved_execution(payload.execution, name)
    logger.info("training with the %s backend", name)
    start = time.perf_counter()
    results = module.train(
        payload.config, execution, train_data=payload.train_data, test_data=payload.test_data
    )
    results = _check_keys(results, TRAIN_RESULT_KEYS, name, "train")
    results["backend"] = name
    results.setdefault("timings", {}).setdefault("total_s", time.perf_counter() - start)
    return results


def check_inference_backend(payload: InferencePayload) -> str:
    """The bundle's backend; :class:`BundleBackendMismatchError` if the config asks for another."""
    archived = payload.bundle_backend
    requested = payload.config.backend
    if requested is not None and requested != archived:
        raise BundleBackendMismatchError(payload.bundle_path, archived, requested)
    return archived


def reconstruct(
    payload: InferencePayload, *, on_backend_loaded: Callable[[ModuleType], None] | None = None
) -> dict[str, Any]:
    """Reconstruct ``payload.data`` with the bundle's backend; returns the shared result dict."""
    name = check_inference_backend(payload)
    module = _load(name, on_backend_loaded)
    from ptycho_core.workflow import RESULT_KEYS

    execution = _resolved_execution(payload.execution, name)
    config = payload.config
    if config.backend is None:
        config = dataclasses.replace(config, backend=name)
    logger.info("reconstructing with the %s backend", name)
    start = time.perf_counter()
    results = module.reconstruct(config, execution, data=payload.data)
    results = _check_keys(results, tuple(RESULT_KEYS), name, "reconstruct")
    results["backend"] = name
    results.setdefault("timings", {}).setdefault("total_s", time.perf_counter() - start)
    return results
