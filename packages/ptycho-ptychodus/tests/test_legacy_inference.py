"""Ptychodus's inference call sequence on the legacy surface gives exactly what the TensorFlow
backend gives when called directly (``specs/ptychodus.md``). Imports TensorFlow: this file runs
in the TensorFlow test process (``scripts/test.sh --suite tf``)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import ptycho.loader
import ptycho.params
import ptycho.probe
import ptycho.tf_helper
from ptycho._model import DeferredObject
from ptycho.config.config import InferenceConfig, ModelConfig, update_legacy_dict
from ptycho.raw_data import RawData
from ptycho.workflows.components import load_inference_bundle
from ptycho_core import engine
from ptycho_core.config import InferenceConfig as CoreInferenceConfig
from ptycho_core.config import ModelConfig as CoreModelConfig
from ptycho_core.config import TrainingConfig as CoreTrainingConfig
from ptycho_core.simulation import simulate_scan

N = 32


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """An untrained TensorFlow model saved as a bundle (the weights are what they are; only the
    equality of the two call paths matters)."""
    import tensorflow as tf  # a dependency of ptycho-ptychodus: missing is a failure

    tf.config.threading.set_intra_op_parallelism_threads(2)
    from ptycho_tf.workflows import HOOKS

    mc = CoreModelConfig(N=N, gridsize=1, n_filters_scale=1)
    tc = CoreTrainingConfig(model=mc, backend="tensorflow")
    probe = simulate_scan(N=N, n_positions=4, seed=1).probe
    model = HOOKS.build_model(
        mc, probe=probe, intensity_scale=3.0, probe_trainable=False, intensity_scale_trainable=False
    )
    path = tmp_path_factory.mktemp("bundle") / "wts.h5.zip"
    engine.save_bundle(HOOKS, path, model, tc, normalization={})
    return path


def test_legacy_sequence_equals_the_backend(bundle, caplog):
    from ptycho_tf.backend import reconstruct

    sim = simulate_scan(N=N, n_positions=30, seed=2)
    counts = np.rint(sim.diffraction.astype(np.float64) ** 2)
    grid = np.ones((sim.object.shape[0] + 4, sim.object.shape[1] + 2), np.complex64)

    # --- what Ptychodus 1.7's child does (model/ptychopinn/_subprocess.py run_reconstruct)
    inference = InferenceConfig(model=ModelConfig(N=N, gridsize=2, probe_scale=5.0))
    update_legacy_dict(ptycho.params.cfg, inference)
    with caplog.at_level(logging.INFO):
        model, _ = load_inference_bundle(bundle.parent)
        raw = RawData.from_coords_without_pc(
            xcoords=sim.xcoords,
            ycoords=sim.ycoords,
            diff3d=counts,
            probeGuess=sim.probe[None],
            scan_index=np.zeros(len(counts), int),
            objectGuess=grid,
        )
        ptycho.probe.set_probe_guess(None, raw.probeGuess)
        ds = raw.generate_grouped_data(N, K=7, nsamples=1, gridsize=inference.model.gridsize)
        container = ptycho.loader.load(lambda: ds, raw.probeGuess, which=None, create_split=False)
        s = ptycho.params.get("intensity_scale")
        predicted = model.predict([container.X * s, container.local_offsets])
        obj = np.squeeze(
            ptycho.tf_helper.reassemble_position(predicted, container.global_offsets, M=20)
        )
    assert s == 3.0 and isinstance(predicted, DeferredObject)
    # the settings the bundle overrides are logged, one line each
    assert "gridsize = 2 ignored" in caplog.text and "probe_scale = 5.0 ignored" in caplog.text

    # --- our backend called directly on sqrt(counts), the same grid and crop
    scan = raw.to_scan()
    np.testing.assert_array_equal(scan.diffraction, np.sqrt(counts).astype(np.float32))
    direct = reconstruct(
        CoreInferenceConfig(model=model.model_config, model_path=bundle, stitch_crop=20),
        data=scan,
    )
    assert obj.shape == grid.shape and obj.dtype == np.complex64
    assert np.abs(obj).max() > 0
    np.testing.assert_allclose(obj, direct.object, rtol=0, atol=1e-5)

    # X scaled by anything but the bundle's s is refused (the engine applies s itself)
    with pytest.raises(ValueError, match="intensity scale"):
        model.predict([container.X * (2 * s), container.local_offsets])
    with pytest.raises(TypeError, match="deferred"):
        np.asarray(container.X)
