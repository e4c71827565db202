"""The long fuzz run of the readers (``specs/data-contracts.md``, "Fuzzing").

Runs the harness of ``packages/ptycho-core/tests/test_fuzz_readers.py`` (the same mutations as
the CI test, which runs 2,000 / 1,000 / 1,000 cases) with many more cases per reader, in child
processes of :data:`CHUNK` cases (a crash in C code is recorded with its case and the run goes
on), and prints a Markdown table for ``benchmarks/README.md``. Every case must end in a result
that passes the soundness checks or in a ``PtychoError`` subclass; anything else (another
exception, an unsound result, a hang, a crash) is counted in "escapes", listed, and the exit
status is 1.

    OMP_NUM_THREADS=1 python benchmarks/bench_fuzz.py [--cases 20000] [--seed S]
        [--readers npz,product,bundle]
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

HARNESS = Path(__file__).resolve().parents[1] / "packages/ptycho-core/tests/test_fuzz_readers.py"


#: Cases per child process (a crash costs at most one chunk's re-run).
CHUNK = 2000


def _harness():
    spec = importlib.util.spec_from_file_location("fuzz_harness", HARNESS)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the fuzz harness {HARNESS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_harness"] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000, help="cases per reader")
    parser.add_argument("--seed", type=int, default=None, help="default: the CI seed")
    parser.add_argument("--readers", default="npz,product,bundle")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per chunk")
    args = parser.parse_args()
    fz = _harness()
    seed = fz.SEED if args.seed is None else args.seed
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, h5py {h5py.__version__} "
        f"(libhdf5 {h5py.version.hdf5_version}), seed {seed}, {args.cases} cases per reader"
    )
    print()
    print(
        "| reader | cases | accepted | refused (PtychoError) | escapes | s | cases/s | slowest ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    escapes: list[str] = []
    for name in args.readers.split(","):
        total: dict[str, Any] = {"cases": 0, "accepted": 0, "refused": 0, "seconds": 0.0}
        slowest = 0.0
        crashes = []
        start, end = 0, args.cases
        with tempfile.TemporaryDirectory() as tmp:
            while start < end:
                n = min(CHUNK, end - start)
                st = fz.run_fuzz_isolated(
                    name, n, Path(tmp), start=start, seed=seed, timeout=args.timeout
                )
                if st["crash"] is not None:  # a crash in C code: record it, redo the rest
                    crashes.append(st["crash"].splitlines()[0])
                    bad = int(st["last_case"].split()[0])
                    if bad > start:
                        st = fz.run_fuzz_isolated(
                            name,
                            bad - start,
                            Path(tmp),
                            start=start,
                            seed=seed,
                            timeout=args.timeout,
                        )
                    n = bad - start + 1
                    total["cases"] += 1
                if st.get("crash") is None and "cases" in st:
                    for key in ("cases", "accepted", "refused", "seconds"):
                        total[key] += st[key]
                    slowest = max(slowest, st["slowest_s"])
                    escapes += [f"{name}: {e}" for e in st["escapes"]]
                start += n
        bad_cases = len(crashes) + sum(1 for e in escapes if e.startswith(f"{name}:"))
        print(
            f"| {name} | {total['cases']} | {total['accepted']} | {total['refused']} | "
            f"{bad_cases} | {total['seconds']:.0f} | {total['cases'] / total['seconds']:.0f} | "
            f"{slowest * 1e3:.0f} |",
            flush=True,
        )
        escapes += [f"{name}: crash: {c}" for c in crashes]
    for line in escapes:
        print(line)
    return 1 if escapes else 0


if __name__ == "__main__":
    raise SystemExit(main())
