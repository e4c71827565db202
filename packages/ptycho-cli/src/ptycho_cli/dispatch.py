"""Backend dispatch (``specs/cli.md``, ``specs/packages.md``): run a payload on the
backend it names, never another one.

- :func:`train` uses ``payload.config.backend``; :func:`reconstruct` uses the backend recorded in
  the bundle's manifest. A ``--backend`` that contradicts the bundle raises
  :class:`~ptycho_core.errors.BundleBackendMismatchError` before any framework is imported.
- A backend that is not installed raises :class:`~ptycho_core.errors.BackendUnavailableError`
  ("<Name> backend selected … pip install …") from :func:`ptycho_core.backends.load_backend`.
- :func:`load_bundle` rebuilds a bundle's model with the backend its manifest names (the
  module's ``load_bundle``; ``ptycho inspect --verify``).
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
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from ptycho_cli.execution import resolve_accelerator
from ptycho_cli.factories import InferencePayload, TrainingPayload
from ptycho_core.backends import load_backend
from ptycho_core.errors import BundleBackendMismatchError

if TYPE_CHECKING:
    from ptycho_core.engine import TrainResult
    from ptycho_core.workflow import Reconstruction

__all__ = ["train", "reconstruct", "check_inference_backend", "load_bundle"]

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
    payload: TrainingPayload,
    *,
    on_backend_loaded: Callable[[ModuleType], None] | None = None,
    resume_from: str | Path | None = None,
) -> TrainResult:
    """Train on ``payload.config.backend``; returns the backend's :class:`TrainResult`.

    ``on_backend_loaded(module)`` runs after the backend (and its framework) was imported and
    before it works (the CLI uses it to tame framework logging). ``resume_from``: a checkpoint
    of that backend to continue (passed as the backend module's ``resume_from`` keyword)."""
    from ptycho_core.engine import TrainResult  # framework-free; lazy keeps --help light

    name = payload.config.backend
    module = _load(name, on_backend_loaded)
    execution = _resolved_execution(payload.execution, name)
    logger.info("training with the %s backend", name)
    start = time.perf_counter()
    # the resume keyword only when resuming: a backend without it still trains
    resume: dict[str, Any] = {} if resume_from is None else {"resume_from": Path(resume_from)}
    result = module.train(
        payload.config,
        execution,
        train_data=payload.train_data,
        test_data=payload.test_data,
        **resume,
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
    :class:`Reconstruction`. With ``payload.adapt_epochs`` > 0 the backend first adapts a copy of
    the model to the scan (``adapt_epochs``, ``save_adapted``; ``specs/training.md``)."""
    name = check_inference_backend(payload)
    module = _load(name, on_backend_loaded)
    from ptycho_core.workflow import Reconstruction

    execution = _resolved_execution(payload.execution, name)
    config = payload.config
    if config.backend is None:
        config = dataclasses.replace(config, backend=name)
    logger.info("reconstructing with the %s backend", name)
    start = time.perf_counter()
    # adaptation keywords only when asked for: a backend without them still reconstructs
    adapt: dict[str, Any] = {}
    if payload.adapt_epochs:
        adapt = {"adapt_epochs": payload.adapt_epochs, "save_adapted": payload.save_adapted}
    result = module.reconstruct(config, execution, data=payload.data, **adapt)
    result = _check_result(result, Reconstruction, name, "reconstruct")
    result.timings.setdefault("total_s", time.perf_counter() - start)
    return result


def load_bundle(
    path: Any, backend: str, *, on_backend_loaded: Callable[[ModuleType], None] | None = None
) -> Any:
    """Rebuild the model of the bundle at ``path`` with ``backend`` (the manifest's): the
    backend module's ``load_bundle(path)`` (strict weights, scale check); returns its
    :class:`~ptycho_core.engine.LoadedBundle`. A backend module without ``load_bundle`` is a
    ``RuntimeError``."""
    module = _load(backend, on_backend_loaded)
    loader = getattr(module, "load_bundle", None)
    if loader is None:
        raise RuntimeError(
            f"{path}: the {backend} backend ({module.__name__}) cannot load bundles "
            "(no load_bundle); the weights cannot be verified"
        )
    return loader(path)
