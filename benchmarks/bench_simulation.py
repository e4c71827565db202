"""Benchmark: simulate 10,000 diffraction patterns at N=64 (target >= 5,000 patterns/s).

Run: ``python benchmarks/bench_simulation.py [--patterns 10000] [--N 64] [--nphotons 1e9]
[--workers W] [--repeats R]``. Times ``simulation.simulate`` (patch extraction, FFT forward
model, Poisson sampling, ScanData validation) on a procedural object and the default probe,
best of R; the object/probe/scan set-up is timed separately. Asserts nothing.
"""

from __future__ import annotations

import argparse
import math
import os
import time

from ptycho_core import simulation as sim


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patterns", type=int, default=10_000)
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--nphotons", type=float, default=1e9)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    n, m = args.N, args.patterns
    side = max(2 * n, n + 8 * math.ceil(math.sqrt(m)))
    t0 = time.perf_counter()
    obj = sim.procedural_object(side, seed=0)
    probe = sim.default_probe(n)
    pos = sim.random_scan(m, obj.shape, n, seed=1)
    setup = time.perf_counter() - t0
    best = math.inf
    for r in range(args.repeats):
        t0 = time.perf_counter()
        scan = sim.simulate(obj, probe, pos, args.nphotons, seed=r, workers=args.workers)
        best = min(best, time.perf_counter() - t0)
    workers = args.workers or max(1, min(4, os.cpu_count() or 1))
    print(
        f"simulation: {m} patterns N={n}, object {side}x{side}, nphotons {args.nphotons:.3g}, "
        f"{workers} worker thread(s), {os.cpu_count()} CPUs"
    )
    print(f"set-up (object, probe, scan): {setup:.3f} s")
    print(f"simulate best of {args.repeats}: {best:.3f} s  ({m / best:,.0f} patterns/s)")
    print(
        f"mean counts/pattern: {float((scan.diffraction.astype('f8') ** 2).sum((1, 2)).mean()):.4g}"
    )


if __name__ == "__main__":
    main()
