"""The Keras model against core's ADR-002 layer table (``ptycho_core.architecture``) and
``specs/model.md`` behaviour."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ptycho_core import physics as ref
from ptycho_core.architecture import conv_layers, parameter_count, scalar_weights
from ptycho_core.config import ModelConfig
from ptycho_tf.model import build_models, weight_mapping


def _probe(n):
    return np.asarray(
        ref.normalize_probe(
            np.exp(
                -((np.arange(n) - n / 2) ** 2)[:, None] / 40
                - ((np.arange(n) - n / 2) ** 2)[None] / 40
            ).astype(np.complex64)
        ),
        np.complex64,
    )


CASES = [
    dict(N=32, gridsize=1, n_filters_scale=1, generator="cnn"),
    dict(N=32, gridsize=2, n_filters_scale=1, generator="cnn"),
    dict(N=64, gridsize=2, n_filters_scale=2, object_big=False, generator="cnn"),
    dict(N=64, gridsize=1, n_filters_scale=1, pad_object=False, generator="cnn"),
    dict(N=32, gridsize=1, n_filters_scale=2, probe_big=False, generator="cnn"),
    dict(N=128, gridsize=1, n_filters_scale=1, generator="cnn"),
    dict(N=32, gridsize=1, n_filters_scale=1),
    dict(N=32, gridsize=2, n_filters_scale=1),
    dict(N=64, gridsize=2, n_filters_scale=2, object_big=False),
    dict(N=128, gridsize=1, n_filters_scale=1),
]


@pytest.mark.parametrize("kw", CASES)
def test_layers_are_cores_table(kw):
    """My convolutions == ``ptycho_core.architecture.conv_layers`` (names, channels, the size
    they run at) and my weight order == its row order; parameter count == core's."""
    mc = ModelConfig(**kw)
    models = build_models(mc, probe=_probe(mc.N), intensity_scale=2.0)
    table = conv_layers(mc)
    convs = [layer for layer in models.autoencoder.layers if isinstance(layer, keras.layers.Conv2D)]
    assert sorted(layer.name for layer in convs) == sorted(row.name for row in table)
    for row in table:
        layer = models.autoencoder.get_layer(row.name)
        assert tuple(layer.kernel.shape) == (3, 3, row.in_channels, row.out_channels), row
        assert tuple(layer.bias.shape) == (row.out_channels,)
        assert tuple(layer.input.shape[1:]) == (row.size, row.size, row.in_channels), row
        assert layer.padding == "same" and tuple(layer.strides) == (1, 1)
    assert models.autoencoder.count_params() == parameter_count(mc)
    # weight_mapping: the table's row order, torch-style names, then scale and probe
    mapping = weight_mapping(models)
    want = [f"{row.name}.{p}" for row in table for p in ("weight", "bias")]
    assert [n for n, _ in mapping] == want + [name for name, _ in scalar_weights(mc)]
    model_vars = {id(v) for v in models.autoencoder.weights}
    assert all(id(v) in model_vars for _, v in mapping)
    d2o = models.diffraction_to_obj
    assert all(any(w is v for v in models.autoencoder.weights) for w in d2o.weights)


def test_supervised_parameter_count_has_no_probe():
    mc = ModelConfig(N=32, n_filters_scale=1, model_type="supervised")
    models = build_models(mc, intensity_scale=2.0)
    assert models.autoencoder.count_params() == parameter_count(mc) - 2 * mc.N**2


def _inputs(rng, b, mc, spread=4.0):
    x = rng.uniform(0.0, 3.0, (b, mc.N, mc.N, mc.C)).astype(np.float32)
    off = rng.uniform(-spread, spread, (b, mc.C, 2)).astype(np.float32)
    return {"x": x, "offsets": off}


