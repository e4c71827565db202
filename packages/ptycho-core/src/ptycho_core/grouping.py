"""Grouping scan positions into sets of ``C = gridsize²`` neighbours (``specs/configuration.md``).

Frames and units: positions are ``(x, y)`` in object pixels (float). A group is a *seed*
position (channel 0) plus ``C − 1`` positions drawn without replacement from the seed's ``K``
nearest *other* positions (``K = neighbor_count``, KD-tree); the drawn members follow the seed
in order of increasing distance to it (ties by scan index). All randomness comes from one
``numpy.random.Generator(seed)``; the global RNG is never used. Everything is vectorised:
grouping 100,000 positions with gridsize 2 takes a fraction of a second
(``benchmarks/bench_grouping.py``).

Seeds: every position once, in order, when ``n_groups`` is None or equals ``M``; the first
``n_groups`` with ``sequential=True``; else a seeded random subset (sorted). ``n_groups > M``
needs ``oversample=True``: all positions once, then ``n_groups − M`` extra seeds drawn with
replacement (with gridsize > 1 they usually get different neighbours).

:class:`GroupedData` gathers the pattern stack lazily: ``diffraction`` and ``Y`` are built
(and cached) on first access, so ``subset()`` of a large scan only ever gathers its own rows.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.spatial import cKDTree

from ptycho_core.errors import DataContractError

if TYPE_CHECKING:  # pragma: no cover
    from ptycho_core.io import ScanData

__all__ = [
    "GroupedData",
    "cover_indices",
    "group_indices",
    "group_scan",
    "groups_from_indices",
    "make_rng",
]

logger = logging.getLogger(__name__)


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from an int seed (or ``None`` for fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _checked_n_groups(n_groups: Any) -> int:
    """``n_groups`` (not None) as an ``int``; ValueError unless it is an integer >= 1."""
    if isinstance(n_groups, bool) or int(n_groups) != n_groups or n_groups < 1:
        raise ValueError(f"n_groups = {n_groups!r} is invalid; allowed: an integer >= 1 or None")
    return int(n_groups)


def _seed_indices(
    m: int, n_groups: int | None, sequential: bool, oversample: bool, rng: np.random.Generator
) -> np.ndarray:
    if n_groups is None or n_groups == m:
        return np.arange(m, dtype=np.int64)
    n_groups = _checked_n_groups(n_groups)
    if n_groups > m:
        if not oversample:
            raise ValueError(
                f"n_groups = {n_groups} is more than the {m} scan positions; pass "
                "oversample=True to draw extra groups (seeds repeat), or n_groups <= M"
            )
        extra = rng.integers(0, m, size=n_groups - m, dtype=np.int64)
        return np.concatenate([np.arange(m, dtype=np.int64), extra])
    if sequential:
        return np.arange(n_groups, dtype=np.int64)
    return np.sort(rng.choice(m, size=n_groups, replace=False)).astype(np.int64)


def group_indices(
    positions: np.ndarray,
    gridsize: int,
    n_groups: int | None = None,
    neighbor_count: int = 6,
    seed: int | np.random.Generator | None = None,
    sequential: bool = False,
    oversample: bool = False,
) -> np.ndarray:
    """Scan indices of each group.

    Parameters
    ----------
    positions : (M, 2) float
        Scan positions ``(x, y)`` in object pixels.
    gridsize : int >= 1
        Groups have ``C = gridsize²`` members.
    n_groups : int or None
        Number of groups ``G`` (None: one per position).
    neighbor_count : int
        ``K``, the pool of nearest other positions members are drawn from; ``K >= C − 1``.
        With fewer than ``K + 1`` positions the pool is all other positions.
    seed : int, Generator or None
        The only source of randomness.
    sequential, oversample : bool
        See the module docstring.

    Returns
    -------
    (G, C) int64
        Channel 0 is the seed; the others by increasing distance to it (ties by index).
    """
    pos = np.asarray(positions, dtype=np.float64)
    c = _check_grouping_args(pos, gridsize, neighbor_count)
    m = pos.shape[0]
    rng = make_rng(seed)
    seeds = _seed_indices(m, n_groups, sequential, oversample, rng)
    if c == 1:
        return seeds[:, None]

    pool = _neighbour_pool(pos, seeds, neighbor_count)

    # C − 1 members without replacement: the first C − 1 of a random permutation of each row.
    pick = np.argsort(rng.random(pool.shape), axis=1)[:, : c - 1]
    return _seed_then_nearest(pos, seeds, np.take_along_axis(pool, pick, axis=1))


def _seed_then_nearest(pos: np.ndarray, seeds: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``(G, C)`` groups: each seed, then its ``(G, C − 1)`` members by increasing distance to
    it (ties by index)."""
    d2 = np.sum((pos[members] - pos[seeds][:, None, :]) ** 2, axis=-1)
    order = np.lexsort((members, d2), axis=-1)
    members = np.take_along_axis(members, order, axis=1)
    return np.concatenate([seeds[:, None], members], axis=1)


