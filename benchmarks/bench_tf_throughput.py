"""TensorFlow backend speed: machine matmul peak, training and inference throughput, and
end-to-end chunked inference + stitching of a large scan (positions/s, peak RSS).

    python benchmarks/bench_tf_throughput.py [--threads T] [--steps S] [--positions 10000]

Model FLOPs are counted analytically from the conv layer shapes (2 FLOPs per multiply-add,
forward; training = 3× forward for forward + backward). Non-conv work (FFTs, merge,
activations, pooling, optimiser) is not counted, so % of peak is a lower bound on how busy the
machine is. Peak = best fp32 ``tf.linalg.matmul`` of two square matrices in the same process.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(tf, sizes=(2048, 4096), reps: int = 8) -> float:
    """Best fp32 ``tf.linalg.matmul`` rate over square sizes (GFLOP/s, 2·n³ per product)."""
    mm = tf.function(tf.linalg.matmul, autograph=False)
    best_rate = 0.0
    for size in sizes:
        a = tf.random.normal((size, size))
        b = tf.random.normal((size, size))
        mm(a, b).numpy()
        for _ in range(reps):
            t = time.perf_counter()
            mm(a, b).numpy()
            best_rate = max(best_rate, 2 * size**3 / (time.perf_counter() - t) / 1e9)
    return best_rate


def bench_train(keras, tf, mc, batch: int, steps: int) -> float:
    """Training patterns/s (fit, steady state: the second epoch of ``steps`` steps)."""
    from ptycho_core.training import LossSpec
    from ptycho_tf.model import build_models
    from ptycho_tf.training import PtychoTrainer

    keras.utils.set_random_seed(0)
    n, c = mc.N, mc.C
    models = build_models(mc, probe=np.ones((n, n), np.complex64), intensity_scale=10.0)
    trainer = PtychoTrainer(models.autoencoder, LossSpec())
    trainer.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    rng = np.random.default_rng(0)
    x = (rng.random((batch, n, n, c)) * 10).astype(np.float32)
    ds = tf.data.Dataset.from_tensors({"x": x, "offsets": np.zeros((batch, c, 2), np.float32)})
    ds = ds.repeat()
    times = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)

    trainer.fit(ds, epochs=2, steps_per_epoch=steps, verbose=0, shuffle=False, callbacks=[Timer()])
    return batch * steps / times[-1]


def bench_infer(tf, mc, batch: int, steps: int) -> float:
    """Inference patterns/s of ``diffraction_to_obj`` in one traced graph."""
    from ptycho_tf.model import build_models

    n, c = mc.N, mc.C
    models = build_models(mc, probe=np.ones((n, n), np.complex64), intensity_scale=10.0)
    net = models.diffraction_to_obj

    def infer(x, o):
        return net({"x": x, "offsets": o}, training=False)

    run = tf.function(infer, autograph=False)
    x = tf.constant(np.random.default_rng(0).random((batch, n, n, c)).astype(np.float32) * 10)
    o = tf.zeros((batch, c, 2))
    for _ in range(3):
        run(x, o).numpy()
    t = time.perf_counter()
    for _ in range(steps):
        run(x, o).numpy()
    return batch * steps / (time.perf_counter() - t)


def bench_end_to_end(mc, positions: int, workdir: Path) -> tuple[float, float]:
    """Reconstruct a ``positions``-pattern scan with an untrained bundle: positions/s, peak RSS."""
    from ptycho_core.config import InferenceConfig, PyTorchExecutionConfig, TrainingConfig
    from ptycho_core.simulation import simulate_scan
    from ptycho_tf.backend import reconstruct
    from ptycho_tf.bundle import save_bundle
    from ptycho_tf.model import build_models

    scan = simulate_scan(N=mc.N, n_positions=positions, nphotons=1e6, seed=0)
    models = build_models(mc, probe=scan.probe, intensity_scale=1.0)
    path = save_bundle(workdir / "wts.h5.zip", models, TrainingConfig(model=mc), normalization={})
    ex = PyTorchExecutionConfig(enable_progress_bar=False, inference_batch_size=256)
    t = time.perf_counter()
    reconstruct(InferenceConfig(model=mc, model_path=path), ex, data=scan)
    return positions / (time.perf_counter() - t), rss_mib()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--k", type=int, default=2, help="n_filters_scale")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="TF intra-op threads")
    ap.add_argument("--positions", type=int, default=10000, help="end-to-end scan (0: skip)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import keras
    import tensorflow as tf

    from ptycho_core.architecture import conv_flops_per_group
    from ptycho_core.config import ModelConfig

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    mc = ModelConfig(N=args.N, gridsize=1, n_filters_scale=args.k)
    fwd = conv_flops_per_group(mc)
    devices = [d.name for d in tf.config.list_logical_devices()]
    print(
        f"tensorflow {tf.__version__}, keras {keras.__version__}, devices {devices}, "
        f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'auto'}"
    )
    peak_before = matmul_peak_gflops(tf)
    tr = bench_train(keras, tf, mc, args.batch, args.steps)
    infer = {
        b: bench_infer(tf, mc, b, max(5, args.steps * args.batch // b))
        for b in sorted({args.batch, 128})
    }
    peak_after = matmul_peak_gflops(tf)
    peak = max(peak_before, peak_after)
    print(
        f"fp32 matmul peak (tf.linalg.matmul 2048² and 4096², best of 8 each, measured before "
        f"and after the model runs): {peak_before:.1f} / {peak_after:.1f} GFLOP/s; "
        f"using {peak:.1f} (a large gap means the machine was shared)"
    )
    print(
        f"model N={args.N} gridsize=1 k={args.k}: {fwd / 1e9:.3f} GFLOP forward per pattern "
        f"(convs), training = 3x"
    )
    tr_gf = tr * 3 * fwd / 1e9
    print(
        f"training  batch {args.batch}: {tr:8.1f} patterns/s, {tr_gf:7.1f} GFLOP/s, "
        f"{100 * tr_gf / peak:5.1f}% of peak (target 50%)"
    )
    for b, rate in infer.items():
        gf = rate * fwd / 1e9
        print(
            f"inference batch {b}: {rate:8.1f} patterns/s, {gf:7.1f} GFLOP/s, "
            f"{100 * gf / peak:5.1f}% of peak (target 70%)"
        )
    if args.positions:
        with tempfile.TemporaryDirectory() as d:
            pps, rss = bench_end_to_end(mc, args.positions, Path(d))
        print(
            f"end-to-end reconstruct ({args.positions} positions, chunks of 256, stitched): "
            f"{pps:.1f} positions/s, peak RSS {rss:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