def test_outputs_follow_the_forward_model(rng):
    mc = ModelConfig(
        N=32,
        gridsize=2,
        n_filters_scale=1,
        amp_activation="softplus",
        probe_mask=True,
        gaussian_smoothing_sigma=0.8,
    )
    probe = _probe(32)
    s = 7.5
    models = build_models(mc, probe=probe, intensity_scale=s)
    obj, amp, inten = (t.numpy() for t in models.autoencoder(_inputs(rng, 3, mc)))
    assert obj.dtype == np.complex64 and obj.shape == (3, 32, 32, 4)
    assert amp.dtype == np.float32 and inten.shape == amp.shape
    want = s * ref.forward_model(np.moveaxis(obj, -1, 1), probe, 0.8, True)
    np.testing.assert_allclose(np.moveaxis(amp, -1, 1), want, rtol=1e-4, atol=1e-4 * want.max())
    np.testing.assert_allclose(inten, amp**2, rtol=1e-6)
    assert np.all(np.abs(np.angle(obj)) <= math.pi + 1e-6)
    assert models.intensity_scale == pytest.approx(s)


def test_pad_object_confines_without_probe_big(rng):
    mc = ModelConfig(N=32, gridsize=1, n_filters_scale=1, probe_big=False, generator="cnn")
    obj = build_models(mc, probe=_probe(32)).diffraction_to_obj(_inputs(rng, 2, mc))
    obj = obj.numpy()[..., 0]
    outside = np.ones((32, 32), bool)
    outside[8:24, 8:24] = False
    assert np.all(obj[:, outside] == 0) and np.all(np.abs(obj[:, ~outside]) > 0)


@pytest.mark.parametrize(("stages", "atol"), [(0, 1e-5), (3, 1e-4)])
def test_gridsize2_merge_is_per_sample_at_large_batch(rng, stages, atol):
    """batch·C = 80 >= 64: every sample is merged with its own channels only (the reference
    merged the whole batch into one canvas); the physics stages too (their nine float32
    projections round differently in a batch of 20 and alone: ~1e-5)."""
    mc = ModelConfig(N=32, gridsize=2, n_filters_scale=1, physics_stages=stages)
    keras.utils.set_random_seed(5)
    models = build_models(mc, probe=_probe(32), intensity_scale=3.0)
    inp = _inputs(rng, 20, mc, spread=6.0)
    inp["offsets"][7] *= 0.25  # a sample with much smaller offsets than the others
    batch = models.diffraction_to_obj(inp).numpy()
    assert batch.shape == (20, 32, 32, 4)
    for i in (0, 7, 19):
        single = models.diffraction_to_obj({k: v[i : i + 1] for k, v in inp.items()}).numpy()
        np.testing.assert_allclose(batch[i], single[0], atol=atol)
    assert np.abs(batch[0] - batch[1]).max() > 1e-3  # different content stays different


def test_object_big_false_translates_single_patch(rng):
    mc = ModelConfig(N=32, gridsize=2, n_filters_scale=1, object_big=False)
    models = build_models(mc, probe=_probe(32))
    inp = _inputs(rng, 2, mc)
    inp["offsets"][:] = np.round(inp["offsets"])  # integer shifts: exact translation
    obj = models.diffraction_to_obj(inp).numpy()
    for c in range(4):  # channel c = patch moved by −offset_c = channel 0 moved by off_0 − off_c
        want = ref.translate(obj[0, ..., 0], inp["offsets"][0, 0] - inp["offsets"][0, c])
        mask = np.abs(want) > 0
        np.testing.assert_allclose(obj[0, ..., c][mask], want[mask], atol=1e-5, err_msg=str(c))


def test_two_configs_coexist(rng):
    a = build_models(
        ModelConfig(N=32, gridsize=1, n_filters_scale=1), probe=_probe(32), intensity_scale=2.0
    )
    b = build_models(
        ModelConfig(N=64, gridsize=2, n_filters_scale=1), probe=_probe(64), intensity_scale=9.0
    )
    assert a.intensity_scale == pytest.approx(2.0) and b.intensity_scale == pytest.approx(9.0)
    assert a.autoencoder(_inputs(rng, 1, a.model_config))[0].shape == (1, 32, 32, 1)
    assert b.autoencoder(_inputs(rng, 1, b.model_config))[0].shape == (1, 64, 64, 4)


