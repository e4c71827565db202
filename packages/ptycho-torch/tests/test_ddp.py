"""Multi-device training with Lightning's own DDP (``specs/training.md``): two CPU processes
(gloo), run in a subprocess with a timeout; training works and exactly one bundle is written (by
rank 0)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    torch.set_num_threads(1)
    from ptycho_core.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
    from ptycho_core.simulation import simulate_scan
    from ptycho_torch.backend import train


    def main():
        out, strategy = sys.argv[1], sys.argv[2]
        scan = simulate_scan(N=32, n_positions=40, nphotons=1e5, seed=1)
        cfg = TrainingConfig(model=ModelConfig(N=32, gridsize=1, n_filters_scale=1), batch_size=8,
                             nepochs=2, output_dir=out, seed=5, validation_fraction=0.2)
        ex = PyTorchExecutionConfig(accelerator="cpu", strategy=strategy, devices=2,
                                    enable_progress_bar=False, logger_backend="none",
                                    enable_checkpointing=False)
        res = train(cfg, ex, train_data=scan)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        print(f"RESULT rank={res.global_rank} epochs={res.epochs_trained} world={world}",
              flush=True)


    if __name__ == "__main__":  # ddp_spawn re-imports this file in its workers
        main()
    """
)


@pytest.mark.slow
# ddp_spawn is supported (specs/torch-backend.md) but not run here: on this 2-core CI box one
# spawned gloo worker intermittently aborted at teardown ("terminate called without an active
# exception") after fit had finished; the re-launching `ddp` strategy has not shown it.
@pytest.mark.parametrize("strategy", ["ddp"])
def test_two_process_cpu_ddp_writes_one_bundle(tmp_path, strategy):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0", PL_DISABLE_FORK="1")
    proc = subprocess.run(
        [sys.executable, str(script), str(out), strategy],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    results = sorted(line for line in proc.stdout.splitlines() if line.startswith("RESULT"))
    if strategy == "ddp":  # every rank runs the script
        assert results == ["RESULT rank=0 epochs=2 world=2", "RESULT rank=1 epochs=2 world=2"], log[
            -4000:
        ]
    else:  # the calling process collects rank 0's results; workers only fit
        assert results == ["RESULT rank=0 epochs=2 world=1"], log[-4000:]
        assert "world_size=2" in log or "distributed_backend=gloo" in log or "MEMBER: 2/2" in log, (
            log[-4000:]
        )
    bundles = sorted(p.name for p in out.rglob("*.zip"))
    assert bundles == ["wts.h5.zip"]
    assert not list(out.rglob("*.tmp")), "stray temporary files"
    assert (out / "history.csv").read_text().count("\n") == 3  # header + 2 epochs
