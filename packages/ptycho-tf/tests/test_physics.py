"""TF physics ops against the NumPy oracle ``ptycho_core.physics`` on identical inputs.

Tolerances: float32 TF vs float32/float64 NumPy: geometry ops ``atol = 2e-5·max|input|``,
forward model ``rtol = 1e-4`` of the peak amplitude, Poisson NLL ``rtol = 1e-5``, merge
``atol = 1e-4``. Shifts are fractional (and integer, and negative) so the bilinear weights matter.
"""

import numpy as np
import pytest
import tensorflow as tf

from ptycho_core import physics as ref
from ptycho_tf import physics as tfp


@pytest.mark.parametrize("n", [32, 64])
def test_translate_matches_oracle(rng, crandn, n):
    img = crandn((3, 2, n, n))
    shift = np.stack([rng.uniform(-6, 6, (3, 2)), rng.uniform(-6, 6, (3, 2))], axis=-1)
    shift[0, 0] = (2.0, -3.0)  # an integer shift
    got = tfp.translate(tf.constant(img), tf.constant(shift, tf.float32)).numpy()
    want = ref.translate(img, shift)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(img).max())


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


def test_disk_and_center_masks(rng):
    np.testing.assert_array_equal(tfp.disk_mask(32).numpy(), ref.disk_mask(32))
    cm = tfp.center_mask(32).numpy()
    assert cm.sum() == 16 * 16 and cm[8:24, 8:24].all()


def test_poisson_nll_matches_oracle(rng):
    pred = rng.uniform(0.0, 50.0, (4, 32, 32)).astype(np.float32)
    pred[0, 0, 0] = 0.0  # eps path
    obs = rng.poisson(pred).astype(np.float32)
    got = float(tfp.poisson_nll(tf.constant(pred), tf.constant(obs)).numpy())
    assert got == pytest.approx(ref.poisson_nll(pred, obs), rel=1e-5)


def _merge_oracle(patches, offsets):
    """NumPy merge from the oracle's place/extract: canvas side as ADR-002, channel c at the
    canvas position ``offset_c + side/2``."""
    b, c, n, _ = patches.shape
    side = n + 2 * int(np.ceil(np.abs(offsets).max()))
    side += side % 2
    mask = np.zeros((n, n))
    mask[n // 4 : 3 * n // 4, n // 4 : 3 * n // 4] = 1
    out = np.empty_like(patches)
    for i in range(b):
        pos = offsets[i] + side / 2
        num = ref.place_patches(patches[i] * mask, pos, (side, side))
        den = ref.place_patches(np.repeat(mask[None], c, 0), pos, (side, side))
        merged = np.where(den > 0, num / np.maximum(den, 1e-3), 0)
        out[i] = ref.extract_patches(merged, pos, n)
    return out


@pytest.mark.parametrize("n", [32, 64])
def test_object_big_merge_matches_oracle(rng, crandn, n):
    b, c = 3, 4
    patches = crandn((b, c, n, n))
    offsets = rng.uniform(-7, 7, (b, c, 2))
    got = tfp.object_big_merge(
        tf.constant(np.moveaxis(patches, 1, -1)), tf.constant(offsets, tf.float32)
    ).numpy()
    want = _merge_oracle(patches.astype(np.complex128), offsets)
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), want, atol=1e-4 * np.abs(patches).max())


def test_merge_consistent_object_is_recovered(rng, crandn):
    """Patches cut from one object at their offsets merge back to the same patches (centre
    squares; integer offsets so interpolation is exact)."""
    n, _c = 32, 4
    obj = crandn((80, 80))
    offsets = np.array([[[0.0, 0.0], [5.0, 1.0], [-3.0, 4.0], [2.0, -6.0]]])  # integer: exact
    centre = np.array([40.0, 40.0])
    patches = ref.extract_patches(obj, offsets[0] + centre, n)[None]
    got = tfp.object_big_merge(
        tf.constant(np.moveaxis(patches, 1, -1)), tf.constant(offsets, tf.float32)
    ).numpy()
    got = np.moveaxis(got, -1, 1)
    q = slice(n // 4, 3 * n // 4)
    np.testing.assert_allclose(got[0, :, q, q], patches[0, :, q, q], atol=1e-4)


def test_merge_has_finite_gradients(rng, crandn):
    patches = tf.constant(crandn((2, 32, 32, 4)))
    offsets = tf.constant(rng.uniform(-4, 4, (2, 4, 2)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(patches)
        loss = tf.reduce_sum(tf.abs(tfp.object_big_merge(patches, offsets)) ** 2)
    g = tape.gradient(loss, patches).numpy()
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
