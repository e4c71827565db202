"""TF physics ops against the NumPy oracle ``ptycho_core.physics`` on identical inputs.

Tolerances: float32 TF vs float32/float64 NumPy: geometry ops ``atol = 2e-5·max|input|``,
forward model ``rtol = 1e-4`` of the peak amplitude, Poisson NLL ``rtol = 1e-5``, merge
``atol = 1e-4·max|patches|`` in complex64 (hat weights at canvas index ~side carry ~side·ε, and
where the mask sum is below the 1e-3 floor the division by the floor amplifies them) and
``1e-10`` in complex128. Shifts are fractional (and integer, and negative) so the bilinear
weights matter.
"""

import numpy as np
import pytest
import tensorflow as tf

from ptycho_core import physics as ref
from ptycho_core.grouping import group_indices, groups_from_indices
from ptycho_core.simulation import beamline_probe, random_scan, realistic_object
from ptycho_tf import physics as tfp


@pytest.mark.parametrize("n", [32, 64])
def test_translate_matches_oracle(rng, crandn, n):
    img = crandn((3, 2, n, n))
    shift = np.stack([rng.uniform(-6, 6, (3, 2)), rng.uniform(-6, 6, (3, 2))], axis=-1)
    shift[0, 0] = (2.0, -3.0)  # an integer shift
    got = tfp.translate(tf.constant(img), tf.constant(shift, tf.float32)).numpy()
    want = ref.translate(img, shift)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(img).max())


def test_translate_broadcasts_over_a_size_one_axis(rng):
    """``(H, W)`` image, shifts ``(B, 1, 2)``: TF 2.21's oneDNN matmul broadcasting this shape
    itself returns garbage (or crashes), so the ops broadcast explicitly."""
    img = rng.standard_normal((32, 32)).astype(np.float32)
    shift = rng.uniform(-4, 4, (4, 1, 2))
    got = tfp.translate(tf.constant(img), tf.constant(shift, tf.float32)).numpy()
    assert got.shape == (4, 1, 32, 32)
    np.testing.assert_allclose(got, ref.translate(img, shift), atol=2e-5 * np.abs(img).max())


def test_merge_in_a_graph_keeps_static_shapes():
    for c in (1, 4):
        specs = [
            tf.TensorSpec((None, 32, 32, c), tf.complex64),
            tf.TensorSpec((None, c, 2), tf.float32),
        ]
        centre = tf.function(lambda x, o: tfp.object_big_merge_cl(x, o), input_signature=specs)
        weighted = tf.function(
            tfp.object_big_merge_cl, input_signature=[*specs, tf.TensorSpec((32, 32), tf.float32)]
        )
        for f in (centre, weighted):
            out = f.get_concrete_function().structured_outputs
            assert out.shape.as_list() == [None, 32, 32, c]


def test_translate_moves_content_by_plus_t():
    img = np.zeros((20, 24), np.float32)
    img[12, 10] = 1.0  # (x=10, y=12)
    out = tfp.translate(tf.constant(img), tf.constant([3.0, -2.0])).numpy()
    assert out[10, 13] == pytest.approx(1.0)  # moved to (x=13, y=10)
    half = tfp.translate(tf.constant(img), tf.constant([0.5, 0.0])).numpy()
    np.testing.assert_allclose(half[12, 10:12], [0.5, 0.5], atol=1e-6)


@pytest.mark.parametrize("n", [32, 64])
def test_extract_matches_oracle(rng, crandn, n):
    obj = crandn((150, 170))
    pos = np.column_stack([rng.uniform(-10, 180, 40), rng.uniform(-10, 160, 40)])
    pos[0] = (70.0, 60.0)  # integer position
    got = tfp.extract_patches(tf.constant(obj), tf.constant(pos), n).numpy()
    want = ref.extract_patches(obj, pos, n)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(obj).max())


@pytest.mark.parametrize("n", [32, 64])
def test_place_matches_oracle_and_is_adjoint(rng, crandn, n):
    shape = (140, 150)
    q = crandn((25, n, n))
    pos = np.column_stack([rng.uniform(-5, 155, 25), rng.uniform(-5, 145, 25)])
    got = tfp.place_patches(tf.constant(q), tf.constant(pos), shape).numpy()
    want = ref.place_patches(q, pos, shape)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    c = crandn(shape)
    lhs = np.vdot(tfp.extract_patches(tf.constant(c), tf.constant(pos), n).numpy(), q)
    rhs = np.vdot(c, got)
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)


