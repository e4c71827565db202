"""Datasets, data loaders and the LightningDataModule (``specs/training.md``).

A batch is a dict of tensors: ``x`` ``(B, C, N, N)`` float32, the measured amplitude in model
units ``s·α·X`` (also the model input); ``offsets`` ``(B, C, 2)`` float32 ``(dx, dy)`` pixels
from the group centre; optionally ``Y`` ``(B, C, N, N)`` complex64 ground-truth patches.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from ptycho_core.seeding import batch_order

__all__ = [
    "EpochShuffleSampler",
    "GroupDataset",
    "grouped_to_tensors",
    "loader_kwargs",
    "PtychoDataModule",
]


def grouped_to_tensors(grouped: Any, *, with_ground_truth: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a prepared :class:`ptycho_core.grouping.GroupedData` (already scaled by
    :func:`ptycho_core.workflow.prepare_training`, so ``diffraction`` is ``s·α·X``).

    Returns ``x`` ``(G, C, N, N)`` float32, ``offsets`` ``(G, C, 2)`` float32 and, when asked
    for and present, ``Y`` ``(G, C, N, N)`` complex64 ground-truth patches. A missing ``Y`` is
    reported once, by :meth:`ptycho_core.training.LossSpec.check_ground_truth`.
    """
    out = {
        "x": torch.from_numpy(np.ascontiguousarray(np.asarray(grouped.diffraction, np.float32))),
        "offsets": torch.from_numpy(np.ascontiguousarray(np.asarray(grouped.offsets, np.float32))),
    }
    y = getattr(grouped, "Y", None) if with_ground_truth else None
    if y is not None:
        out["Y"] = torch.from_numpy(np.ascontiguousarray(np.asarray(y, np.complex64)))
    return out


class GroupDataset(Dataset):
    """Map-style dataset over groups; item ``g`` is ``{key: tensor[g]}``."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"tensors of different lengths: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["x"])

    def __getitem__(self, g: int) -> dict[str, torch.Tensor]:
        return {k: v[g] for k, v in self.tensors.items()}


class EpochShuffleSampler(RandomSampler):
    """The order of :func:`ptycho_core.seeding.batch_order` ``(n, seed, epoch)``: the same
    batches as the TensorFlow backend, reproducible per epoch, so a run resumed from a
    checkpoint sees the same batches as an uninterrupted one. Lightning calls
    :meth:`set_epoch` each epoch (and swaps in a seeded DistributedSampler under DDP)."""

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        yield from batch_order(len(self.data_source), self.seed, self.epoch).tolist()


def loader_kwargs(execution: Any, *, batch_size: int) -> dict[str, Any]:
    """DataLoader keyword arguments from a :class:`ptycho_core.config.ExecutionConfig`.

    ``persistent_workers`` and ``prefetch_factor`` are passed only with ``num_workers > 0``
    (torch rejects them otherwise).
    """
    kw: dict[str, Any] = {
        "batch_size": int(batch_size),
        "num_workers": int(execution.num_workers),
        "pin_memory": bool(execution.pin_memory),
    }
    if execution.num_workers > 0:
        kw["persistent_workers"] = bool(execution.persistent_workers)
        if execution.prefetch_factor is not None:
            kw["prefetch_factor"] = int(execution.prefetch_factor)
    return kw


class PtychoDataModule(pl.LightningDataModule):
    """Train/validation loaders over already prepared tensors (see :func:`grouped_to_tensors`)."""

    def __init__(
        self,
        train: dict[str, torch.Tensor],
        val: dict[str, torch.Tensor] | None,
        *,
        batch_size: int,
        execution: Any,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.train_set = GroupDataset(train)
        self.val_set = GroupDataset(val) if val is not None and len(val["x"]) > 0 else None
        self.batch_size, self.execution, self.seed = int(batch_size), execution, int(seed)

    @property
    def has_validation(self) -> bool:
        return self.val_set is not None

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            sampler=EpochShuffleSampler(self.train_set, self.seed),
            **loader_kwargs(self.execution, batch_size=self.batch_size),
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return DataLoader(
            self.val_set, shuffle=False, **loader_kwargs(self.execution, batch_size=self.batch_size)
        )
