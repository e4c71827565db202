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

from ptycho_tf.__about__ import __version__

__all__ = ["HONOURED_EXECUTION_FIELDS", "HONOURED_VALUES", "__version__"]

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
    }
)
#: Honoured fields with a restricted set of values (the CSV history is always written).
HONOURED_VALUES: dict[str, tuple[Any, ...]] = {"logger_backend": ("csv", "none")}
