"""Multi-process inference (``specs/training.md``, "Multi-device inference"): two CPU
processes (gloo, started by Lightning Fabric's DDP launcher from ``devices=2``) give the
one-process canvas within 1e-6; each rank predicted only its share of the batches."""

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from ptycho_core.config import (
    InferenceConfig,
    ModelConfig,
    PyTorchExecutionConfig,
    TrainingConfig,
)
from ptycho_core.io import save_npz
from ptycho_core.simulation import simulate_scan
from ptycho_torch.bundle import save_bundle
from ptycho_torch.model import PtychoModel
from ptycho_torch.workflows import reconstruct

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from ptycho_core.config import InferenceConfig, ModelConfig, PyTorchExecutionConfig
    from ptycho_torch.workflows import reconstruct


    def main():
        bundle, scan, out, gridsize = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
        cfg = InferenceConfig(model=ModelConfig(N=32, gridsize=gridsize, n_filters_scale=1),
                              model_path=bundle, test_data_file=scan)
        ex = PyTorchExecutionConfig(accelerator="cpu", devices=2, inference_batch_size=7)
        res = reconstruct(cfg, ex)
        rank = torch.distributed.get_rank()
        world = torch.distributed.get_world_size()
        np.save(f"{out}/object_rank{rank}.npy", res.object)
        np.save(f"{out}/coverage_rank{rank}.npy", res.coverage)
        print(f"RESULT rank={rank} world={world} ws={res.timings.get('world_size')}", flush=True)


    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("gridsize", [2])
def test_two_process_inference_gives_the_one_process_canvas(tmp_path, gridsize):
    torch.manual_seed(0)
    n = 32
    scan = simulate_scan(N=n, n_positions=45, nphotons=1e5, seed=3)
    probe = np.asarray(scan.probe, np.complex64)
    model = PtychoModel(N=n, gridsize=gridsize, n_filters_scale=1, probe=probe, intensity_scale=4.0)
    mc = ModelConfig(N=n, gridsize=gridsize, n_filters_scale=1)
    bundle = save_bundle(
        tmp_path / "wts.h5.zip",
        model,
        TrainingConfig(model=mc, output_dir=tmp_path),
        normalization={"norm_factor": 1.0},
    )
    data = tmp_path / "scan.npz"
    save_npz(data, scan)
    cfg = InferenceConfig(model=mc, model_path=bundle, test_data_file=data)
    one = reconstruct(cfg, PyTorchExecutionConfig(accelerator="cpu", inference_batch_size=7))

    script = tmp_path / "infer_ddp.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", PL_DISABLE_FORK="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(bundle), str(data), str(tmp_path), str(gridsize)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    # both ranks share the pipe: lines may interleave
    results = sorted(re.findall(r"RESULT rank=\d world=\d ws=[\d.]+", proc.stdout))
    assert results == [
        "RESULT rank=0 world=2 ws=2.0",
        "RESULT rank=1 world=2 ws=2.0",
    ], log[-4000:]
    for rank in (0, 1):
        obj = np.load(tmp_path / f"object_rank{rank}.npy")
        cov = np.load(tmp_path / f"coverage_rank{rank}.npy")
        np.testing.assert_allclose(obj, one.object, rtol=0, atol=1e-6)
        np.testing.assert_allclose(cov, one.coverage, rtol=0, atol=1e-6)
    assert (one.coverage > 0).mean() > 0.3 and np.abs(one.object).max() > 0
