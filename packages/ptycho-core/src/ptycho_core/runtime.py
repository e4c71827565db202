"""What an :class:`~ptycho_core.config.ExecutionConfig` means at run time, framework-free
(``specs/configuration.md``): the devices a run uses, whether a backend can honour the settings
on them, and which settings it ignores.

A backend lists the devices its framework sees — a mapping ``kind → device names`` in order of
preference for ``accelerator='auto'``, e.g. ``{"gpu": ["/device:GPU:0"], "cpu":
["/device:CPU:0"]}`` — and declares an :class:`ExecutionSupport`; the rules live here once:

* :func:`device_kind` — ``auto`` is the first kind with a device, ``cuda`` means ``gpu``;
* :func:`select_devices` — the devices of ``accelerator`` × ``devices``, never a silent fallback;
  :func:`first_device` — the one device of the accelerator's kind a process predicts on;
* :func:`usable_logger` — an optional metrics logger only when its package is installed;
* :func:`peak_rss_bytes` — this process's own peak resident memory (benchmarks, memory tests);
* :func:`check_execution` — ``precision`` against the device kind, ``compile`` against
  ``deterministic`` where the backend needs that, values a backend cannot honour (each a
  :class:`~ptycho_core.errors.ConfigError`), and the settings it ignores (logged, returned).

Nothing here imports a framework.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import resource
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ptycho_core.config import FP16_DEVICE_KINDS, ExecutionConfig, ignored_execution_fields
from ptycho_core.errors import ConfigError

__all__ = [
    "ExecutionSupport",
    "check_execution",
    "device_kind",
    "first_device",
    "peak_rss_bytes",
    "select_devices",
    "usable_logger",
]

logger = logging.getLogger(__name__)


def peak_rss_bytes() -> int:
    """The peak resident memory of this process's program, in bytes.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of the address space this
    program started with (a new ``exec`` starts a new one). Not ``ru_maxrss``: Linux carries it
    over fork and exec, so a child started by a large parent reports the parent's peak and a
    memory measurement in a fresh process sees nothing below it. Elsewhere ``ru_maxrss``
    (KiB on BSD, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


#: Accelerator names that mean another kind of device.
_ALIASES = {"cuda": "gpu"}


def device_kind(accelerator: str, present: Mapping[str, Sequence[str]]) -> str:
    """The kind of device ``accelerator`` means: ``auto`` → the first kind in ``present`` that
    has a device (``cpu`` when none has), ``cuda`` → ``gpu``, other names unchanged (whether the
    kind is there is :func:`select_devices`'s question)."""
    if accelerator == "auto":
        return next((kind for kind, names in present.items() if names), "cpu")
    return _ALIASES.get(accelerator, accelerator)


def select_devices(
    execution: ExecutionConfig, present: Mapping[str, Sequence[str]], backend: str
) -> list[str]:
    """The device names a run on ``backend`` uses: the kind of ``execution.accelerator``
    (:func:`device_kind`), then ``devices``: ``n`` the first ``n``, ``-1``/``"auto"`` all, a
    tuple those indices. A kind the backend does not list is a :class:`ConfigError`; devices
    that are not there are a ``RuntimeError`` naming what was found."""
    acc, want = execution.accelerator, execution.devices
    kind = device_kind(acc, present)
    if kind not in present:
        allowed = ", ".join(["auto", *present, *(a for a, k in _ALIASES.items() if k in present)])
        raise ConfigError(
            f"ExecutionConfig.accelerator = {acc!r} is invalid for the {backend} backend; "
            f"allowed: {allowed}"
        )
    names = list(present[kind])
    if isinstance(want, tuple):
        index = list(want)
    else:
        index = list(range(len(names) if want in (-1, "auto") else int(want)))
    if not names or max(index, default=0) >= len(names):
        raise RuntimeError(
            f"accelerator={acc!r}, devices={want!r} requested; the {backend} backend sees "
            f"{len(names)} {kind} device(s): {names}"
        )
    return [names[i] for i in index]


def first_device(accelerator: str, present: Mapping[str, Sequence[str]], backend: str) -> str:
    """The first device of the kind ``accelerator`` means (:func:`select_devices` with one
    device): where one process, or one rank of a multi-process inference, predicts."""
    return select_devices(ExecutionConfig(accelerator=accelerator), present, backend)[0]


#: The packages (any one of them) each optional ``logger_backend`` needs.
_LOGGER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}


