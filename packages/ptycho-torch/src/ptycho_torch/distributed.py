"""Multi-process inference for the PyTorch backend (``specs/training.md``, "Multi-device
inference").

Every rank groups the whole scan the same way (grouping is seeded), predicts the batches
``i ≡ rank (mod world_size)`` — the very batches one process would make — and stitches them
into its own canvas; then the stitchers' sums (values and weights) are added across ranks with
``torch.distributed.all_reduce`` and every rank divides. Stitching is a sum, so the result is
the one-process canvas up to the order of floating-point additions.

Processes: an existing process group is used as is (``torchrun``, a Lightning-launched run);
otherwise, when the execution asks for more than one device (``devices`` > 1 or a list, or
``num_nodes`` > 1), Lightning Fabric's DDP launcher starts the other ranks by re-running the
calling command (as ``strategy='ddp'`` training does) and sets up the group (gloo on CPU, NCCL
on CUDA).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ptycho_core.config import ExecutionConfig
from ptycho_core.engine import requested_devices
from ptycho_core.workflow import InferenceShard

__all__ = ["inference_shard", "sum_canvases"]

logger = logging.getLogger(__name__)


def sum_canvases(num: np.ndarray, wt: np.ndarray) -> None:
    """All-reduce (sum) the stitcher's complex128 value and float64 weight canvases in place
    across the ranks of the default process group (NCCL: through the current CUDA device)."""
    on_cuda = dist.get_backend() == "nccl"
    for arr in (num, wt):
        flat = torch.from_numpy(arr.reshape(-1).view(np.float64))  # shares arr's memory
        if on_cuda:
            dev = flat.to(torch.device("cuda", torch.cuda.current_device()))
            dist.all_reduce(dev)
            flat.copy_(dev.cpu())
        else:
            dist.all_reduce(flat)


def _launch(execution: ExecutionConfig) -> None:
    """Start (or join) the ranks with Lightning Fabric's DDP launcher."""
    from lightning.fabric import Fabric

    devices: Any = execution.devices
    if isinstance(devices, tuple):
        devices = list(devices)
    accelerator = "cuda" if execution.accelerator == "gpu" else execution.accelerator
    if execution.strategy not in ("auto", "ddp"):
        logger.info(
            "inference runs with strategy 'ddp' (execution.strategy = %r is for training)",
            execution.strategy,
        )
    fabric = Fabric(
        accelerator=accelerator,
        devices=devices,
        num_nodes=int(getattr(execution, "num_nodes", 1) or 1),
        strategy="ddp",
    )
    fabric.launch()


def inference_shard(execution: ExecutionConfig) -> InferenceShard | None:
    """This process's :class:`~ptycho_core.workflow.InferenceShard`, or None for one process.

    Uses the existing process group when there is one with more than one rank; starts one when
    :func:`ptycho_core.engine.requested_devices` is > 1; joins one from ``torchrun``'s
    environment (``WORLD_SIZE`` > 1) otherwise.
    """
    if not dist.is_available():
        if requested_devices(execution) > 1:
            raise RuntimeError(
                "multi-device inference needs torch.distributed, which this torch build lacks"
            )
        return None
    if not dist.is_initialized():
        if requested_devices(execution) > 1:
            _launch(execution)
        elif int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and "MASTER_ADDR" in os.environ:
            use_cuda = torch.cuda.is_available() and execution.accelerator != "cpu"
            if use_cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if use_cuda else "gloo")
        else:
            return None
    world = dist.get_world_size()
    if world == 1:
        return None
    rank = dist.get_rank()
    logger.info("inference rank %d of %d (%s)", rank, world, dist.get_backend())
    return InferenceShard(rank=rank, world_size=world, reduce=sum_canvases)
