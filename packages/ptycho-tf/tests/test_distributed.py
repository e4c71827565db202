"""``devices > 1`` trains with ``tf.distribute.MirroredStrategy``; checked on two logical CPU
devices in a subprocess (the logical-device split must happen before TF initialises)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    tf.config.threading.set_intra_op_parallelism_threads(1)
    from ptycho_core.config import ExecutionConfig, ModelConfig, TrainingConfig
    from ptycho_core.simulation import simulate_scan
    from ptycho_tf.execution import resolve_strategy
    from ptycho_tf.workflows import train
    scan = simulate_scan(N=32, n_positions=48, nphotons=1e6, seed=2)
    out = {}
    for devices in (2, 1):
        ex = ExecutionConfig(accelerator="cpu", devices=devices, enable_progress_bar=False,
                                    enable_checkpointing=False)
        strategy = resolve_strategy(ex)
        cfg = TrainingConfig(model=ModelConfig(N=32, gridsize=2, n_filters_scale=1), nepochs=2,
                             batch_size=8, output_dir=os.path.join(sys.argv[1], str(devices)),
                             backend="tensorflow", seed=7, validation_fraction=0.25)
        res = train(cfg, ex, train_data=scan)
        out[devices] = {"strategy": type(strategy).__name__,
                        "replicas": strategy.num_replicas_in_sync,
                        "train_loss": res.history["train_loss"],
                        "val_loss": res.history["val_loss"]}
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    out = json.loads(line[len("RESULT ") :])
    two, one = out["2"], out["1"]
    assert two["strategy"] == "MirroredStrategy" and two["replicas"] == 2
    assert one["strategy"] == "OneDeviceStrategy"
    # Same seed and data order: the replica-averaged loss equals the single-device loss
    # (validates the loss scaling by the replica count).
    for key in ("train_loss", "val_loss"):
        for a, b in zip(two[key], one[key], strict=False):
            assert a == pytest.approx(b, rel=2e-3), (key, two[key], one[key])
