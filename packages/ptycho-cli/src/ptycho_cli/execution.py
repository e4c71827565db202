"""Execution-config helpers shared by every ``ptycho`` command (ADR-003, ``specs/cli.md``).

Commands never build a :class:`~ptycho_core.config.PyTorchExecutionConfig` by hand: they call
:func:`add_execution_arguments` on their parser and :func:`execution_overrides` (only the fields
the user actually gave, for the factories' precedence rules) or :func:`build_execution_config`
(a full config) on the parsed arguments.

Deprecated flags are mapped with a :class:`DeprecationWarning`: ``--device X`` → ``--accelerator
X`` and ``--disable_mlflow`` → ``--logger none``. The flag choices are the enumerations of
:mod:`ptycho_core.config`. Nothing here imports a deep-learning framework;
:func:`resolve_accelerator` probes torch lazily, and only when it is installed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ptycho_core.backends import DEFAULT_BACKEND, backend_info
from ptycho_core.config import (
    ACCELERATORS,
    CHECKPOINT_MODES,
    LOGGER_BACKENDS,
    PRECISIONS,
    SCHEDULERS,
    PyTorchExecutionConfig,
)

__all__ = [
    "EXECUTION_FLAGS",
    "add_execution_arguments",
    "execution_overrides",
    "build_execution_config",
    "resolve_accelerator",
    "parse_devices",
]

logger = logging.getLogger(__name__)

#: argparse ``dest`` → PyTorchExecutionConfig field.
EXECUTION_FLAGS: dict[str, str] = {
    "accelerator": "accelerator",
    "devices": "devices",
    "strategy": "strategy",
    "deterministic": "deterministic",
    "num_workers": "num_workers",
    "learning_rate": "learning_rate",
    "scheduler": "scheduler",
    "accumulate_grad_batches": "accum_steps",
    "gradient_clip_val": "gradient_clip_val",
    "enable_checkpointing": "enable_checkpointing",
    "checkpoint_save_top_k": "checkpoint_save_top_k",
    "checkpoint_monitor": "checkpoint_monitor_metric",
    "checkpoint_mode": "checkpoint_mode",
    "early_stop_patience": "early_stop_patience",
    "logger": "logger_backend",
    "inference_batch_size": "inference_batch_size",
    "precision": "precision",
    "compile": "compile",
    "num_nodes": "num_nodes",
}


def parse_devices(text: str) -> int | str | list[int]:
    """``--devices`` value: ``auto``, an integer (``-1`` = all) or a comma list of indices."""
    text = text.strip()
    if text == "auto":
        return "auto"
    try:
        if "," in text:
            return [int(part) for part in text.split(",") if part.strip()]
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid --devices {text!r}: expected auto, an integer (-1 = all) or a list like 0,1"
        ) from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def add_execution_arguments(parser: argparse.ArgumentParser, *, training: bool = True) -> None:
    """Add the ADR-003 runtime flags. Every default is ``None`` (= "not given"), so the factories
    can tell a user's choice from a default. ``training=False`` omits training-only flags."""
    g = parser.add_argument_group("execution (runtime, never science)")
    g.add_argument(
        "--accelerator",
        choices=ACCELERATORS,
        default=None,
        help="hardware to run on (default auto: cuda, then mps, then cpu)",
    )
    g.add_argument(
        "--devices",
        type=parse_devices,
        default=None,
        metavar="N|auto|I,J",
        help="number of devices, -1 for all, or a comma list of device indices",
    )
    g.add_argument("--strategy", default=None, help="Lightning strategy, e.g. auto, ddp")
    g.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="deterministic algorithms (default on)",
    )
    g.add_argument(
        "--num-workers",
        type=int,
        default=None,
        metavar="N",
        help="data-loader worker processes (default 0)",
    )
    g.add_argument(
        "--inference-batch-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="groups per inference batch (default 64)",
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="32-true (default), bf16-mixed or 16-mixed (a GPU only); TensorFlow: the Keras "
        "mixed-precision policy",
    )
    g.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile the model: torch.compile (PyTorch) or XLA (TensorFlow, needs "
        "--no-deterministic for training); default off",
    )
    g.add_argument(
        "--num-nodes",
        type=positive_int,
        default=None,
        metavar="N",
        help="machines the run spans (PyTorch: Lightning DDP over N nodes × --devices; default 1)",
    )
    g.add_argument(
        "--logger",
        choices=LOGGER_BACKENDS,
        default=None,
        help="training metrics logger (default csv; mlflow is never required)",
    )
    if training:
        g.add_argument(
            "--learning-rate",
            type=positive_float,
            default=None,
            metavar="LR",
            help="Adam learning rate (default 1e-3)",
        )
        g.add_argument(
            "--scheduler",
            choices=SCHEDULERS,
            default=None,
            help="learning-rate schedule (default cosine: decay to 1e-4 over the epochs)",
        )
        g.add_argument(
            "--accumulate-grad-batches",
            type=positive_int,
            default=None,
            metavar="K",
            help="accumulate gradients over K batches (default 1)",
        )
        g.add_argument(
            "--gradient-clip-val",
            type=positive_float,
            default=None,
            metavar="V",
            help="clip gradient norm at V (default off)",
        )
        g.add_argument(
            "--enable-checkpointing",
            "--disable-checkpointing",
            dest="enable_checkpointing",
            action=_EnableDisable,
            default=None,
            help="keep the best checkpoints during training (default enabled)",
        )
        g.add_argument(
            "--checkpoint-save-top-k",
            type=int,
            default=None,
            metavar="K",
            help="checkpoints kept (-1 = all; default 1)",
        )
        g.add_argument(
            "--checkpoint-monitor",
            default=None,
            metavar="METRIC",
            help="metric that ranks checkpoints (default val_loss)",
        )
        g.add_argument(
            "--checkpoint-mode",
            choices=CHECKPOINT_MODES,
            default=None,
            help="whether a lower or higher monitored metric is better (default min)",
        )
        g.add_argument(
            "--early-stop-patience",
            type=positive_int,
            default=None,
            metavar="E",
            help="stop after E epochs without improvement (default 5)",
        )
    d = parser.add_argument_group("deprecated")
    d.add_argument("--device", default=None, help=argparse.SUPPRESS)
    d.add_argument(
        "--disable_mlflow",
        "--disable-mlflow",
        action="store_true",
        default=False,
        help=argparse.SUPPRESS,
    )


