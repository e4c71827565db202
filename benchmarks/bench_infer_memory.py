"""Peak memory of inference at 1k vs 10k positions (issue D17; target: 10k within 1.3x of 1k).

Two measurements, each in a fresh process so that its peak RSS is its own:

- ``core``: ``ptycho_core.workflow.prepare_inference`` + ``run_inference`` on the scan file with
  a fake ``predict`` (returns ones; no framework), i.e. loading, validating, normalising,
  grouping and stitching;
- ``cli``: ``ptycho -q infer RUN SCAN.npz`` with a real bundle (the PyTorch backend; a tiny
  model trained for one epoch on 32 groups, since the weights do not change the memory).

Scans are simulated (``ptycho simulate``, which writes the ground-truth patches ``Y`` too, as
the audit's scans had). Prints a Markdown table for ``benchmarks/README.md``.

    OMP_NUM_THREADS=1 python benchmarks/bench_infer_memory.py [--positions 1000,10000] [--N 64]
        [--mode core|cli|both] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_CORE = r"""
import sys
import numpy as np
from ptycho_core.config import InferenceConfig, ModelConfig
from ptycho_core.runtime import peak_rss_bytes
from ptycho_core.workflow import prepare_inference, run_inference

path, n = sys.argv[1], int(sys.argv[2])
base = peak_rss_bytes()
manifest = {"model_config": {"N": n, "gridsize": 1}, "intensity_scale": 1.0}
model = ModelConfig(N=n, gridsize=1)
prepared = prepare_inference(InferenceConfig(model=model, test_data_file=path), manifest)
ones = lambda b: np.ones((len(b), 1, n, n), np.complex64)
result = run_inference(prepared, ones, batch_size=256, backend="pytorch")
print(base / 2**20, peak_rss_bytes() / 2**20, result.object.shape)
"""

_WRAP = r"""
import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def _ptycho() -> list[str]:
    exe = shutil.which("ptycho", path=str(Path(sys.executable).parent)) or shutil.which("ptycho")
    return [exe] if exe else [sys.executable, "-m", "ptycho_cli"]


def _run(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", default="1000,10000")
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--mode", choices=("core", "cli", "both"), default="both")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(v) for v in args.positions.split(",")]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_infer_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    ptycho = _ptycho()
    scans = {}
    for m in sizes:
        scans[m] = work / f"scan{m}.npz"
        if not scans[m].exists():
            _run(
                [
                    *ptycho,
                    "-q",
                    "simulate",
                    str(scans[m]),
                    "--N",
                    str(args.N),
                    "--n-positions",
                    str(m),
                    "--no-plot",
                ]
            )
    print(
        f"N = {args.N}; scan files: "
        + ", ".join(f"{m}: {scans[m].stat().st_size / 2**20:.0f} MiB" for m in sizes)
    )
    print()
    print("| mode | positions | peak RSS MiB | ratio to the first |")
    print("|---|---|---|---|")
    if args.mode in ("core", "both"):
        first = None
        for m in sizes:
            base, peak, _ = _run([sys.executable, "-c", _CORE, str(scans[m]), str(args.N)]).split(
                maxsplit=2
            )
            first = first or float(peak)
            print(
                f"| core, fake predict (after imports: {float(base):.0f}) | {m} | "
                f"{float(peak):.0f} | {float(peak) / first:.2f} |",
                flush=True,
            )
    if args.mode in ("cli", "both"):
        run = work / "run"
        if not (run / "wts.h5.zip").exists():
            _run(
                [
                    *ptycho,
                    "-q",
                    "train",
                    str(scans[sizes[0]]),
                    "-o",
                    str(run),
                    "--epochs",
                    "1",
                    "--n-groups",
                    "32",
                    "--n-filters-scale",
                    "1",
                    "--backend",
                    "pytorch",
                    "--logger",
                    "none",
                    "--disable-checkpointing",
                    "--overwrite",
                ]
            )
        first = None
        for m in sizes:
            out = work / f"out{m}"
            cmd = [*ptycho, "-q", "infer", str(run), str(scans[m]), "-o", str(out)]
            rc, peak = _run([sys.executable, "-c", _WRAP, *cmd]).split()
            if rc != "0":
                raise SystemExit(f"{' '.join(cmd)} exited {rc}")
            first = first or float(peak)
            print(
                f"| `ptycho infer` (pytorch) | {m} | {float(peak):.0f} | "
                f"{float(peak) / first:.2f} |",
                flush=True,
            )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
