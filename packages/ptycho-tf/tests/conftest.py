"""Shared fixtures of the TensorFlow backend tests (TF is imported in this process only)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import tensorflow as tf

# scripts/test.sh runs one pytest process at a time: two threads in each pool (two cores).
# An inter-op pool of one made the slow realistic-quality test 1.7x slower (152 s vs 88 s).
try:
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
except RuntimeError:  # already initialised
    pass


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _random_complex(rng, shape, dtype=np.complex64):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


@pytest.fixture
def crandn(rng):
    """``crandn(shape)``: seeded complex64 Gaussian noise."""
    return lambda shape: _random_complex(rng, shape)