def test_same_seed_same_initial_weights():
    mc = ModelConfig(N=32, n_filters_scale=1)

    def weights(seed):
        keras.utils.set_random_seed(seed)
        return [w.numpy() for w in build_models(mc, probe=_probe(32)).autoencoder.weights]

    a, b, c = weights(3), weights(3), weights(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=False))


def test_serialises_without_pickles_and_weights_round_trip(rng, tmp_path):
    mc = ModelConfig(N=32, gridsize=2, n_filters_scale=1)
    models = build_models(mc, probe=_probe(32), intensity_scale=4.0)
    config_json = models.autoencoder.to_json()  # custom layers are registered
    clone = keras.models.model_from_json(config_json)
    path = tmp_path / "m.weights.h5"
    models.autoencoder.save_weights(path)
    clone.load_weights(path)
    inp = _inputs(rng, 2, mc)
    for a, b in zip(models.autoencoder(inp), clone(inp), strict=False):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("act", ["sigmoid", "swish", "softplus", "relu"])
def test_amp_activations(rng, act):
    # gridsize 1: no physics stages, so the amplitude is the activation's own output
    mc = ModelConfig(N=32, gridsize=1, n_filters_scale=1, amp_activation=act, probe_big=False)
    obj = build_models(mc, probe=_probe(32)).diffraction_to_obj(_inputs(rng, 1, mc)).numpy()
    amp = np.abs(obj[0, 8:24, 8:24, 0])
    if act == "sigmoid":
        assert amp.max() < 1.0
    assert np.all(np.isfinite(amp))


def test_supervised_model_outputs_modulus(rng):
    mc = ModelConfig(N=32, n_filters_scale=1, model_type="supervised")
    models = build_models(mc, intensity_scale=2.0)
    obj, amp, inten = (t.numpy() for t in models.autoencoder(_inputs(rng, 2, mc)))
    np.testing.assert_allclose(amp, np.abs(obj), rtol=1e-6)
    assert models.forward_layer is None


def test_trainable_flags_make_real_weights(rng):
    mc = ModelConfig(N=32, n_filters_scale=1)
    fixed = build_models(mc, probe=_probe(32), intensity_scale=2.0)
    free = build_models(
        mc,
        probe=_probe(32),
        intensity_scale=2.0,
        probe_trainable=True,
        intensity_scale_trainable=True,
    )

    def names(m):
        return {w.path.split("/")[-1] for w in m.autoencoder.trainable_weights}

    assert not {"log_intensity_scale", "probe_real", "probe_imag"} & names(fixed)
    assert {"log_intensity_scale", "probe_real", "probe_imag"} <= names(free)
    assert tf.is_tensor(free.forward_layer.probe())


# ----------------------------------------------------------------------------- merge weights
def _wide_probe(n=32):
    from ptycho_core.simulation import beamline_probe

    return ref.normalize_probe(beamline_probe(n))


def _raw_patches(models, inp):
    """The network's patches before the merge, torch layout ``(B, C, N, N)``."""
    raw = keras.Model(
        models.autoencoder.inputs, models.autoencoder.get_layer("object_patch").output
    )
    return np.moveaxis(raw(inp).numpy(), -1, 1)