def _check_grouping_args(pos: np.ndarray, gridsize: Any, neighbor_count: int) -> int:
    """Validate ``(M, 2)`` positions, gridsize and K; returns ``C``."""
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must have shape (M, 2) (x, y), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions contain NaN or infinite values")
    if isinstance(gridsize, bool) or int(gridsize) != gridsize or gridsize < 1:
        raise ValueError(f"gridsize = {gridsize!r} is invalid; allowed: an integer >= 1")
    c = int(gridsize) ** 2
    if pos.shape[0] < c:
        raise DataContractError(
            f"too few scan positions for gridsize {gridsize}: a group needs C = {c} positions, "
            f"the scan has {pos.shape[0]}"
        )
    if c > 1 and neighbor_count < c - 1:
        raise ValueError(
            f"neighbor_count = {neighbor_count} is invalid for gridsize {gridsize}; "
            f"allowed: an integer >= C - 1 = {c - 1}"
        )
    return c


def _neighbour_pool(pos: np.ndarray, seeds: np.ndarray, neighbor_count: int) -> np.ndarray:
    """``(len(seeds), K)``: each seed's K nearest *other* positions, nearest first (KD-tree)."""
    m = pos.shape[0]
    k = min(int(neighbor_count), m - 1)
    _, nn = cKDTree(pos).query(pos[seeds], k=k + 1)
    nn = np.asarray(nn, dtype=np.int64).reshape(len(seeds), k + 1)
    # Drop the seed itself; if duplicates pushed it out of the list, drop the farthest instead.
    drop = nn == seeds[:, None]
    none_dropped = ~drop.any(axis=1)
    drop[none_dropped, -1] = True
    first = drop.cumsum(axis=1) == 1
    drop &= first  # exactly one dropped per row
    return nn[~drop].reshape(len(seeds), k)


def cover_indices(
    positions: np.ndarray, gridsize: int, neighbor_count: int = 6, n_groups: int | None = None
) -> np.ndarray:
    """Groups that together contain every position at least once, with few repeats.

    Inference's ``grouping = "cover"`` (``specs/configuration.md``): positions are visited in
    scan order; one not yet in a group seeds a new group whose ``C − 1`` members are its
    nearest *uncovered* neighbours among its ``K`` nearest, topped up with the nearest covered
    ones when fewer than ``C − 1`` are uncovered. Deterministic (no random draw); members are
    ordered by increasing distance to the seed (ties by index), as in :func:`group_indices`.
    About ``M / C`` groups instead of ``M``: each pattern goes through the network about once,
    not ``C`` times. ``n_groups`` keeps the first groups. Gridsize 1: every position once.
    """
    pos = np.asarray(positions, dtype=np.float64)
    c = _check_grouping_args(pos, gridsize, neighbor_count)
    keep = None if n_groups is None else _checked_n_groups(n_groups)
    m = pos.shape[0]
    if c == 1:
        return np.arange(m, dtype=np.int64)[:keep, None]
    pool = _neighbour_pool(pos, np.arange(m, dtype=np.int64), neighbor_count)
    held = np.zeros(m, dtype=bool)
    seeds: list[int] = []
    members: list[np.ndarray] = []
    for i in range(m):
        if held[i]:
            continue
        row = pool[i]  # nearest first: the not-yet-held ones, then the held ones
        picked = np.concatenate([row[~held[row]], row[held[row]]])[: c - 1]
        held[i] = True
        held[picked] = True
        seeds.append(i)
        members.append(picked)
    out = _seed_then_nearest(pos, np.asarray(seeds, dtype=np.int64), np.stack(members))
    return out[:keep]