class _EnableDisable(argparse.Action):
    """``--enable-X`` stores True, ``--disable-X`` stores False."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, not str(option_string).startswith("--disable"))


def _deprecated(message: str, warn: Callable[[str], None] | None) -> None:
    warnings.warn(message, DeprecationWarning, stacklevel=3)
    if warn is not None:
        warn(message)


def _map_device(value: str) -> tuple[str, list[int] | None]:
    """``--device`` values of the old scripts: cpu, cuda, cuda:1, gpu, mps."""
    name, _, index = value.partition(":")
    name = name.strip().lower()
    if name not in ACCELERATORS:
        raise ValueError(
            f"--device {value!r}: unknown device; use --accelerator with one of "
            f"{', '.join(ACCELERATORS)}"
        )
    if index:
        try:
            return name, [int(index)]
        except ValueError:
            raise ValueError(f"--device {value!r}: device index must be an integer") from None
    return name, None


def execution_overrides(
    args: argparse.Namespace, warn: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Execution fields the user gave on the command line (no defaults), deprecated flags mapped.

    ``warn`` receives each deprecation message so the CLI can print it (a DeprecationWarning is
    always issued as well). ``--quiet`` turns the progress bar off.
    """
    out: dict[str, Any] = {}
    for dest, field in EXECUTION_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            out[field] = value
    device = getattr(args, "device", None)
    if device is not None:
        accel, devices = _map_device(device)
        _deprecated(
            f"--device is deprecated; use --accelerator {accel}"
            + (f" --devices {devices[0]}" if devices else ""),
            warn,
        )
        if "accelerator" in out and out["accelerator"] != accel:
            raise ValueError(
                f"--device {device!r} conflicts with --accelerator "
                f"{out['accelerator']!r}; give only --accelerator"
            )
        out["accelerator"] = accel
        if devices is not None:
            out.setdefault("devices", devices)
    if getattr(args, "disable_mlflow", False):
        _deprecated("--disable_mlflow is deprecated; use --logger none", warn)
        if out.get("logger_backend", "none") != "none":
            raise ValueError(f"--disable_mlflow conflicts with --logger {out['logger_backend']}")
        out["logger_backend"] = "none"
    if getattr(args, "quiet", False):
        out["enable_progress_bar"] = False
    return out


def build_execution_config(
    args: argparse.Namespace,
    warn: Callable[[str], None] | None = None,
    base: PyTorchExecutionConfig | None = None,
) -> PyTorchExecutionConfig:
    """A full :class:`PyTorchExecutionConfig`: ``base`` (or the defaults) with the flags applied."""
    fields = (base or PyTorchExecutionConfig()).to_dict()
    fields.update(execution_overrides(args, warn))
    return PyTorchExecutionConfig.from_dict(fields)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _torch_accelerator(torch: ModuleType) -> str:
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def _tensorflow_accelerator(tf: ModuleType) -> str:
    return "cuda" if tf.config.list_physical_devices("GPU") else "cpu"


#: Framework module (the first of a backend's ``framework_modules``) → (probe, whether to import
#: the framework for the probe when it is installed but not imported yet).
_ACCELERATOR_PROBES: dict[str, tuple[Callable[[ModuleType], str], bool]] = {
    "torch": (_torch_accelerator, True),
    "tensorflow": (_tensorflow_accelerator, False),
}


def resolve_accelerator(accelerator: str, backend: str = DEFAULT_BACKEND) -> str:
    """Resolve ``auto`` to ``cuda``, ``mps`` or ``cpu``; other names pass through unchanged.

    For the PyTorch backend torch is imported here only if it is installed (and only when the
    answer is needed); for TensorFlow, ``auto`` is resolved by asking TensorFlow for GPUs, again
    only when TensorFlow is already imported (the backend imports it anyway). A framework that
    fails to answer means the CPU (``specs/cli.md``).
    """
    if accelerator != "auto":
        return accelerator
    framework = backend_info(backend).framework_modules[0]
    probe, may_import = _ACCELERATOR_PROBES.get(framework, (None, False))
    if probe is None:
        return "cpu"
    module = sys.modules.get(framework)
    if module is None and may_import and _installed(framework):
        module = importlib.import_module(framework)  # lazy: only when a run is about to start
    if module is None:
        return "cpu"
    try:
        return probe(module)
    except Exception as exc:  # a broken GPU stack means: run on the CPU
        logger.warning("could not ask %s for accelerators (%s); using the CPU", framework, exc)
        return "cpu"
