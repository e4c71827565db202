"""Where and how the TensorFlow backend runs (``specs/tf-backend.md``): the devices TensorFlow
sees, the ``tf.distribute`` strategy over the selected ones (the choice is
:func:`ptycho_core.runtime.select_devices`'s) and the Keras dtype policy of
``ExecutionConfig.precision``.
"""

from __future__ import annotations

import logging
from typing import Any

import tensorflow as tf

from ptycho_core import runtime
from ptycho_tf import KERAS_POLICIES
from ptycho_tf.bundle import NAME

__all__ = ["resolve_strategy", "set_precision", "tf_devices"]

log = logging.getLogger(__name__)


def tf_devices() -> dict[str, list[str]]:
    """The devices TensorFlow sees, by kind in the order ``auto`` prefers, for
    :func:`ptycho_core.runtime.select_devices` (Metal GPUs serve ``mps``)."""
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    return {
        "gpu": gpus,
        "mps": gpus,
        "cpu": [d.name for d in tf.config.list_logical_devices("CPU")],
    }


def resolve_strategy(execution: Any) -> tf.distribute.Strategy:
    """``OneDeviceStrategy`` for one selected device
    (:func:`ptycho_core.runtime.select_devices`), ``MirroredStrategy`` over several."""
    chosen = runtime.select_devices(execution, tf_devices(), NAME)
    if len(chosen) == 1:
        return tf.distribute.OneDeviceStrategy(chosen[0])
    log.info("training on %d devices with MirroredStrategy: %s", len(chosen), chosen)
    return tf.distribute.MirroredStrategy(devices=chosen)


def set_precision(models: Any, precision: str) -> None:
    """Give the network's Keras layers (convolutions, pooling, activations) the dtype policy of
    ``precision`` (:data:`ptycho_tf.KERAS_POLICIES`). ptycho_tf's own layers (the physics, complex
    maths) keep float32, and Keras' global policy is never changed (``specs/tf-backend.md``)."""
    for layer in models.autoencoder.layers:
        if not type(layer).__module__.startswith("ptycho_tf."):
            layer.dtype_policy = KERAS_POLICIES[precision]
