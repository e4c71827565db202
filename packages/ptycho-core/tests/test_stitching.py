"""Stitching (``specs/training.md``): exact recovery, analytic sub-pixel blur, frames, chunking,
coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ptycho_core import physics as ph
from ptycho_core import simulation as sim
from ptycho_core.stitching import Stitcher, StitchResult, default_stitch_crop, stitch


def _smooth_object(shape, seed, sigma=5.0):
    rng = np.random.default_rng(seed)
    amp = 0.75 + 2.0 * ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    phase = 6.0 * ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return (amp * np.exp(1j * phase)).astype(np.complex64)


def test_default_crop():
    assert [default_stitch_crop(n) for n in (32, 64, 128, 256)] == [10, 20, 40, 80]
    for n in range(8, 300, 2):
        c = default_stitch_crop(n)
        assert c % 2 == 0 and abs(c - 20 * n / 64) <= 1.0 + 1e-12


def test_default_crop_values():
    # 20·N/64 rounded to the nearest even integer, written out by hand
    assert [default_stitch_crop(n) for n in (32, 64, 128, 256)] == [10, 20, 40, 80]


def test_integer_positions_reproduce_object_exactly():
    obj = sim.procedural_object((120, 110), seed=4)
    pos = np.rint(sim.random_scan(150, obj.shape, 32, seed=2))
    scan = sim.simulate(obj, sim.default_probe(32), pos, 1e6, seed=0)
    res = stitch(scan.Y, scan.positions, object_shape=obj.shape, chunk=64)
    assert isinstance(res, StitchResult) and res.origin == (0, 0)
    cov = res.covered
    assert cov.mean() > 0.3
    assert np.abs(res.object - obj)[cov].max() < 1e-5
    assert np.all(res.object[~cov] == 0)


def test_constant_patches_are_never_amplified():
    # every canvas value is a weighted average of patch values: constant in -> constant out,
    # also at the ragged, fractionally weighted edge of the covered region
    rng = np.random.default_rng(1)
    pos = rng.uniform(10, 60, size=(40, 2))
    v = np.complex64(0.8 - 0.3j)
    res = stitch(np.full((40, 16, 16), v), pos, crop=8)
    edge = res.covered & (res.coverage < 0.5)
    assert edge.sum() > 10
    np.testing.assert_allclose(res.object[res.covered], v, rtol=1e-5)


def test_single_fractional_patch_matches_analytic_blur():
    # 1-D: extracting at fraction f then placing back gives, at interior pixels,
    #   O[q] + f(1-f) (O[q-1] - 2 O[q] + O[q+1])   with weight exactly 1;
    # in 2-D the separable product of that operator along x and y.
    obj = sim.procedural_object((64, 64), seed=9).astype(np.complex128)
    n, crop = 32, 20
    p = np.array([[31.3, 29.8]])
    res = stitch(ph.extract_patches(obj, p, n), p, crop=crop, object_shape=obj.shape)
    fx, fy = p[0] % 1

    def blur(a, f, axis):
        return a + f * (1 - f) * (np.roll(a, 1, axis) - 2 * a + np.roll(a, -1, axis))

    expect = blur(blur(obj, fx, 1), fy, 0)
    x0, y0 = int(np.floor(p[0, 0] - crop / 2)), int(np.floor(p[0, 1] - crop / 2))
    inner = (slice(y0 + 1, y0 + crop), slice(x0 + 1, x0 + crop))
    np.testing.assert_allclose(res.coverage[inner], 1.0, atol=1e-6)
    np.testing.assert_allclose(res.object[inner], expect[inner], atol=2e-6)


def test_fractional_positions_smooth_object():
    """Fractional positions: bilinear placement of bilinearly extracted patches is not the
    identity (it blurs by f(1-f)·second difference inside a crop and is first order at a crop's
    edge, see above), so exactness is tested with integer positions. Here: (1) every stitched
    value is a convex combination of object values within one pixel, so
    |error(q)| <= max_{|d|<=1} |O(q+d) - O(q)| exactly; (2) for a smooth object (Gaussian
    correlation 8 px, max gradient ~0.06 per px, amplitude ~0.75) the error is < 5e-2 everywhere,
    < 1.5e-2 where at least one full crop's weight landed, and < 2e-3 on average."""
    obj = _smooth_object((140, 150), seed=3, sigma=8.0)
    pos = sim.random_scan(400, obj.shape, 32, seed=5)
    scan = sim.simulate(obj, sim.default_probe(32), pos, 1e6, seed=1)
    res = stitch(scan.Y, scan.positions, object_shape=obj.shape, chunk=100)
    cov = res.covered
    err = np.abs(res.object.astype(np.complex128) - obj)
    local = np.zeros(obj.shape)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            local = np.maximum(local, np.abs(np.roll(obj, (dy, dx), (0, 1)) - obj))
    assert np.all(err[cov] <= local[cov] + 1e-5)
    assert err[cov].max() < 5e-2
    assert err[res.coverage >= 1].max() < 1.5e-2
    assert err[cov].mean() < 2e-3