@pytest.mark.parametrize(
    "merge_weights,model_type,sigma,mask",
    [
        ("probe", "pinn", 0.0, False),
        ("probe", "pinn", 1.0, True),
        ("probe", "supervised", 0.0, False),
        ("centre", "pinn", 0.0, False),
    ],
)
def test_object_big_merge_uses_the_configured_weights(rng, merge_weights, model_type, sigma, mask):
    """specs/model.md: 'probe' weights the merge by the forward model's illumination intensity
    (peak 1), a supervised model (no illumination) by 1 everywhere, 'centre' by the centre N/2
    square; the model's merged patches are the oracle's merge of its raw patches (no physics
    stages after it: those are PhysicsStagesConformance's)."""
    mc = ModelConfig(
        N=32,
        gridsize=2,
        n_filters_scale=1,
        physics_stages=0,
        model_type=model_type,
        merge_weights=merge_weights,
        gaussian_smoothing_sigma=sigma,
        probe_mask=mask,
    )
    probe = _wide_probe()
    keras.utils.set_random_seed(8)
    models = build_models(mc, probe=probe, intensity_scale=2.0)
    inp = _inputs(rng, 2, mc, spread=3.0)
    got = np.moveaxis(models.diffraction_to_obj(inp).numpy(), -1, 1)
    if merge_weights == "centre":
        w = ref.center_mask(32)
    elif model_type == "supervised":
        w = np.ones((32, 32))
    else:
        w = ref.merge_weight(probe, sigma, mask)
    want = ref.object_big_merge(_raw_patches(models, inp), inp["offsets"], w)
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert models.autoencoder.get_layer("object_merge").get_config()["weights"] == (
        "centre" if merge_weights == "centre" else "uniform" if model_type != "pinn" else "probe"
    )


def test_trainable_probe_gets_no_gradient_through_the_merge_weights(rng):
    """The merge weights follow the current probe but stop its gradient (specs/model.md): the
    probe is learned through the forward model only."""
    mc = ModelConfig(N=32, gridsize=2, n_filters_scale=1)
    models = build_models(mc, probe=_wide_probe(), intensity_scale=2.0, probe_trainable=True)
    inp = _inputs(rng, 2, mc, spread=3.0)
    probe_vars = [models.forward_layer.probe_real, models.forward_layer.probe_imag]
    with tf.GradientTape(persistent=True) as tape:
        obj, _, inten = models.autoencoder(inp)
        through_merge = tf.reduce_sum(tf.abs(obj) ** 2)
        through_forward = tf.reduce_sum(inten)
    assert all(g is None for g in tape.gradient(through_merge, probe_vars))
    g = tape.gradient(through_forward, probe_vars)
    assert all(v is not None and float(tf.reduce_sum(tf.abs(v))) > 0 for v in g)
    # ... and a changed probe changes the merge (the weights are not frozen at build time)
    before = models.diffraction_to_obj(inp).numpy()
    models.forward_layer.set_probe(_wide_probe() * np.linspace(0.5, 1.5, 32))
    assert np.abs(models.diffraction_to_obj(inp).numpy() - before).max() > 1e-4


