"""Benchmark: stitch 100,000 patches (N=64, crop 20) chunk by chunk (bounded memory).

Target: ``specs/training.md``.
Run:
``python benchmarks/bench_stitching.py [--patches 100000 10000] [--canvas 2048] [--chunk 4096]``.
Each patch count runs in its own subprocess so that peak RSS (``resource.getrusage``) is measured
per run; equal peaks for 10k and 100k patches show memory does not grow with the patch count.
Patches come from one reused pool (content is irrelevant to speed) at fresh random positions;
the timed part is ``Stitcher.add`` over all chunks plus ``Stitcher.result``. Asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(n_patches: int, n: int, crop: int, canvas: int, chunk: int) -> None:
    from ptycho_core.stitching import Stitcher

    rng = np.random.default_rng(0)
    rss_start = _peak_rss_mib()
    pool = np.empty((chunk, n, n), dtype=np.complex64)
    pool.real = rng.standard_normal(size=(chunk, n, n), dtype=np.float32)
    pool.imag = rng.standard_normal(size=(chunk, n, n), dtype=np.float32)
    st = Stitcher(n, crop, object_shape=(canvas, canvas))
    rss_before = _peak_rss_mib()
    elapsed = 0.0
    done = 0
    while done < n_patches:
        b = min(chunk, n_patches - done)
        pos = rng.uniform(n / 2, canvas - n / 2 - 1, size=(b, 2))
        t0 = time.perf_counter()
        st.add(pool[:b], pos)
        elapsed += time.perf_counter() - t0
        done += b
    t0 = time.perf_counter()
    res = st.result()
    elapsed += time.perf_counter() - t0
    print(
        f"{n_patches} {elapsed:.4f} {_peak_rss_mib():.1f} {rss_before:.1f} {rss_start:.1f} "
        f"{res.covered.mean():.4f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--crop", type=int, default=20)
    ap.add_argument("--canvas", type=int, default=2048, help="object frame side (pixels)")
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.N, args.crop, args.canvas, args.chunk)
        return
    print(
        f"stitching: N={args.N}, crop={args.crop}, canvas {args.canvas}x{args.canvas}, "
        f"chunk {args.chunk} (each run in its own process)"
    )
    for m in args.patches:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(m),
                "--N",
                str(args.N),
                "--crop",
                str(args.crop),
                "--canvas",
                str(args.canvas),
                "--chunk",
                str(args.chunk),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        n_p, t = int(out[0]), float(out[1])
        peak, setup, start, covered = (float(v) for v in out[2:6])
        print(
            f"{n_p:>8d} patches: {t:7.3f} s  {n_p / t:>10,.0f} patches/s  "
            f"peak RSS {peak:7.1f} MiB "
            f"(interpreter+numpy {start:.1f}, +pool+canvas {setup:.1f})  "
            f"covered {100 * covered:.1f}%"
        )


if __name__ == "__main__":
    main()
