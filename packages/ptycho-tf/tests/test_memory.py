"""Building models repeatedly in one process keeps memory bounded (``specs/packages.md``: no
global state)."""

import gc
import sys

import keras
import numpy as np
import pytest

from ptycho_core.config import ModelConfig
from ptycho_tf.model import build_models

RSS_GROWTH_BOUND_MB = 25.0  # builds 2→5 (caches warm); one leaked model is ~10 MB of weights


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_five_builds_keep_rss_bounded():
    mc = ModelConfig(N=64, gridsize=2, n_filters_scale=2)  # ~2.4 M parameters, ~10 MB weights
    x = {"x": np.ones((4, 64, 64, 4), np.float32), "offsets": np.zeros((4, 4, 2), np.float32)}
    rss = []
    for _i in range(5):
        keras.backend.clear_session()
        models = build_models(mc, probe=np.ones((64, 64), np.complex64), intensity_scale=2.0)
        models.autoencoder(x)
        del models
        gc.collect()
        rss.append(_rss_mb())
    growth = rss[-1] - rss[1]
    assert growth < RSS_GROWTH_BOUND_MB, f"RSS after each build (MB): {rss}"