@dataclass(eq=False)
class GroupedData:
    """Groups of scan positions with their patterns (torch layout).

    Attributes
    ----------
    indices : (G, C) int64
        Scan indices; channel 0 is the seed.
    positions : (G, C, 2) float64
        Absolute ``(x, y)`` object pixels of every member.
    centers : (G, 2) float64
        Mean member position.
    offsets : (G, C, 2) float64
        ``positions − centers[:, None]``.
    source_diffraction : (M, N, N) float
        The scan's pattern stack the groups index into.
    source_Y : (M, N, N) complex or None
        Per-position ground-truth patches.
    scale : float
        Factor applied to ``diffraction`` (the workflow sets ``s·α``; 1 = raw amplitude).

    ``diffraction`` ``(G, C, N, N) float32`` (= ``scale · source_diffraction[indices]``) and
    ``Y`` ``(G, C, N, N) complex64 | None`` are gathered on first access and cached.
    """

    indices: np.ndarray
    positions: np.ndarray
    centers: np.ndarray
    offsets: np.ndarray
    source_diffraction: np.ndarray
    source_Y: np.ndarray | None = None
    scale: float = 1.0

    @cached_property
    def diffraction(self) -> np.ndarray:
        """``(G, C, N, N) float32``: ``scale ·`` the members' patterns."""
        out = self.source_diffraction[self.indices].astype(np.float32)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out

    @cached_property
    def Y(self) -> np.ndarray | None:  # the contract name
        """``(G, C, N, N) complex64`` ground-truth patches, or None."""
        if self.source_Y is None:
            return None
        return self.source_Y[self.indices].astype(np.complex64)

    @property
    def N(self) -> int:
        """Pattern size in pixels."""
        return int(self.source_diffraction.shape[-1])

    @property
    def C(self) -> int:
        """Members per group."""
        return int(self.indices.shape[1])

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def channels_last(self, key: str = "diffraction") -> np.ndarray:
        """``diffraction`` (or ``Y``) in TF layout ``(G, N, N, C)``, C-contiguous."""
        arr = getattr(self, key)
        if arr is None:
            raise ValueError(f"GroupedData.{key} is None")
        return np.ascontiguousarray(np.moveaxis(arr, 1, -1))

    def subset(self, idx: Any) -> GroupedData:
        """Groups ``idx`` (int array, slice or bool mask); shares the source arrays."""
        return dataclasses.replace(
            self,
            indices=self.indices[idx],
            positions=self.positions[idx],
            centers=self.centers[idx],
            offsets=self.offsets[idx],
        )

    def with_scale(self, scale: float) -> GroupedData:
        """A copy whose ``diffraction`` is ``scale ·`` the raw patterns."""
        return dataclasses.replace(self, scale=float(scale))


def groups_from_indices(
    indices: np.ndarray,
    positions: np.ndarray,
    diffraction: np.ndarray,
    Y: np.ndarray | None = None,
    scale: float = 1.0,
) -> GroupedData:
    """Build :class:`GroupedData` from ``(G, C)`` indices into ``(M, 2)`` positions."""
    idx = np.asarray(indices, dtype=np.int64)
    pos = np.asarray(positions, dtype=np.float64)[idx]
    centers = pos.mean(axis=1)
    return GroupedData(
        indices=idx,
        positions=pos,
        centers=centers,
        offsets=pos - centers[:, None, :],
        source_diffraction=diffraction,
        source_Y=Y,
        scale=scale,
    )


def group_scan(
    scan: ScanData,
    gridsize: int,
    n_groups: int | None = None,
    neighbor_count: int = 6,
    seed: int | np.random.Generator | None = None,
    sequential: bool = False,
    oversample: bool = False,
    Y: np.ndarray | None = None,
    cover: bool = False,
) -> GroupedData:
    """Group a :class:`~ptycho_core.io.ScanData` (see :func:`group_indices`; ``cover``:
    :func:`cover_indices`, which takes no seed, ``sequential`` or ``oversample``).

    ``Y`` ``(M, N, N)`` complex overrides ``scan.Y`` as the per-position ground truth.
    Too few patterns for a group → :class:`DataContractError` naming the source.
    """
    c = int(gridsize) ** 2 if not isinstance(gridsize, bool) else 0
    if 0 < c and scan.M < c:
        raise DataContractError(
            f"{scan.source or '<in-memory scan>'}: key 'diffraction': expected at least {c} "
            f"patterns (a gridsize-{gridsize} group needs {c}), got {scan.M} pattern(s)"
        )
    if cover:
        idx = cover_indices(scan.positions, gridsize, neighbor_count, n_groups=n_groups)
    else:
        idx = group_indices(
            scan.positions,
            gridsize,
            n_groups=n_groups,
            neighbor_count=neighbor_count,
            seed=seed,
            sequential=sequential,
            oversample=oversample,
        )
    logger.debug("grouped %d positions into %d groups of %d", scan.M, len(idx), idx.shape[1])
    return groups_from_indices(idx, scan.positions, scan.diffraction, scan.Y if Y is None else Y)
