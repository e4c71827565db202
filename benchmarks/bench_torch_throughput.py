"""PyTorch backend speed: machine matmul peak, training and inference throughput, and end-to-end
inference + stitching of a large scan (positions/s, peak RSS).

    python benchmarks/bench_torch_throughput.py [--threads T] [--steps S] [--positions 10000]

Model FLOPs are counted analytically from the conv layer shapes (2 FLOPs per multiply-add,
forward; training = 3× forward for forward + backward). Non-conv work (FFTs, activations,
pooling, optimiser) is not counted, so % of peak is a lower bound on how busy the machine is.
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(size: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def bench_train(n: int, k: int, batch: int, steps: int, channels_last: bool) -> tuple[float, int]:
    from ptycho_torch.losses import PtychoLoss
    from ptycho_torch.model import PtychoModel

    torch.manual_seed(0)
    m = PtychoModel(
        N=n, gridsize=1, n_filters_scale=k, intensity_scale=10.0, channels_last=channels_last
    )
    loss = PtychoLoss()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    x = torch.rand(batch, 1, n, n) * 10
    off = torch.zeros(batch, 1, 2)
    warm = 3
    for i in range(steps + warm):
        if i == warm:
            t0 = time.perf_counter()
        out = m(x, off)
        val = loss(out, x)["loss"]
        opt.zero_grad(set_to_none=True)
        val.backward()
        opt.step()
    dt = time.perf_counter() - t0
    return batch * steps / dt, m.conv_flops_per_pattern()


def bench_infer(n: int, k: int, batch: int, steps: int, channels_last: bool) -> tuple[float, int]:
    from ptycho_torch.model import PtychoModel

    torch.manual_seed(0)
    m = PtychoModel(
        N=n, gridsize=1, n_filters_scale=k, intensity_scale=10.0, channels_last=channels_last
    ).eval()
    x = torch.rand(batch, 1, n, n) * 10
    warm = 3
    with torch.inference_mode():
        for i in range(steps + warm):
            if i == warm:
                t0 = time.perf_counter()
            m.diffraction_to_obj(x)
    dt = time.perf_counter() - t0
    return batch * steps / dt, m.conv_flops_per_pattern()


def bench_end_to_end(n_positions: int, n: int, k: int, batch: int) -> dict[str, float]:
    from ptycho_core.config import (
        InferenceConfig,
        ModelConfig,
        PyTorchExecutionConfig,
        TrainingConfig,
    )
    from ptycho_core.simulation import simulate_scan
    from ptycho_torch.backend import reconstruct
    from ptycho_torch.bundle import save_bundle
    from ptycho_torch.model import build_model

    t = time.perf_counter()
    scan = simulate_scan(N=n, n_positions=n_positions, nphotons=1e6, seed=0)
    sim_s = time.perf_counter() - t
    rss_data = rss_mib()
    mc = ModelConfig(N=n, gridsize=1, n_filters_scale=k)
    torch.manual_seed(0)
    model = build_model(mc, probe=scan.probe, intensity_scale=10.0)
    with tempfile.TemporaryDirectory() as d:
        path = save_bundle(
            Path(d) / "wts.h5.zip", model, TrainingConfig(model=mc, output_dir=d), normalization={}
        )
        ex = PyTorchExecutionConfig(accelerator="cpu", inference_batch_size=batch)
        t = time.perf_counter()
        res = reconstruct(InferenceConfig(model=mc, model_path=path), ex, data=scan)
        wall = time.perf_counter() - t
    return {
        "positions": n_positions,
        "object_px": res.amplitude.size,
        "simulate_s": sim_s,
        "wall_s": wall,
        "positions_per_s": n_positions / wall,
        "predict_s": res.timings.get("predict_s", float("nan")),
        "rss_after_data_mib": rss_data,
        "peak_rss_mib": rss_mib(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--k", type=int, default=2, help="n_filters_scale")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--positions", type=int, default=10_000, help="end-to-end scan size (0: skip)")
    ap.add_argument("--inference-batch", type=int, default=64)
    ap.add_argument("--no-channels-last", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    cl = not args.no_channels_last
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, channels_last={cl}")
    peak = matmul_peak_gflops()
    print(f"machine fp32 matmul peak (torch.mm 2048², best of 10): {peak:8.1f} GFLOP/s")
    pps, fl = bench_train(args.N, args.k, args.batch, args.steps, cl)
    achieved = pps * 3 * fl / 1e9
    print(f"model N={args.N} gridsize=1 k={args.k}: {fl / 1e9:.3f} GFLOP/pattern forward (convs)")
    print(
        f"training  batch {args.batch}: {pps:8.1f} patterns/s  {achieved:8.1f} GFLOP/s  "
        f"{100 * achieved / peak:5.1f}% of peak (target >= 50%)"
    )
    pps_i, _ = bench_infer(args.N, args.k, args.batch, args.steps, cl)
    ach_i = pps_i * fl / 1e9
    print(
        f"inference batch {args.batch}: {pps_i:8.1f} patterns/s  {ach_i:8.1f} GFLOP/s  "
        f"{100 * ach_i / peak:5.1f}% of peak (target >= 70%)"
    )
    if args.positions:
        e2e = bench_end_to_end(args.positions, args.N, args.k, args.inference_batch)
        print(
            f"end to end: {e2e['positions']} positions (object {e2e['object_px']} px) "
            f"inferred + stitched in "
            f"{e2e['wall_s']:.1f} s = {e2e['positions_per_s']:.1f} positions/s "
            f"(predict {e2e['predict_s']:.1f} s); peak RSS {e2e['peak_rss_mib']:.0f} MiB "
            f"(after simulating the scan: {e2e['rss_after_data_mib']:.0f} MiB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
