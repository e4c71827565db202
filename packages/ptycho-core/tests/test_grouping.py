"""Grouping (``specs/configuration.md``): properties checked by brute force, determinism, errors,
GroupedData."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ptycho_core.errors import DataContractError
from ptycho_core.grouping import GroupedData, cover_indices, group_indices, group_scan
from ptycho_core.io import ScanData


def _positions(m: int, seed: int, integer: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0, 50, size=(m, 2))
    return np.round(p) if integer else p


def _check_groups(pos, groups, gridsize, k):
    """Brute-force check of every property of ``specs/configuration.md`` for each group."""
    m = len(pos)
    c = gridsize * gridsize
    assert groups.dtype == np.int64 and groups.shape[1] == c
    assert groups.min() >= 0 and groups.max() < m
    for row in groups:
        assert len(set(row.tolist())) == c, f"duplicate inside group {row}"
        if c == 1:
            continue
        seed = row[0]
        d2 = np.sum((pos - pos[seed]) ** 2, axis=1)
        others = np.delete(np.arange(m), seed)
        kth = np.sort(d2[others])[min(k, m - 1) - 1]  # distance of the K-th nearest other
        members = row[1:]
        assert np.all(d2[members] <= kth + 1e-9), "member not among the K nearest"
        # increasing distance to the seed, ties by index
        key = list(zip(d2[members].tolist(), members.tolist(), strict=False))
        assert key == sorted(key)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(9, 60),
    gridsize=st.sampled_from([1, 2, 3]),
    extra_k=st.integers(0, 5),
    seed=st.integers(0, 2**31),
    integer=st.booleans(),
    frac=st.one_of(st.none(), st.floats(0.1, 1.0)),
)
def test_group_properties(m, gridsize, extra_k, seed, integer, frac):
    pos = _positions(m, seed, integer)  # integer grids create many distance ties
    k = max(gridsize * gridsize - 1, 1) + extra_k
    n_groups = None if frac is None else max(1, int(frac * m))
    groups = group_indices(pos, gridsize, n_groups=n_groups, neighbor_count=k, seed=seed)
    assert len(groups) == (m if n_groups is None else n_groups)
    _check_groups(pos, groups, gridsize, k)
    again = group_indices(pos, gridsize, n_groups=n_groups, neighbor_count=k, seed=seed)
    np.testing.assert_array_equal(groups, again)


def test_gridsize1_all_positions_in_order():
    pos = _positions(20, 0)
    np.testing.assert_array_equal(group_indices(pos, 1)[:, 0], np.arange(20))
    np.testing.assert_array_equal(group_indices(pos, 2, n_groups=20, seed=3)[:, 0], np.arange(20))


def test_known_small_layout():
    # a 3x3 unit grid: the 3 nearest others of the centre (index 4) are 4 tied at distance 1
    pos = np.array([(x, y) for y in range(3) for x in range(3)], dtype=float)
    g = group_indices(pos, 2, neighbor_count=3, seed=0)
    # centre: K=3 nearest others come from {1, 3, 5, 7}; all must be picked, sorted by index
    assert g[4, 0] == 4
    assert set(g[4, 1:]) <= {1, 3, 5, 7}
    assert list(g[4, 1:]) == sorted(g[4, 1:])
    # corner 0: nearest others 1 and 3 (d=1) then 4 (d=sqrt 2); K=3 takes exactly those
    assert list(g[0]) == [0, 1, 3, 4]


def test_different_seeds_give_different_groups():
    pos = _positions(200, 1)
    a = group_indices(pos, 2, seed=1)
    b = group_indices(pos, 2, seed=2)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a[:, 0], b[:, 0])  # seeds are all positions in order
    ra = group_indices(pos, 1, n_groups=50, seed=1)
    rb = group_indices(pos, 1, n_groups=50, seed=2)
    assert not np.array_equal(ra, rb)


def test_global_rng_untouched():
    pos = _positions(100, 2)
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    group_indices(pos, 3, n_groups=40, neighbor_count=10, seed=5)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_seed_subset_sequential_and_random():
    pos = _positions(30, 3)
    seq = group_indices(pos, 2, n_groups=7, seed=0, sequential=True)
    np.testing.assert_array_equal(seq[:, 0], np.arange(7))
    rnd = group_indices(pos, 1, n_groups=10, seed=0)[:, 0]
    assert len(set(rnd.tolist())) == 10 and np.all(np.diff(rnd) > 0)
    assert not np.array_equal(rnd, np.arange(10))


def test_oversample():
    pos = _positions(10, 4)
    with pytest.raises(ValueError, match="oversample=True"):
        group_indices(pos, 2, n_groups=25, seed=0)
    g = group_indices(pos, 2, n_groups=25, seed=0, oversample=True)
    assert g.shape == (25, 4)
    np.testing.assert_array_equal(g[:10, 0], np.arange(10))
    _check_groups(pos, g, 2, 6)


def test_errors():
    pos = _positions(10, 5)
    with pytest.raises(ValueError, match="C - 1 = 3"):
        group_indices(pos, 2, neighbor_count=2)
    with pytest.raises(ValueError, match="C - 1 = 8"):
        group_indices(pos, 3, neighbor_count=6)
    with pytest.raises(DataContractError, match="C = 16"):
        group_indices(pos, 4, neighbor_count=20)
    with pytest.raises(ValueError, match="gridsize"):
        group_indices(pos, 0)
    with pytest.raises(ValueError, match="n_groups"):
        group_indices(pos, 1, n_groups=0)
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        group_indices(pos[:, :1], 1)
    bad = pos.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        group_indices(bad, 1)


def test_small_scan_pool_is_all_others():
    pos = _positions(4, 6)  # K=6 > M-1=3: every other position is in the pool
    g = group_indices(pos, 2, seed=0)
    assert g.shape == (4, 4)
    assert all(set(r) == {0, 1, 2, 3} for r in g.tolist())


def test_duplicate_positions_never_duplicate_members():
    pos = np.zeros((8, 2))
    g = group_indices(pos, 2, neighbor_count=3, seed=0)
    assert all(len(set(r)) == 4 for r in g.tolist())


def _scan(m=12, n=8, seed=0, with_y=True):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(5, 30, size=(m, 2))
    diff = rng.uniform(0, 3, size=(m, n, n)).astype(np.float32)
    y = (rng.normal(size=(m, n, n)) + 1j * rng.normal(size=(m, n, n))) if with_y else None
    return ScanData(
        diffraction=diff,
        xcoords=pos[:, 0],
        ycoords=pos[:, 1],
        probe=np.ones((n, n), np.complex64),
        Y=y,
    )


def test_group_scan_arrays():
    scan = _scan()
    g = group_scan(scan, 2, seed=1)
    assert isinstance(g, GroupedData) and len(g) == 12 and g.C == 4 and g.N == 8
    assert g.diffraction.shape == (12, 4, 8, 8) and g.diffraction.dtype == np.float32
    for gi in range(len(g)):
        for c in range(4):
            j = g.indices[gi, c]
            np.testing.assert_array_equal(g.diffraction[gi, c], scan.diffraction[j])
            np.testing.assert_array_equal(g.positions[gi, c], [scan.xcoords[j], scan.ycoords[j]])
            np.testing.assert_allclose(g.Y[gi, c], scan.Y[j], rtol=1e-6)
    np.testing.assert_allclose(g.centers, g.positions.mean(axis=1))
    np.testing.assert_allclose(g.offsets.sum(axis=1), 0, atol=1e-9)
    np.testing.assert_allclose(g.positions - g.centers[:, None], g.offsets)
    assert g.Y.dtype == np.complex64
    cl = g.channels_last()
    assert cl.shape == (12, 8, 8, 4) and cl.flags.c_contiguous
    np.testing.assert_array_equal(cl[..., 2], g.diffraction[:, 2])
    assert g.channels_last("Y").shape == (12, 8, 8, 4)


def test_group_scan_scale_subset_and_no_y():
    scan = _scan(with_y=False)
    g = group_scan(scan, 1)
    assert g.Y is None
    with pytest.raises(ValueError, match="None"):
        g.channels_last("Y")
    scaled = g.with_scale(2.5)
    np.testing.assert_allclose(scaled.diffraction, 2.5 * g.diffraction, rtol=1e-6)
    sub = scaled.subset(np.array([3, 5]))
    assert len(sub) == 2 and sub.scale == 2.5
    np.testing.assert_allclose(sub.diffraction[:, 0], 2.5 * scan.diffraction[[3, 5]], rtol=1e-6)
    assert len(g.subset(slice(0, 4))) == 4


def test_group_scan_too_few_patterns_names_source():
    scan = _scan(m=3)
    with pytest.raises(DataContractError, match="at least 4 patterns"):
        group_scan(scan, 2)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(9, 80),
    gridsize=st.sampled_from([1, 2, 3]),
    extra_k=st.integers(0, 5),
    seed=st.integers(0, 2**31),
    integer=st.booleans(),
)
def test_cover_holds_every_position_with_fewer_groups(m, gridsize, extra_k, seed, integer):
    pos = _positions(m, seed, integer)
    k = max(gridsize * gridsize - 1, 1) + extra_k
    groups = cover_indices(pos, gridsize, neighbor_count=k)
    _check_groups(pos, groups, gridsize, k)  # same member rules as group_indices
    np.testing.assert_array_equal(np.unique(groups), np.arange(m))  # every position held
    # A seed is a position no earlier group holds, so seeds are distinct and increasing.
    seeds = groups[:, 0]
    assert np.all(np.diff(seeds) > 0)
    for g, s in enumerate(seeds):
        assert s not in groups[:g]
    if gridsize == 1:
        np.testing.assert_array_equal(groups[:, 0], np.arange(m))
    np.testing.assert_array_equal(groups, cover_indices(pos, gridsize, neighbor_count=k))


def test_cover_needs_far_fewer_groups_than_every():
    pos = _positions(2000, 3)
    groups = cover_indices(pos, 2)
    assert len(groups) < 0.35 * len(pos)  # M/C = 0.25 M is the ideal
    groups3 = cover_indices(pos, 3, neighbor_count=10)
    assert len(groups3) < 0.2 * len(pos)  # M/C = 0.11 M
    np.testing.assert_array_equal(cover_indices(pos, 2, n_groups=7), groups[:7])


def test_cover_prefers_positions_not_yet_held():
    # A row of 8 equally spaced points: groups of 4 can tile it with 2 groups.
    pos = np.stack([np.arange(8.0) * 10, np.zeros(8)], axis=1)
    groups = cover_indices(pos, 2, neighbor_count=6)
    assert [sorted(g) for g in groups.tolist()] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_cover_errors():
    pos = _positions(10, 0)
    with pytest.raises(DataContractError, match="too few scan positions"):
        cover_indices(pos[:3], 2)
    with pytest.raises(ValueError, match="neighbor_count"):
        cover_indices(pos, 3, neighbor_count=6)
    with pytest.raises(ValueError, match="n_groups"):
        cover_indices(pos, 2, n_groups=0)
    with pytest.raises(ValueError, match="NaN"):
        cover_indices(np.full((10, 2), np.nan), 2)