def test_weights_load_across_merge_weightings(rng):
    """'probe' calls the forward layer before the merge (another layer order); the weight file
    is keyed by layer name, so a 'centre' model's weights load strictly into a 'probe' one."""
    from ptycho_tf.bundle import TFBundleHooks

    hooks = TFBundleHooks()
    keras.utils.set_random_seed(9)
    centre = build_models(
        ModelConfig(N=32, gridsize=2, n_filters_scale=1, merge_weights="centre"),
        probe=_wide_probe(),
        intensity_scale=2.0,
    )
    probe = build_models(
        ModelConfig(N=32, gridsize=2, n_filters_scale=1),
        probe=_wide_probe() * 0.5,
        intensity_scale=2.0,
    )
    hooks.weights_from_bytes(probe, hooks.weights_to_bytes(centre), "centre weights")
    for (name, a), (_, b) in zip(weight_mapping(centre), weight_mapping(probe), strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_a_bundle_without_merge_weights_reconstructs_as_before(rng, tmp_path):
    """A bundle written before ModelConfig.merge_weights (no key in its manifest) was trained
    with the centre merge: it loads as merge_weights='centre' and gives the same patches as
    the model that wrote it; the same weights under 'probe' would not."""
    from ptycho_core.config import TrainingConfig
    from ptycho_core.testing import bundle_without_model_key
    from ptycho_tf.bundle import TFBundleHooks, load_bundle, save_bundle

    old_mc = ModelConfig(N=32, gridsize=2, n_filters_scale=1, merge_weights="centre")
    keras.utils.set_random_seed(10)
    old = build_models(old_mc, probe=_wide_probe(), intensity_scale=2.0)
    cfg = TrainingConfig(model=old_mc, output_dir=tmp_path, backend="tensorflow")
    path = save_bundle(tmp_path / "wts.h5.zip", old, cfg, normalization={"norm_factor": 1.0})
    legacy = bundle_without_model_key(path, "merge_weights", tmp_path / "legacy" / "wts.h5.zip")

    loaded = load_bundle(legacy)
    assert loaded.model_config.merge_weights == "centre"
    inp = _inputs(rng, 3, old_mc, spread=3.0)
    want = old.diffraction_to_obj(inp).numpy()
    np.testing.assert_array_equal(loaded.model.diffraction_to_obj(inp).numpy(), want)
    as_probe = build_models(
        ModelConfig(N=32, gridsize=2, n_filters_scale=1), probe=_wide_probe(), intensity_scale=2.0
    )
    hooks = TFBundleHooks()
    hooks.weights_from_bytes(as_probe, hooks.weights_to_bytes(loaded.model), "loaded")
    assert np.abs(as_probe.diffraction_to_obj(inp).numpy() - want).max() > 1e-3


def test_a_bundle_without_generator_loads_the_cnn_generator(tmp_path, rng):
    """A bundle written before ModelConfig.generator (no key in its manifest) holds the CNN
    generator's weights: it loads as generator='cnn' and predicts what the model that wrote it
    predicted (specs/model.md, legacy rule)."""
    from ptycho_core.config import TrainingConfig
    from ptycho_core.testing import bundle_without_model_key
    from ptycho_tf.bundle import load_bundle, save_bundle

    old_mc = ModelConfig(N=32, gridsize=2, n_filters_scale=1, generator="cnn")
    keras.utils.set_random_seed(11)
    old = build_models(old_mc, probe=_wide_probe(), intensity_scale=2.0)
    cfg = TrainingConfig(model=old_mc, output_dir=tmp_path, backend="tensorflow")
    path = save_bundle(tmp_path / "wts.h5.zip", old, cfg, normalization={"norm_factor": 1.0})
    legacy = bundle_without_model_key(path, "generator", tmp_path / "legacy" / "wts.h5.zip")

    loaded = load_bundle(legacy)
    assert loaded.model_config.generator == "cnn"
    inp = _inputs(rng, 3, old_mc, spread=3.0)
    want = old.diffraction_to_obj(inp).numpy()
    np.testing.assert_array_equal(loaded.model.diffraction_to_obj(inp).numpy(), want)


def test_training_and_inference_run_their_own_projection_counts(rng):
    """specs/model.md: the training model (``autoencoder``) runs PROJECTION_STEPS data
    projections per stage, the inference model ``inference_projection_steps``, through the same
    convs (a model whose inference count is PROJECTION_STEPS infers what training saw)."""
    from ptycho_core.architecture import PROJECTION_STEPS
    from ptycho_tf.layers import DataProjection, ProjectionRun

    mc = ModelConfig(N=32, n_filters_scale=1, physics_stages=2, inference_projection_steps=5)
    keras.utils.set_random_seed(9)
    models = build_models(mc, probe=_wide_probe(), intensity_scale=2.0)

    def projections(model):
        runs = [layer.steps for layer in model.layers if isinstance(layer, ProjectionRun)]
        return sum(isinstance(layer, DataProjection) for layer in model.layers) + sum(runs)

    assert projections(models.autoencoder) == 2 * PROJECTION_STEPS
    assert projections(models.diffraction_to_obj) == 2 * 5
    assert models.autoencoder.count_params() == models.diffraction_to_obj.count_params()
    same_mc = ModelConfig(N=32, n_filters_scale=1, physics_stages=2, inference_projection_steps=3)
    same = build_models(same_mc, probe=_wide_probe(), intensity_scale=2.0)
    same.load_weight_arrays(models.weight_arrays(), "test")
    inp = _inputs(rng, 2, mc, spread=3.0)
    trained = models.autoencoder(inp)[0].numpy()
    np.testing.assert_allclose(same.diffraction_to_obj(inp).numpy(), trained, atol=1e-5)
    assert np.abs(models.diffraction_to_obj(inp).numpy() - trained).max() > 1e-3
