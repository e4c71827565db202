"""``ptycho.tf_helper``: the legacy stitching call Ptychodus makes (``specs/ptychodus.md``).

Despite the name this module imports no framework itself; :func:`reassemble_position` runs the
reconstruction on the backend the bundle records (TensorFlow or PyTorch), which is imported then.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any

import numpy as np

from ptycho._model import DeferredObject, Offsets

__all__ = ["reassemble_position"]

logger = logging.getLogger(__name__)


def reassemble_position(obj_tensor: Any, global_offsets: Any, M: int = 10) -> np.ndarray:
    """The stitched object ``(H, W) complex64`` on the grid of the scan's ``objectGuess``.

    ``obj_tensor``: what ``model.predict`` returned; ``global_offsets``: the loader's.
    ``M``: the stitch crop in pixels (each patch contributes its central ``M × M``); used when
    even and ``0 < M <= N``, else the bundle's default crop is used (logged).
    """
    if not isinstance(obj_tensor, DeferredObject):
        raise TypeError(
            "reassemble_position stitches what ptycho-ptychodus's model.predict returned; got "
            f"{type(obj_tensor).__name__}"
        )
    if not isinstance(global_offsets, Offsets) or global_offsets.request is not obj_tensor.request:
        raise ValueError(
            "reassemble_position: global_offsets must be the loader's for the predicted data"
        )
    n = obj_tensor.model.model_config.N
    crop: int | None = None
    if isinstance(M, numbers.Integral) and not isinstance(M, bool) and M % 2 == 0 and 0 < M <= n:
        crop = int(M)
    else:
        logger.info(
            "reassemble_position: M = %r is not an even stitch crop with 0 < M <= N = %d; "
            "using the default crop",
            M,
            n,
        )
    result = obj_tensor.model.reconstruct(obj_tensor.request, crop)
    return np.asarray(result.object, dtype=np.complex64)
