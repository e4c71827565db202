"""Shared fixtures of the TensorFlow backend tests (TF is imported in this process only)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
import tensorflow as tf

# Two cores shared by several processes: keep TF's thread pools small.
try:
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)
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