@pytest.mark.parametrize(
    "n,sigma,mask", [(32, 0.0, False), (64, 0.0, True), (32, 1.5, True), (64, 0.7, False)]
)
def test_forward_model_matches_oracle(rng, crandn, n, sigma, mask):
    obj = crandn((2, 4, n, n))
    probe = crandn((n, n))
    got = tfp.forward_model(tf.constant(obj), tf.constant(probe), sigma, mask).numpy()
    want = ref.forward_model(obj, probe, sigma, mask)
    np.testing.assert_allclose(got, want, atol=1e-4 * want.max(), rtol=1e-4)
    # TF layout wrapper: (B, N, N, C)
    cl = tfp.forward_model_cl(
        tf.constant(np.moveaxis(obj, 1, -1)), tf.constant(probe), sigma, mask
    ).numpy()
    np.testing.assert_allclose(np.moveaxis(cl, -1, 1), want, atol=1e-4 * want.max(), rtol=1e-4)


def test_forward_model_parseval(rng, crandn):
    obj = crandn((3, 32, 32))
    probe = crandn((32, 32))
    amp = tfp.forward_model(tf.constant(obj), tf.constant(probe)).numpy()
    np.testing.assert_allclose(
        (amp**2).sum(axis=(-2, -1)), (np.abs(probe * obj) ** 2).sum(axis=(-2, -1)), rtol=1e-4
    )


@pytest.mark.parametrize("n", [10, 16, 32, 64])
def test_disk_and_center_masks(n):
    np.testing.assert_array_equal(tfp.disk_mask(n).numpy(), ref.disk_mask(n))
    np.testing.assert_array_equal(tfp.center_mask(n, dtype=tf.float64).numpy(), ref.center_mask(n))


def test_poisson_nll_matches_oracle(rng):
    pred = rng.uniform(0.0, 50.0, (4, 32, 32)).astype(np.float32)
    pred[0, 0, 0] = 0.0  # eps path
    obs = rng.poisson(pred).astype(np.float32)
    got = float(tfp.poisson_nll(tf.constant(pred), tf.constant(obs)).numpy())
    assert got == pytest.approx(ref.poisson_nll(pred, obs), rel=1e-5)


def _merge_offsets(rng, kind, b, c):
    """``(B, C, 2)`` offsets: zero, integer, or fractional; ``*_odd`` / ``*_even`` give an odd /
    even ``ceil(max|offset|)`` (3 or 4), which sets the canvas margin."""
    if kind == "zero":
        return np.zeros((b, c, 2))
    lim = 3.0 if kind.endswith("odd") else 4.0
    off = rng.uniform(-lim, lim, (b, c, 2))
    off = np.round(off) if kind.startswith("integer") else off
    off[0, 0, 0] = -lim  # pins ceil(max|offset|) = lim
    return off


MERGE_KINDS = ["zero", "integer_odd", "integer_even", "fractional_odd", "fractional_even"]


@pytest.mark.parametrize("weighting", ["centre", "probe"])
@pytest.mark.parametrize("n", [16, 32, 64])
@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("kind", MERGE_KINDS)
def test_object_big_merge_matches_oracle(rng, crandn, n, gridsize, kind, weighting):
    b, c = 3, gridsize**2
    patches = crandn((b, c, n, n))  # complex64
    offsets = _merge_offsets(rng, kind, b, c).astype(np.float32)
    # 'probe': the oracle's weight of the wide beamline probe; 'centre': None (centre mask)
    w = None if weighting == "centre" else ref.merge_weight(beamline_probe(n))
    want = ref.object_big_merge(patches, offsets, w)  # float64 arithmetic on the same inputs
    assert int(tfp.merge_canvas_size(n, tf.constant(offsets))) == ref.merge_canvas_size(n, offsets)
    w32 = None if w is None else tf.constant(w, tf.float32)
    got = tfp.object_big_merge(tf.constant(patches), tf.constant(offsets), w32).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(patches).max())
    got64 = tfp.object_big_merge(
        tf.constant(patches.astype(np.complex128)),
        tf.constant(offsets.astype(np.float64)),
        None if w is None else tf.constant(w),
    ).numpy()
    np.testing.assert_allclose(got64, want, rtol=1e-10, atol=1e-10)
    # TF layout wrapper used by layers.ObjectMerge: (B, N, N, C)
    cl = tfp.object_big_merge_cl(
        tf.constant(np.moveaxis(patches, 1, -1)), tf.constant(offsets), w32
    ).numpy()
    np.testing.assert_allclose(np.moveaxis(cl, -1, 1), got, rtol=0, atol=0)


