"""Worker for ``test_tf_entry.py``: reconstruct a scan by calling our backend directly, in its
own process (the pytest process imports no framework; ``specs/packages.md`` rule 9).

Usage: ``python _tf_direct.py BUNDLE SCAN.npz OUT.npy STITCH_CROP``. Writes the stitched object
``(H, W) complex64`` to ``OUT.npy`` (no pickles).
"""

from __future__ import annotations

import sys

import numpy as np

from ptycho_core import engine
from ptycho_core.backends import load_backend
from ptycho_core.bundle import read_manifest
from ptycho_core.config import InferenceConfig
from ptycho_core.io import load_npz


def main(bundle: str, scan_file: str, out: str, crop: str) -> None:
    manifest = read_manifest(bundle)
    model, _ = engine.bundle_configs(manifest, bundle)
    backend = load_backend(str(manifest["backend"]))
    config = InferenceConfig(model=model, model_path=bundle, stitch_crop=int(crop))
    result = backend.reconstruct(config, data=load_npz(scan_file))
    np.save(out, np.asarray(result.object, np.complex64), allow_pickle=False)


if __name__ == "__main__":
    main(*sys.argv[1:5])
