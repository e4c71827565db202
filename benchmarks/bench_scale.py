"""Training and inference throughput and peak memory at scale (issue 14; ``benchmarks/README.md``
"Scale"). PyTorch backend.

Rows: N = 64, 128 × gridsize 1, 2 × precision 32-true, bf16-mixed × compile off, on ×
devices 1, 2 (CPU processes here, GPUs where present), for training and inference, plus a
memory row pair: inference at M and 10·M positions. Each row runs in a fresh process (its own
peak RSS: ``VmHWM`` of rank 0, ``ptycho_core.runtime.peak_rss_bytes``, not ``ru_maxrss``,
which Linux carries over from this driver); devices = 2 starts the second rank through the
backend (Lightning's DDP launcher re-runs this script with the same ``--worker`` argument).

Inference rows group with ``every`` (each position seeds a group) unless the gridsize cell says
``cover`` (``InferenceConfig.grouping``: about ``M / C`` groups that hold every position).

Inference is end to end: open the scan (an ``.h5`` scan, streamed), group, predict, stitch and
write ``recon.npz``; patterns/s = scan positions / seconds of the second of two runs (the first
includes start-up and ``torch.compile``; its seconds are the ``cold s`` column). Training:
``TrainResult.timings['patterns_per_s']`` (training patterns · epochs / fit seconds). The model
weights are random (throughput does not depend on them). An option the installed
``ExecutionConfig`` lacks gives an ``n/a`` row.

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --quick     # CPU subset, ~5 min
    python benchmarks/bench_scale.py --accelerator gpu --out benchmarks/scale_gpu.md
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULT = "BENCH_RESULT "


# ----------------------------------------------------------------------------- worker
def _execution(spec: dict[str, Any]) -> Any:
    from ptycho_core.config import ExecutionConfig

    fields = {f.name for f in dataclasses.fields(ExecutionConfig)}
    kw: dict[str, Any] = {
        "accelerator": spec["accelerator"],
        "devices": spec["devices"],
        "inference_batch_size": spec["batch"],
        "enable_progress_bar": False,
        "logger_backend": "none",
        "enable_checkpointing": False,
    }
    for name, default in (("precision", "32-true"), ("compile", False)):
        if spec[name] != default:
            if name not in fields:
                raise LookupError(f"ExecutionConfig has no {name!r}")
            kw[name] = spec[name]
    if spec["devices"] > 1:
        kw["strategy"] = "ddp"
    return ExecutionConfig(**kw)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def worker(spec: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(int(spec.get("threads", 1)))
    from ptycho_core.config import InferenceConfig, ModelConfig, TrainingConfig

    try:
        ex = _execution(spec)
    except (LookupError, ValueError) as exc:
        print(RESULT + json.dumps({"na": str(exc)}), flush=True)
        return
    mc = ModelConfig(N=spec["N"], gridsize=spec["gridsize"], n_filters_scale=2)
    from ptycho_core.runtime import peak_rss_bytes

    base = peak_rss_bytes()
    out: dict[str, Any] = {}
    if spec["mode"] == "infer":
        from ptycho_torch.workflows import reconstruct

        cfg = InferenceConfig(
            model=mc,
            model_path=spec["bundle"],
            test_data_file=spec["scan"],
            grouping=spec.get("grouping", "every"),
        )
        times = []
        for _ in range(int(spec.get("runs", 2))):
            t0 = time.perf_counter()
            res = reconstruct(cfg, ex)
            if _rank() == 0:
                np.savez(Path(spec["workdir"]) / "recon.npz", object=res.object)
            times.append(time.perf_counter() - t0)
        out = {"cold_s": times[0], "per_s": spec["positions"] / times[-1]}
    else:
        from ptycho_core.io import load_npz
        from ptycho_torch.workflows import train

        cfg_t = TrainingConfig(
            model=mc,
            nepochs=2,
            batch_size=16,
            output_dir=Path(spec["workdir"]) / f"train{_rank()}",
            validation_fraction=0.0,
            nphotons=1e6,
        )
        result = train(cfg_t, ex, train_data=load_npz(spec["train_scan"]))
        out = {"cold_s": result.timings["fit_s"], "per_s": result.timings["patterns_per_s"]}
    peak = peak_rss_bytes()
    if _rank() == 0:
        out.update(peak_mib=peak / 2**20, base_mib=base / 2**20)
        print(RESULT + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------- driver
def _prepare(work: Path, n: int, gridsize: int, positions: int, train_positions: int) -> dict:
    """A random-weight bundle, an ``.h5`` scan of ``positions`` and a training ``.npz``."""
    import numpy as np
    import torch

    from ptycho_core.config import ModelConfig, TrainingConfig
    from ptycho_core.io import save_h5_scan, save_npz
    from ptycho_core.simulation import simulate_scan
    from ptycho_torch.bundle import save_bundle
    from ptycho_torch.model import PtychoModel

    folder = work / f"N{n}_g{gridsize}"
    folder.mkdir(exist_ok=True)
    small = simulate_scan(N=n, n_positions=train_positions, nphotons=1e6, seed=1)
    save_npz(folder / "train.npz", small)
    torch.manual_seed(0)
    model = PtychoModel(
        N=n,
        gridsize=gridsize,
        n_filters_scale=2,
        probe=np.asarray(small.probe, np.complex64),
        intensity_scale=float(np.sqrt(1e6) / (n / 2)),
    )
    mc = ModelConfig(N=n, gridsize=gridsize, n_filters_scale=2)
    bundle = save_bundle(
        folder / "wts.h5.zip",
        model,
        TrainingConfig(model=mc, output_dir=folder),
        normalization={"norm_factor": 1.0},
    )
    scans = {}
    for m in sorted({positions, 10 * positions}):
        path = folder / f"scan{m}.h5"
        if m > positions and (n != 64 or gridsize != 1):
            continue
        save_h5_scan(path, simulate_scan(N=n, n_positions=m, nphotons=1e6, seed=2))
        scans[m] = str(path)
    return {"bundle": str(bundle), "scans": scans, "train_scan": str(folder / "train.npz")}


def _run(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    env = dict(os.environ, PL_DISABLE_FORK="1", PYTHONHASHSEED="0")
    env.setdefault("OMP_NUM_THREADS", str(spec.get("threads", 1)))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"na": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"na": f"failed: {tail[0][:120]}"}
    return dict(json.loads(lines[-1][len(RESULT) :]))


def _rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    fast, plain = ("bf16-mixed", True), ("32-true", False)
    if args.quick:  # the CPU subset this README's table holds
        combos = [
            ("infer", 64, 1, *plain, 1),
            ("infer", 64, 2, *plain, 1),
            ("infer", 64, 2, *plain, 1, "cover"),
            ("infer", 64, 2, "bf16-mixed", False, 1, "cover"),
            ("infer", 64, 1, "bf16-mixed", False, 1),
            ("infer", 64, 1, "32-true", True, 1),
            ("infer", 64, 1, *plain, 2),
            ("train", 64, 1, *plain, 1),
            ("train", 64, 2, *plain, 1),
        ]
    elif args.full:  # every combination
        combos = list(
            itertools.product(
                ("infer", "train"),
                (64, 128),
                (1, 2),
                ("32-true", "bf16-mixed"),
                (False, True),
                (1, 2),
            )
        )
    else:  # the GPU set (benchmarks/gpu.sh, < 5 min): both extremes everywhere, then the rest
        combos = [
            (mode, n, g, *opt, 1)
            for mode in ("infer", "train")
            for n in (64, 128)
            for g in (1, 2)
            for opt in (plain, fast)
        ]
        combos += [("infer", 64, 1, "bf16-mixed", False, 1), ("infer", 64, 1, "32-true", True, 1)]
        combos += [("infer", 64, 2, *fast, 1, "cover"), ("infer", 128, 2, *fast, 1, "cover")]
        combos += [("infer", 64, 1, *fast, 2), ("train", 64, 1, *fast, 2)]
    keys = ("mode", "N", "gridsize", "precision", "compile", "devices", "grouping")
    rows = [dict(zip(keys, (*c, "every") if len(c) == 6 else c, strict=True)) for c in combos]
    return [r for r in rows if r["devices"] <= args.max_devices]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="the CPU subset (N=64, few rows)")
    ap.add_argument("--full", action="store_true", help="every combination (long)")
    ap.add_argument("--max-devices", type=int, default=2, help="drop rows needing more")
    ap.add_argument("--accelerator", default="cpu", help="cpu, gpu or auto (default cpu)")
    ap.add_argument("--positions", type=int, default=None, help="inference scan size")
    ap.add_argument("--train-positions", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="inference batch size")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per row")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.worker is not None:
        worker(json.loads(args.worker))
        return
    gpu = args.accelerator in ("gpu", "cuda")
    positions = args.positions or (20000 if gpu else 256 if args.quick else 2048)
    train_positions = args.train_positions or (4096 if gpu else 256)
    batch = args.batch or (1024 if gpu else 64)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    rows = _rows(args)
    data = {
        (n, g): _prepare(work, n, g, positions, train_positions)
        for n, g in sorted({(r["N"], r["gridsize"]) for r in rows})
    }
    # the memory row: the first inference row again at 10x the positions (same field of view)
    # (one run only: its patterns/s include start-up)
    extra = [dict(rows[0], positions=10 * positions, runs=1)] if rows[0]["mode"] == "infer" else []
    load = os.getloadavg()[0]
    header = (
        f"accelerator {args.accelerator}, {os.cpu_count()} CPUs, load average {load:.1f} at "
        f"start, {args.threads} thread(s) per process, inference batch {batch}, "
        f"{positions} inference positions, {train_positions} training positions"
    )
    table = [
        "| mode | N | gridsize | precision | compile | devices | positions | patterns/s | "
        "cold s | peak RSS MiB (after imports) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    print(header, flush=True)
    for row in rows + extra:
        d = data[(row["N"], row["gridsize"])]
        m = row.get("positions", positions)
        spec = dict(
            row,
            accelerator=args.accelerator,
            batch=batch,
            threads=args.threads,
            positions=m,
            bundle=d["bundle"],
            scan=d["scans"].get(m),
            train_scan=d["train_scan"],
            workdir=str(work),
        )
        res = _run(spec, args.timeout)
        cells = [
            row["mode"],
            row["N"],
            f"{row['gridsize']}" + (" cover" if row.get("grouping") == "cover" else ""),
            row["precision"],
            "on" if row["compile"] else "off",
            row["devices"],
            m if row["mode"] == "infer" else train_positions,
        ]
        if "na" in res:
            cells += ["n/a", "n/a", res["na"]]
        else:
            rss = f"{res['peak_mib']:.0f} ({res['peak_mib'] - res['base_mib']:+.0f})"
            cells += [f"{res['per_s']:.0f}", f"{res['cold_s']:.1f}", rss]
        line = "| " + " | ".join(str(c) for c in cells) + " |"
        table.append(line)
        print(line, flush=True)
    text = header + "\n\n" + "\n".join(table) + "\n"
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
