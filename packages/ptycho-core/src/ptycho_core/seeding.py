"""Framework-neutral randomness for training (``specs/training.md``, "Seeding and determinism").

Both backends start from the same initial weights and see the training groups in the same
order, so one seed trains the same network in PyTorch and in TensorFlow:

* :func:`initial_weights` draws every convolution of the layer table
  (:func:`ptycho_core.architecture.conv_layers`) from one seeded NumPy generator — Glorot-uniform
  kernels, zero biases — and adds the scale and probe weights, in the canonical layout of
  :mod:`ptycho_core.convert` (ADR-002 names, torch axis order).
* :func:`batch_order` is the permutation of the training groups for one epoch, keyed by
  ``(seed, epoch)`` only, so a resumed run replays the remaining epochs exactly.

Nothing here imports a framework.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ptycho_core.architecture import conv_layers

__all__ = ["INIT_STREAM", "ORDER_STREAM", "batch_order", "glorot_limit", "initial_weights"]

#: Sub-stream tags mixed into the seed, so these generators never repeat the draws of the
#: data-preparation generators that use the same seed (``specs/configuration.md``).
INIT_STREAM = 0x1217_0001
ORDER_STREAM = 0x1217_0002


def _seed(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0")
    return int(value)


def glorot_limit(in_channels: int, out_channels: int, kernel: int = 3) -> float:
    """``sqrt(6 / (fan_in + fan_out))`` with ``fan = channels · kernel²`` (Glorot uniform)."""
    area = kernel * kernel
    return math.sqrt(6.0 / (area * in_channels + area * out_channels))


def _starts_at_zero(name: str) -> bool:
    """The physics stages' heads start at zero, so an untrained stage is three plain data
    projections (``specs/model.md``); they draw nothing from the stream."""
    return name.startswith("stage") and name.endswith("_head")


def initial_weights(
    model_config: Any,
    seed: int,
    *,
    probe: np.ndarray | None = None,
    intensity_scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """The initial weights of the model for ``model_config`` drawn from
    ``numpy.random.default_rng([seed, INIT_STREAM])``.

    Returns ``{name: float32 array}`` in ADR-002 order: per conv ``<name>.weight``
    ``(out, in, 3, 3)`` drawn from ``U(−l, l)``, ``l`` = :func:`glorot_limit` (layers drawn in the
    table's row order, each kernel in C order; the physics stages' heads are zeros and draw
    nothing), and ``<name>.bias`` ``(out,)`` zeros; then
    ``log_intensity_scale`` ``()`` = ``log(intensity_scale)`` and ``probe_real``/``probe_imag``
    ``(N, N)`` from ``probe`` (the normalised probe; ones when None)."""
    rng = np.random.default_rng([_seed(seed, "seed"), INIT_STREAM])
    out: dict[str, np.ndarray] = {}
    for row in conv_layers(model_config):
        shape = (row.out_channels, row.in_channels, 3, 3)
        if _starts_at_zero(row.name):
            out[f"{row.name}.weight"] = np.zeros(shape, np.float32)
        else:
            limit = glorot_limit(row.in_channels, row.out_channels)
            out[f"{row.name}.weight"] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
        out[f"{row.name}.bias"] = np.zeros(row.out_channels, np.float32)
    s = float(intensity_scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"intensity_scale={intensity_scale!r} must be finite and > 0")
    out["log_intensity_scale"] = np.asarray(math.log(s), np.float32)
    n = int(model_config.N)
    p = np.ones((n, n), np.complex64) if probe is None else np.asarray(probe, np.complex64)
    if p.shape != (n, n):
        raise ValueError(f"probe shape {p.shape} does not match N={n}")
    out["probe_real"] = np.ascontiguousarray(p.real, np.float32)
    out["probe_imag"] = np.ascontiguousarray(p.imag, np.float32)
    return out


def batch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order ``(n,) int64`` in which epoch ``epoch`` visits ``n`` training groups: a
    permutation from ``numpy.random.default_rng([seed, ORDER_STREAM, epoch])``. Batches are
    consecutive runs of ``batch_size`` indices (the last one may be short); they never cross an
    epoch."""
    count = _seed(n, "n")
    rng = np.random.default_rng([_seed(seed, "seed"), ORDER_STREAM, _seed(epoch, "epoch")])
    return rng.permutation(count).astype(np.int64)
