"""Damaged files: every reader either succeeds or raises its own typed error, never anything else.

Seeded byte flips and truncations of a valid bundle, NPZ scan and product file (~100 each).
A reader that raises e.g. ``struct.error``, ``zlib.error`` or ``KeyError`` fails this test.
"""

from __future__ import annotations

import numpy as np
import pytest

from ptycho_core.bundle import make_manifest, npy_bytes, read_bundle, write_bundle
from ptycho_core.errors import BundleError, DataContractError
from ptycho_core.io import (
    ScanData,
    load_npz,
    read_product,
    save_npz,
    scan_to_product,
    write_product,
)

CASES = 100


def _scan():
    rng = np.random.default_rng(0)
    return ScanData(
        rng.random((4, 8, 8)),
        rng.random(4) * 8 + 4,
        rng.random(4) * 8 + 4,
        (rng.random((8, 8)) + 1j).astype(np.complex64),
        object=np.ones((16, 16), np.complex64),
    )


def _mutations(data: bytes, seed: int, n: int):
    """Yield ``n`` damaged copies: truncations, single/multi byte flips, zeroed runs."""
    rng = np.random.default_rng(seed)
    size = len(data)
    for k in range(n):
        buf = bytearray(data)
        kind = k % 4
        if kind == 0:
            yield bytes(buf[: int(rng.integers(0, size))])
            continue
        if kind == 1:
            i = int(rng.integers(0, size))
            buf[i] ^= 1 << int(rng.integers(0, 8))
        elif kind == 2:
            for i in rng.integers(0, size, size=int(rng.integers(2, 20))):
                buf[int(i)] = int(rng.integers(0, 256))
        else:
            # damage near the end, where zip central directories and HDF5 metadata often sit
            start = int(rng.integers(max(0, size - 400), size))
            buf[start : start + int(rng.integers(1, 16))] = b"\xff" * 8
        yield bytes(buf)


def _fuzz(tmp_path, data, reader, allowed, seed):
    outcomes = {"ok": 0, "error": 0}
    target = tmp_path / "fuzzed"
    for damaged in _mutations(data, seed, CASES):
        target.write_bytes(damaged)
        try:
            reader(target)
        except allowed:
            outcomes["error"] += 1
        else:
            outcomes["ok"] += 1
    assert outcomes["error"] > CASES // 4, outcomes  # the damage really was detected often


def test_fuzz_bundle(tmp_path):
    path = tmp_path / "wts.h5.zip"
    manifest = make_manifest("pytorch", {"N": 8}, {}, 3.0, {}, ["m"])
    write_bundle(
        path,
        manifest,
        {
            "probe.npy": npy_bytes(np.ones((8, 8), np.complex64)),
            "state_dict.pt": bytes(range(256)) * 8,
        },
    )
    _fuzz(tmp_path, path.read_bytes(), read_bundle, BundleError, seed=1)


def test_fuzz_npz(tmp_path):
    path = tmp_path / "scan.npz"
    save_npz(path, _scan(), nphotons=1e4)
    _fuzz(tmp_path, path.read_bytes(), load_npz, DataContractError, seed=2)


@pytest.mark.filterwarnings("ignore")
def test_fuzz_product(tmp_path):
    path = tmp_path / "p.h5"
    write_product(path, scan_to_product(_scan(), pixel_size_m=1e-8, loss_values=[1.0, 0.5]))
    _fuzz(tmp_path, path.read_bytes(), read_product, DataContractError, seed=3)
