"""Framework-neutral initial weights, batch order and the framework-free half of bundle
conversion (``specs/training.md`` "Seeding and determinism", ``specs/data-contracts.md``
"Converting bundles"). The cross-backend checks live in ``tests/parity``."""

from __future__ import annotations

import io
import math
from dataclasses import replace

import h5py
import numpy as np
import pytest

from ptycho_core.architecture import conv_layers
from ptycho_core.bundle import make_manifest, write_bundle
from ptycho_core.config import ModelConfig
from ptycho_core.convert import (
    check_weight_arrays,
    convert_bundle,
    keras_weight_arrays,
    weight_shapes,
)
from ptycho_core.errors import BundleError, ConfigError
from ptycho_core.seeding import batch_order, initial_weights

MC = ModelConfig(N=32, gridsize=2, n_filters_scale=1)


def test_initial_weights_follow_the_table_with_glorot_limits_and_zero_biases():
    w = initial_weights(MC, 3, intensity_scale=50.0)
    assert list(w) == list(weight_shapes(MC))
    heads = [f"stage{s}_head" for s in range(MC.physics_stages)]
    assert MC.physics_stages == 3 and set(heads) <= {r.name for r in conv_layers(MC)}
    for row in conv_layers(MC):
        k = w[f"{row.name}.weight"]
        assert k.shape == (row.out_channels, row.in_channels, 3, 3) and k.dtype == np.float32
        assert not w[f"{row.name}.bias"].any()
        if row.name in heads:  # the physics stages start as plain projections
            assert not k.any()
            continue
        limit = math.sqrt(6.0 / (9 * row.in_channels + 9 * row.out_channels))
        assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
        assert abs(float(k.std()) - limit / math.sqrt(3)) < 0.2 * limit  # uniform's std
    assert float(w["log_intensity_scale"]) == pytest.approx(math.log(50.0))
    assert np.array_equal(w["probe_real"], np.ones((32, 32), np.float32))


def test_zero_stage_heads_leave_the_other_layers_draws_unchanged():
    """The stages come last in the table and their heads draw nothing: every layer a model
    without stages has starts from the same numbers with them."""
    with_stages, without = initial_weights(MC, 5), initial_weights(replace(MC, physics_stages=0), 5)
    assert set(without) < set(with_stages)
    assert all(np.array_equal(without[k], with_stages[k]) for k in without)


def test_initial_weights_depend_on_the_seed_only():
    a, b, c = (initial_weights(MC, s) for s in (1, 1, 2))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["enc0_conv1.weight"], c["enc0_conv1.weight"])


def test_batch_order_is_a_seeded_permutation_per_epoch():
    e0, again, e1 = batch_order(50, 4, 0), batch_order(50, 4, 0), batch_order(50, 4, 1)
    assert sorted(e0.tolist()) == list(range(50)) and e0.dtype == np.int64
    assert np.array_equal(e0, again) and not np.array_equal(e0, e1)
    assert not np.array_equal(e0, batch_order(50, 5, 0))
    with pytest.raises(ValueError, match="epoch"):
        batch_order(5, 0, -1)


def _keras_like_file(arrays: dict[str, np.ndarray], drop: str | None = None) -> bytes:
    """An HDF5 file laid out as Keras 3 writes ``.weights.h5`` (generic keys, named groups)."""
    buf = io.BytesIO()
    with h5py.File(buf, "w") as fh:
        for i, row in enumerate(conv_layers(MC)):
            if row.name == drop:
                continue
            g = fh.create_group(f"layers/conv2d_{i}/vars")
            g.attrs["name"] = row.name
            g["0"] = arrays[f"{row.name}.weight"].transpose(2, 3, 1, 0)
            g["1"] = arrays[f"{row.name}.bias"]
        g = fh.create_group("layers/intensity_scale/vars")
        g.attrs["name"] = "intensity_scale"
        g["0"] = arrays["log_intensity_scale"]
        g = fh.create_group("layers/forward_model/vars")
        g.attrs["name"] = "forward_model"
        g["0"], g["1"] = arrays["probe_real"], arrays["probe_imag"]
    return buf.getvalue()


def test_keras_weights_are_read_without_tensorflow_into_the_canonical_layout():
    w = initial_weights(MC, 9, intensity_scale=7.0)
    w["amp_head.bias"] = np.arange(4, dtype=np.float32)
    got = keras_weight_arrays(_keras_like_file(w), MC, np.ones((32, 32)), "x.h5")
    assert list(got) == list(w)
    assert all(np.array_equal(got[k], w[k]) for k in w)


def test_a_keras_file_missing_a_layer_names_it():
    w = initial_weights(MC, 9)
    with pytest.raises(BundleError, match="amp_head"):
        keras_weight_arrays(_keras_like_file(w, drop="amp_head"), MC, np.ones((32, 32)), "x.h5")
    with pytest.raises(BundleError, match="x.h5"):
        keras_weight_arrays(b"not hdf5", MC, np.ones((32, 32)), "x.h5")


def test_weight_arrays_of_another_shape_are_refused():
    w = initial_weights(MC, 1)
    w["enc0_conv1.weight"] = w["enc0_conv1.weight"][:, :1]
    with pytest.raises(BundleError, match="enc0_conv1.weight"):
        check_weight_arrays(w, MC, "here")
    w = initial_weights(MC, 1)
    del w["phase_head.bias"]
    with pytest.raises(BundleError, match="1 missing"):
        check_weight_arrays(w, MC, "here")


def test_converting_to_the_same_backend_or_over_the_source_is_refused(tmp_path):
    w = initial_weights(MC, 2)
    manifest = make_manifest("tensorflow", MC, None, 1.0, {}, ["autoencoder"])
    src = write_bundle(tmp_path / "wts.h5.zip", manifest, {"model.weights.h5": _keras_like_file(w)})
    with pytest.raises(ConfigError, match="already a tensorflow bundle"):
        convert_bundle(src, tmp_path / "out.zip", "tensorflow")
    with pytest.raises(ConfigError, match="replace its source"):
        convert_bundle(src, tmp_path, "pytorch")
    (tmp_path / "taken.zip").write_bytes(b"x")
    with pytest.raises(ConfigError, match="exists"):
        convert_bundle(src, tmp_path / "taken.zip", "pytorch")
    with pytest.raises(ValueError, match="unknown backend"):
        convert_bundle(src, tmp_path / "o.zip", "jax")
