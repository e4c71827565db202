"""ptycho-tf: the TensorFlow / Keras 3 backend of ptycho (``specs/packages.md``,
``specs/model.md``, ``specs/training.md``, ``specs/data-contracts.md``).

Modules mirror ``ptycho_torch``: :mod:`~ptycho_tf.model` (the Keras network),
:mod:`~ptycho_tf.physics` (differentiable physics ops, tested against ``ptycho_core.physics``),
:mod:`~ptycho_tf.training` (Keras ``fit``), :mod:`~ptycho_tf.bundle` (``wts.h5.zip`` weights),
:mod:`~ptycho_tf.workflows` (the hooks of :mod:`ptycho_core.engine`),
:mod:`~ptycho_tf.backend` (the backend entry point). Importing this package does not import
TensorFlow; the submodules do.
"""

from typing import Any

from ptycho_core.config import MIXED_DTYPES, PRECISIONS
from ptycho_core.runtime import ExecutionSupport
from ptycho_tf.__about__ import __version__

__all__ = [
    "HONOURED_EXECUTION_FIELDS",
    "HONOURED_VALUES",
    "KERAS_POLICIES",
    "SUPPORT",
    "__version__",
]

#: The :class:`~ptycho_core.config.ExecutionConfig` fields the TensorFlow backend honours
#: (``specs/tf-backend.md``); the others are logged as ignored when set away from their default.
HONOURED_EXECUTION_FIELDS: frozenset[str] = frozenset(
    {
        "learning_rate",
        "scheduler",
        "early_stop_patience",
        "enable_progress_bar",
        "enable_checkpointing",
        "inference_batch_size",
        "deterministic",
        "devices",
        "accelerator",
        "logger_backend",
        "checkpoint_monitor_metric",
        "checkpoint_mode",
        "precision",
        "compile",
    }
)
#: Honoured fields with a restricted set of values (the CSV history is always written).
HONOURED_VALUES: dict[str, tuple[Any, ...]] = {"logger_backend": ("csv", "none")}
#: ``ExecutionConfig.precision`` → the Keras dtype policy of the network's Keras layers (the
#: physics layers stay float32; ``specs/tf-backend.md``).
KERAS_POLICIES: dict[str, str] = {
    p: f"mixed_{MIXED_DTYPES[p]}" if p in MIXED_DTYPES else "float32" for p in PRECISIONS
}
#: What :func:`ptycho_core.runtime.check_execution` checks for this backend: one machine
#: (``num_nodes`` 1) and XLA (``compile``) only without op determinism.
SUPPORT = ExecutionSupport(
    "tensorflow",
    HONOURED_EXECUTION_FIELDS,
    HONOURED_VALUES,
    required_values={"num_nodes": (1,)},
    compile_needs_nondeterminism=True,
)
