"""Benchmark: group 100,000 random scan positions with gridsize 2 (well under 1 s).

Target: ``specs/configuration.md``.
Run: ``python benchmarks/bench_grouping.py [--positions M] [--gridsize G] [--repeats R]``.
Prints the best wall time and groups per second; asserts nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from ptycho_core.grouping import group_indices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=100_000)
    ap.add_argument("--gridsize", type=int, default=2)
    ap.add_argument("--neighbor-count", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    side = np.sqrt(args.positions) * 4.0  # ~4 px spacing, like a dense scan
    pos = rng.uniform(0, side, size=(args.positions, 2))
    best = np.inf
    for r in range(args.repeats):
        t0 = time.perf_counter()
        groups = group_indices(pos, args.gridsize, neighbor_count=args.neighbor_count, seed=r)
        best = min(best, time.perf_counter() - t0)
    print(
        f"grouping: {args.positions} positions, gridsize {args.gridsize}, "
        f"K={args.neighbor_count} -> {groups.shape[0]} groups of {groups.shape[1]}"
    )
    print(f"best of {args.repeats}: {best:.3f} s  ({groups.shape[0] / best:,.0f} groups/s)")


if __name__ == "__main__":
    main()
