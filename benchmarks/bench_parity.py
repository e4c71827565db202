"""Benchmark: backend parity table (issue 13) — one set of weights, two frameworks.

Target: ``specs/training.md`` ("Backend parity"). Run:
``python benchmarks/bench_parity.py [--quick] [--steps 50] [--workdir DIR]``.
Every backend step runs in its own child process (``tests/parity/worker.py``); this process
imports neither framework. Prints, per model config, the relative object-patch and stitched-object
differences of one bundle converted both ways, the NLL / MAE / gradient differences, then the
training-curve difference over ``--steps`` steps from the same start and each backend's
held-out SSIM. Asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

_HARNESS = Path(__file__).resolve().parents[1] / "tests" / "parity" / "harness.py"


def _harness():
    spec = importlib.util.spec_from_file_location("ptycho_parity_harness", _HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _configs(quick: bool) -> list[dict]:
    sizes = (32,) if quick else (32, 64, 128)
    out = []
    for n in sizes:
        for g in (1, 2):
            variants = [{}, {"probe_big": False}, {"pad_object": False}]
            if g == 2:
                variants.append({"object_big": False})
            out += [{"N": n, "gridsize": g, "n_filters_scale": 1, **v} for v in variants]
    return out


def _label(cfg: dict) -> str:
    flags = [k for k in ("object_big", "probe_big", "pad_object") if cfg.get(k) is False]
    return f"N={cfg['N']} g={cfg['gridsize']}" + (" no " + ",".join(flags) if flags else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 32 only")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    h = _harness()
    with tempfile.TemporaryDirectory(prefix="bench_parity_") as tmp:
        work = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        cases = h.inference_cases(_configs(args.quick), work / "inference", stitch=True)
        print(
            "inference and loss parity, torch bundle converted to tf "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        print(
            "| model | patches | stitched object | NLL | MAE | gradient | worst gradient tensor |"
        )
        print("|---|---|---|---|---|---|---|")
        for c in cases:
            print(
                f"| {_label(c['model_config'])} | {c['patch_rel']:.1e} | {c['object_rel']:.1e} | "
                f"{c['loss_rel']['nll']:.1e} | {c['loss_rel']['mae']:.1e} | {c['grad_rel']:.1e} | "
                f"{c['grad_tensor_rel']:.1e} |"
            )
        t0 = time.perf_counter()
        r = h.training_case(work / "training", steps=args.steps)
        print(
            f"\ntraining parity, N=32 gridsize 1, {args.steps} steps "
            f"({time.perf_counter() - t0:.0f} s)"
        )
        print("| backend | first loss | last loss | held-out SSIM amp / phase |")
        print("|---|---|---|---|")
        for b in h.BACKENDS:
            curve, ssim = r[b]["curve"], r[b]["ssim"]
            print(f"| {b} | {curve[0]:.3f} | {curve[-1]:.3f} | {ssim[0]:.3f} / {ssim[1]:.3f} |")
        print(
            f"curve difference: max relative {r['curve_rel']:.1e}, "
            f"max {r['curve_of_decrease']:.1%} of the total decrease"
        )


if __name__ == "__main__":
    main()
