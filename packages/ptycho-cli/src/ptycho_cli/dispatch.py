"""Backend dispatch (``specs/cli.md``, ``specs/packages.md``): run a payload on the
backend it names, never another one.

- :func:`train` uses ``payload.config.backend``; :func:`reconstruct` uses the backend recorded in
  the bundle's manifest. A ``--backend`` that contradicts the bundle raises
  :class:`~ptycho_core.errors.BundleBackendMismatchError` before any framework is imported.
- A backend that is not installed raises :class:`~ptycho_core.errors.BackendUnavailableError`
  ("<Name> backend selected … pip install …") from :func:`ptycho_core.backends.load_backend`.
- Both backends return the same typed results — :class:`ptycho_core.engine.TrainResult` and
  :class:`ptycho_core.workflow.Reconstruction`; anything else, or a result that names another
  backend, is an error, not a silent gap. ``timings["total_s"]`` is set when the backend did
  not set it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from ptycho_cli.execution import resolve_accelerator
from ptycho_cli.factories import InferencePayload, TrainingPayload
from ptycho_core.backends import load_backend
from ptycho_core.errors import BundleBackendMismatchError

if TYPE_CHECKING:
    from ptycho_core.engine import TrainResult
    from ptycho_core.workflow import Reconstruction

__all__ = ["train", "reconstruct", "check_inference_backend"]

logger = logging.getLogger(__name__)

_Result = TypeVar("_Result", "TrainResult", "Reconstruction")


def _resolved_execution(execution: Any, backend: str) -> Any:
    accel = resolve_accelerator(execution.accelerator, backend)
    if accel != execution.accelerator:
        logger.info("execution.accelerator = %r (resolved from %r)", accel, execution.accelerator)
        execution = dataclasses.replace(execution, accelerator=accel)
    return execution


def _check_result(result: object, expected: type[_Result], backend: str, what: str) -> _Result:
    """``result`` if it is an ``expected`` made by ``backend``; RuntimeError otherwise."""
    if not isinstance(result, expected):
        raise RuntimeError(
            f"{backend} backend {what} returned {type(result).__name__}, expected "
            f"{expected.__module__}.{expected.__name__}"
        )
    if result.backend != backend:
        raise RuntimeError(
            f"{backend} backend {what} returned a result of the {result.backend!r} backend"
        )
    return result


def _load(name: str, on_backend_loaded: Callable[[ModuleType], None] | None) -> ModuleType:
    module = load_backend(name)
    if on_backend_loaded is not None:
        on_backend_loaded(module)
    return module


def train(
    payload: TrainingPayload, *, on_backend_loaded: Callable[[ModuleType], None] | None = None
) -> TrainResult:
    """Train on ``payload.config.backend``; returns the backend's :class:`TrainResult`.

    ``on_backend_loaded(module)`` runs after the backend (and its framework) was imported and
    before it works (the CLI uses it to tame framework logging)."""
    from ptycho_core.engine import TrainResult  # framework-free; lazy keeps --help light

    name = payload.config.backend
    module = _load(name, on_backend_loaded)
    execution = _resolved_execution(payload.execution, name)
    logger.info("training with the %s backend", name)
    start = time.perf_counter()
    result = module.train(
        payload.config, execution, train_data=payload.train_data, test_data=payload.test_data
    )
    result = _check_result(result, TrainResult, name, "train")
    result.timings.setdefault("total_s", time.perf_counter() - start)
    return result


def check_inference_backend(payload: InferencePayload) -> str:
    """The bundle's backend; :class:`BundleBackendMismatchError` if the config asks for another."""
    archived = payload.bundle_backend
    requested = payload.config.backend
    if requested is not None and requested != archived:
        raise BundleBackendMismatchError(payload.bundle_path, archived, requested)
    return archived


def reconstruct(
    payload: InferencePayload, *, on_backend_loaded: Callable[[ModuleType], None] | None = None
) -> Reconstruction:
    """Reconstruct ``payload.data`` with the bundle's backend; returns its
    :class:`Reconstruction`."""
    name = check_inference_backend(payload)
    module = _load(name, on_backend_loaded)
    from ptycho_core.workflow import Reconstruction

    execution = _resolved_execution(payload.execution, name)
    config = payload.config
    if config.backend is None:
        config = dataclasses.replace(config, backend=name)
    logger.info("reconstructing with the %s backend", name)
    start = time.perf_counter()
    result = module.reconstruct(config, execution, data=payload.data)
    result = _check_result(result, Reconstruction, name, "reconstruct")
    result.timings.setdefault("total_s", time.perf_counter() - start)
    return result