@pytest.mark.parametrize("n", [32, 64])
@pytest.mark.parametrize("mask,sigma", [(False, 0.0), (True, 0.0), (False, 1.5), (True, 0.8)])
def test_merge_weight_matches_oracle(crandn, n, mask, sigma):
    probe = crandn((n, n))
    want = ref.merge_weight(probe, sigma, mask)
    got = tfp.merge_weight(tf.constant(probe), sigma, mask).numpy()
    assert got.dtype == np.float32 and got.max() == 1.0
    np.testing.assert_allclose(got, want, atol=1e-6)


def _lit(probe):
    """Pixels where ``probe`` carries >= 1 % of its peak intensity."""
    i2 = np.abs(probe.astype(np.complex128)) ** 2
    return i2 >= 0.01 * i2.max()


@pytest.mark.parametrize("n", [32, 64])
def test_probe_weighted_merge_returns_true_patches_where_the_probe_illuminates(n):
    """Issue 8 item 2 through the TF merge (complex64): true object patches of a gridsize-2
    group with integer offsets come back within 1e-3 wherever the wide beamline probe (>= 25 %
    of its energy outside N/2) carries >= 1 % of its peak intensity; the centre-square weights
    fail that. Fractional offsets from a real grouping: within the bilinear translation's own
    largest round-trip error on the same patches and pixels."""
    probe = ref.normalize_probe(beamline_probe(n))
    i2 = np.abs(probe.astype(np.complex128)) ** 2
    assert 1 - (i2 * ref.center_mask(n)).sum() / i2.sum() >= 0.25
    lit = _lit(probe)
    w = tfp.merge_weight(tf.constant(probe))
    s = n // 8
    offsets = np.array(
        [[[-s, -s], [s, -s], [-s, s], [s, s]], [[0, 0], [5, 1], [-3, 4], [2, -6]]], np.float32
    )
    obj = realistic_object(3 * n, seed=n)
    patches = np.stack([ref.extract_patches(obj, 1.5 * n + off, n) for off in offsets])
    got = tfp.object_big_merge(tf.constant(patches), tf.constant(offsets), w).numpy()
    assert np.abs(got - patches)[:, :, lit].max() <= 1e-3
    got_centre = tfp.object_big_merge(tf.constant(patches), tf.constant(offsets)).numpy()
    assert np.abs(got_centre - patches)[:, :, lit].max() > 0.1

    obj = realistic_object(4 * n, seed=n + 1)
    positions = random_scan(300, obj.shape, n, seed=n)
    groups = groups_from_indices(
        group_indices(positions, 2, n_groups=8, neighbor_count=6, seed=0),
        positions,
        np.zeros((len(positions), 1, 1)),
    )
    off = groups.offsets
    patches = np.stack([ref.extract_patches(obj, pos, n) for pos in groups.positions])
    p = (ref.merge_canvas_size(n, off) - n) // 2
    padded = np.pad(patches, ((0, 0), (0, 0), (p, p), (p, p)))
    back = ref.translate(ref.translate(padded, off), -off)[..., p : p + n, p : p + n]
    bound = np.abs(back - patches)[:, :, lit].max()
    got = tfp.object_big_merge(tf.constant(patches), tf.constant(off, tf.float32), w).numpy()
    assert np.abs(got - patches)[:, :, lit].max() <= bound


def test_object_big_merge_rejects_odd_n():
    with pytest.raises(ValueError, match="even"):
        tfp.object_big_merge(tf.ones((1, 4, 15, 15), tf.complex64), tf.ones((1, 4, 2)))


def test_merge_consistent_object_is_recovered(rng, crandn):
    """Patches cut from one object at their offsets merge back to the same patches (centre
    squares; integer offsets so interpolation is exact)."""
    n, _c = 32, 4
    obj = crandn((80, 80))
    offsets = np.array([[[0.0, 0.0], [5.0, 1.0], [-3.0, 4.0], [2.0, -6.0]]])  # integer: exact
    centre = np.array([40.0, 40.0])
    patches = ref.extract_patches(obj, offsets[0] + centre, n)[None]
    got = tfp.object_big_merge(tf.constant(patches), tf.constant(offsets, tf.float32)).numpy()
    q = slice(n // 4, 3 * n // 4)
    np.testing.assert_allclose(got[0, :, q, q], patches[0, :, q, q], atol=1e-4)


def test_merge_has_finite_gradients(rng, crandn):
    patches = tf.constant(crandn((2, 4, 32, 32)))
    offsets = tf.constant(rng.uniform(-4, 4, (2, 4, 2)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(patches)
        loss = tf.reduce_sum(tf.abs(tfp.object_big_merge(patches, offsets)) ** 2)
    g = tape.gradient(loss, patches).numpy()
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
