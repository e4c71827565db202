"""The model handle and the deferred data that Ptychodus's inference sequence passes around
(``specs/ptychodus.md``).

Ptychodus's child calls, in order: ``loader.load`` (→ :class:`PtychoDataContainer`),
``model.predict([X * s, local_offsets])`` (→ :class:`DeferredObject`) and
``tf_helper.reassemble_position(obj, global_offsets, M)``. The work — grouping, prediction in
chunks and stitching on the input object's grid — is ``ptycho_core.engine.reconstruct`` through
the backend the bundle records, run once in :meth:`BundleModel.reconstruct`. The handles below
only carry the request between those calls; turning one into an array is a ``TypeError`` that
says so. The framework is imported only there (``load_backend``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptycho.raw_data import GroupingRequest
from ptycho_core.config import InferenceConfig, ModelConfig
from ptycho_core.io import ScanData
from ptycho_core.workflow import Reconstruction

__all__ = [
    "BundleModel",
    "DeferredObject",
    "DeferredPatterns",
    "Offsets",
    "PtychoDataContainer",
]

logger = logging.getLogger(__name__)

_DEFERRED = (
    "is a deferred handle of ptycho-ptychodus (grouping, prediction and stitching run together "
    "in ptycho.tf_helper.reassemble_position); use RawData.to_scan() and ptycho_core for arrays"
)
#: Relative tolerance between the factor X was multiplied by and the bundle's scale.
_SCALE_RTOL = 1e-6


class _Handle:
    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(f"{type(self).__name__} {_DEFERRED}")


@dataclass(eq=False)
class DeferredPatterns(_Handle):
    """``container.X``: the grouped patterns of ``request``, times ``scale`` (``X * s``)."""

    request: GroupingRequest
    scale: float = 1.0

    def __mul__(self, factor: Any) -> DeferredPatterns:
        f = float(factor)
        if not math.isfinite(f) or f <= 0:
            raise ValueError(f"X * {factor!r}: expected a finite scale > 0")
        return DeferredPatterns(self.request, self.scale * f)

    __rmul__ = __mul__


@dataclass(eq=False)
class Offsets(_Handle):
    """``container.local_offsets`` / ``global_offsets`` of ``request``."""

    request: GroupingRequest
    kind: str


@dataclass(eq=False)
class PtychoDataContainer:
    """What ``ptycho.loader.load`` returns: ``X``, ``local_offsets``, ``global_offsets`` (deferred
    handles) and ``probe`` ``(N, N) complex64``."""

    X: DeferredPatterns
    local_offsets: Offsets
    global_offsets: Offsets
    probe: np.ndarray

    @property
    def scan(self) -> ScanData:
        """The scan behind the handles (amplitudes)."""
        return self.X.request.raw.to_scan()


@dataclass(eq=False)
class DeferredObject(_Handle):
    """What :meth:`BundleModel.predict` returns; :func:`ptycho.tf_helper.reassemble_position`
    turns it into the stitched object."""

    model: BundleModel
    request: GroupingRequest


@dataclass(eq=False)
class BundleModel:
    """A verified ptycho bundle (``path``, ``manifest``) as the model Ptychodus holds.

    ``backend``: the backend the bundle records (inference runs on it); ``model_config`` and
    ``intensity_scale`` ``s`` are the manifest's.
    """

    path: Path
    manifest: dict[str, Any]
    backend: str
    model_config: ModelConfig
    intensity_scale: float

    def predict(self, inputs: Any, **kwargs: Any) -> DeferredObject:
        """``predict([X * s, local_offsets])`` → a :class:`DeferredObject`.

        ``X`` must come from ``ptycho.loader.load`` and be scaled by the bundle's ``s`` (what
        ``ptycho.params.get('intensity_scale')`` holds after ``load_inference_bundle``); the
        engine applies ``s`` itself, so another factor is an error rather than a silent change.
        """
        try:
            x, local = inputs[0], inputs[1]
        except (TypeError, IndexError, KeyError):
            raise TypeError(
                "predict expects [X * intensity_scale, local_offsets] from ptycho.loader.load"
            ) from None
        if not isinstance(x, DeferredPatterns) or not isinstance(local, Offsets):
            raise TypeError(
                "predict expects [X * intensity_scale, local_offsets] from ptycho.loader.load, "
                f"got [{type(x).__name__}, {type(local).__name__}]"
            )
        if local.request is not x.request:
            raise ValueError("predict: X and local_offsets come from different loader.load calls")
        s = self.intensity_scale
        if abs(x.scale - s) > _SCALE_RTOL * s:
            raise ValueError(
                f"predict: X was multiplied by {x.scale!r}, but the bundle {self.path} applies its "
                f"own intensity scale s = {s!r}; multiply by ptycho.params.get('intensity_scale')"
            )
        if kwargs:
            logger.info("predict: ignoring %s", sorted(kwargs))
        return DeferredObject(self, x.request)

    def inference_config(self, request: GroupingRequest, stitch_crop: int | None) -> Any:
        """The ``ptycho_core`` :class:`InferenceConfig` for ``request`` (logs what it changes)."""
        mc = self.model_config
        if request.gridsize is not None and request.gridsize != mc.gridsize:
            logger.warning(
                "Ptychodus GridSize = %d ignored: the bundle %s was trained with gridsize %d, "
                "which inference uses",
                request.gridsize,
                self.path,
                mc.gridsize,
            )
        if request.nsamples != 1:
            logger.info(
                "Ptychodus NumSamples = %d ignored (every position is reconstructed)",
                request.nsamples,
            )
        neighbors = max(request.K, mc.C - 1, 1)
        if neighbors != request.K:
            logger.info(
                "Ptychodus NumNearestNeighbors = %d changed to %d (gridsize %d needs >= %d)",
                request.K,
                neighbors,
                mc.gridsize,
                max(mc.C - 1, 1),
            )
        return InferenceConfig(
            model=mc,
            model_path=self.path,
            neighbor_count=neighbors,
            stitch_crop=stitch_crop,
            backend=self.backend,
        )

    def reconstruct(self, request: GroupingRequest, stitch_crop: int | None) -> Reconstruction:
        """Reconstruct the scan of ``request`` with the bundle's backend
        (``load_backend(backend).reconstruct``); the object lies on the grid of the scan's
        ``objectGuess`` when it has one."""
        from ptycho_core.backends import load_backend

        config = self.inference_config(request, stitch_crop)
        backend = load_backend(self.backend)
        result: Reconstruction = backend.reconstruct(config, data=request.raw.to_scan())
        return result