def test_bbox_canvas_lines_up_with_object_frame():
    rng = np.random.default_rng(6)
    obj = _smooth_object((100, 120), seed=0)
    pos = rng.uniform((30, 25), (95, 70), size=(60, 2))
    patches = ph.extract_patches(obj, pos, 16) * np.exp(0.1j)
    full = stitch(patches, pos, crop=10, object_shape=obj.shape)
    box = stitch(patches, pos, crop=10)
    x0, y0 = box.origin
    assert (x0, y0) == (int(np.floor(pos[:, 0].min() - 5)), int(np.floor(pos[:, 1].min() - 5)))
    h, w = box.object.shape
    np.testing.assert_allclose(box.object, full.object[y0 : y0 + h, x0 : x0 + w], atol=1e-6)
    np.testing.assert_allclose(box.coverage, full.coverage[y0 : y0 + h, x0 : x0 + w], atol=1e-6)
    # the box holds all the weight, and its border rows/columns are touched
    assert box.coverage.sum() == pytest.approx(full.coverage.sum(), rel=1e-6)
    assert box.covered[0].any() and box.covered[-1].any()
    assert box.covered[:, 0].any() and box.covered[:, -1].any()


def test_chunked_equals_one_shot():
    rng = np.random.default_rng(7)
    pos = rng.uniform(0, 80, size=(257, 2))
    patches = (rng.normal(size=(257, 16, 16)) + 1j * rng.normal(size=(257, 16, 16))).astype(
        np.complex64
    )
    one = stitch(patches, pos, crop=10, chunk=10_000)
    st = Stitcher(16, 10, positions=pos)
    for s in (0, 3, 100, 101, 257):  # uneven pieces, including an empty one
        e = {0: 3, 3: 100, 100: 101, 101: 257, 257: 257}[s]
        st.add(patches[s:e], pos[s:e])
    many = st.result()
    assert many.origin == one.origin
    np.testing.assert_allclose(many.object, one.object, atol=1e-5)
    np.testing.assert_allclose(many.coverage, one.coverage, atol=1e-5)


def test_coverage_counts_crops_and_is_zero_outside():
    pos = np.array([[20, 20], [25, 22], [60, 50], [24, 20]], dtype=float)
    n, crop, shape = 16, 10, (80, 90)
    res = stitch(np.ones((4, n, n), complex), pos, crop=crop, object_shape=shape)
    expect = np.zeros(shape)
    for x, y in pos.astype(int):
        expect[y - crop // 2 : y + crop // 2, x - crop // 2 : x + crop // 2] += 1
    np.testing.assert_array_equal(res.coverage, expect)
    assert np.all(res.object[expect == 0] == 0)
    np.testing.assert_array_equal(res.covered, expect > 0)
    assert res.amplitude.shape == shape and res.phase.dtype == np.float32


def test_patches_beyond_object_frame_are_clipped():
    res = stitch(
        np.ones((2, 8, 8)), np.array([[1.0, 1.0], [-50.0, 3.0]]), crop=8, object_shape=(10, 10)
    )
    assert res.coverage.sum() == pytest.approx(25.0)  # 5x5 of the first crop lies inside


def test_bad_arguments():
    with pytest.raises(ValueError):
        Stitcher(16, 7, object_shape=(10, 10))
    with pytest.raises(ValueError):
        Stitcher(16, 18, object_shape=(10, 10))
    with pytest.raises(ValueError):
        Stitcher(16, 8)
    st = Stitcher(16, 8, object_shape=(10, 10))
    with pytest.raises(ValueError):
        st.add(np.ones((2, 8, 8)), np.zeros((2, 2)))
    with pytest.raises(ValueError):
        st.add(np.ones((2, 16, 16)), np.zeros((3, 2)))