def usable_logger(name: str) -> str:
    """``logger_backend`` as a run can honour it: ``tensorboard`` / ``mlflow`` when one of
    their packages is installed, else ``csv`` with a logged warning (neither is ever a
    dependency); ``csv`` and ``none`` unchanged."""
    needs = _LOGGER_PACKAGES.get(name, ())
    if not needs or any(importlib.util.find_spec(m) is not None for m in needs):
        return name
    logger.warning("logger_backend=%r selected but %s is not installed; using CSV", name, name)
    return "csv"


@dataclass(frozen=True)
class ExecutionSupport:
    """What a backend does with each :class:`ExecutionConfig` field.

    ``honoured``: the fields it honours (None: all); the others set away from their default are
    ignored and reported. ``honoured_values``: honoured fields whose other values are ignored
    (e.g. a logger it cannot run). ``required_values``: fields whose other values it cannot
    honour at all — a :class:`ConfigError` (e.g. ``num_nodes`` for a single-machine backend).
    ``compile_needs_nondeterminism``: ``compile=True`` is refused with ``deterministic=True``
    for training (TensorFlow: XLA is not used under op determinism)."""

    backend: str
    honoured: Collection[str] | None = None
    honoured_values: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    required_values: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    compile_needs_nondeterminism: bool = False


def check_execution(
    execution: ExecutionConfig,
    support: ExecutionSupport,
    present: Mapping[str, Sequence[str]],
    *,
    training: bool = True,
) -> dict[str, Any]:
    """Check that ``support.backend`` can run ``execution`` on the kind of device its
    ``accelerator`` means among the devices ``present`` (:func:`device_kind`) and return the
    settings it ignores, logged (INFO when ``training``, else DEBUG).

    :class:`ConfigError` (``<Class>.<field> = <value> is invalid; allowed: …``) for
    ``precision='16-mixed'`` on a kind outside :data:`~ptycho_core.config.FP16_DEVICE_KINDS`
    (the CPU, a TPU), a value outside ``support.required_values`` and, for ``training``,
    ``compile=True`` with ``deterministic=True`` where ``support.compile_needs_nondeterminism``.
    """
    name, kind = type(execution).__name__, device_kind(execution.accelerator, present)
    if execution.precision == "16-mixed" and kind not in FP16_DEVICE_KINDS:
        raise ConfigError(
            f"{name}.precision = '16-mixed' is invalid on a {kind} device for the "
            f"{support.backend} backend; allowed: '32-true', 'bf16-mixed' (float16 mixed "
            f"precision needs a device of kind {' or '.join(FP16_DEVICE_KINDS)})"
        )
    for key, values in support.required_values.items():
        if getattr(execution, key) not in values:
            raise ConfigError(
                f"{name}.{key} = {getattr(execution, key)!r} is invalid for the "
                f"{support.backend} backend; allowed: {' or '.join(map(repr, values))}"
            )
    if training and support.compile_needs_nondeterminism and execution.compile:
        if execution.deterministic:
            raise ConfigError(
                f"{name}.compile = True is invalid with deterministic=True for the "
                f"{support.backend} backend; allowed: compile=False, or deterministic=False "
                "(its compiler is not used when deterministic ops are enforced)"
            )
    honoured = support.honoured
    if honoured is None:
        honoured = [f.name for f in dataclasses.fields(execution)]
    ignored = ignored_execution_fields(execution, honoured, honoured_values=support.honoured_values)
    if ignored:
        level = logging.INFO if training else logging.DEBUG
        logger.log(level, "the %s backend ignores these settings: %s", support.backend, ignored)
    return ignored
