"""Benchmark: maximum-likelihood refinement (``specs/refinement.md``) from different starts.

Scene: ``ptycho_core.simulation.simulate_scan`` realistic scenario, N = 64, 1,500 random
positions, 1e9 photons per pattern, seed 0 (known probe). Every start is refined by the same
solver with the same options; after every iteration the object is scored with
``ptycho_core.metrics.evaluate`` on the region a network reconstruction covers (the positions'
stitching crops, crop 20), and the solver's own wall time is recorded (scoring excluded).

Starts: ``flat`` (ones); ``blurred`` (truth smoothed by a 2 px Gaussian, 5 % amplitude and
0.1 rad phase noise, scaled ×3: a good network's quality); ``weak`` (smoothed by 4 px, 5 % and
0.3 rad noise: SSIM 0.39 / 0.30, about what today's network reaches on such a scan, 0.43 /
0.29); ``network`` with ``--network BUNDLE``: a trained model's reconstruction of this scan
(``ptycho infer``'s path). The blurred-truth starts keep the truth's low frequencies, which a
network's errors need not: they stand in for a network, they are not one.

Run: ``python benchmarks/bench_refine.py [--iterations 20] [--solver numpy|pytorch|tensorflow]
[--batch-size B] [--network BUNDLE] [--plot benchmarks/refine.png]``. Prints per-iteration
tables, then a summary: iterations and seconds to reach SSIM ≥ 0.95 / 0.95 and ≥ 0.98 / 0.98,
and the speed-up over the flat start. Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from ptycho_core import metrics
from ptycho_core.refine import IterationInfo, RefineOptions, prepare_refinement
from ptycho_core.simulation import simulate_scan
from ptycho_core.stitching import Stitcher

LEVELS = (0.95, 0.98)


def _smooth(obj: np.ndarray, sigma: float, amp_noise: float, phase_noise: float, seed: int):
    rng = np.random.default_rng(seed)
    amp = ndimage.gaussian_filter(np.abs(obj), sigma) * (1 + amp_noise * rng.normal(size=obj.shape))
    phase = ndimage.gaussian_filter(np.angle(obj), sigma) + phase_noise * rng.normal(size=obj.shape)
    return (3.0 * amp * np.exp(1j * phase)).astype(np.complex64)


def _network_start(bundle: Path, scan) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    from ptycho_cli import dispatch, factories
    from ptycho_core.io import save_npz

    with tempfile.TemporaryDirectory() as tmp:
        save_npz(Path(tmp) / "scan.npz", scan)
        payload = factories.create_inference_payload(bundle, Path(tmp) / "scan.npz", tmp)
        rec = dispatch.reconstruct(payload)
    origin = (int(rec.origin[0]), int(rec.origin[1]))
    return rec.object, origin, rec.coverage


def _solver(name: str):
    if name == "pytorch":
        from ptycho_torch.refine import TorchSolver

        return TorchSolver()
    if name == "tensorflow":
        from ptycho_tf.refine import TFSolver

        return TFSolver()
    from ptycho_core.refine import NumpySolver

    return NumpySolver()


def _first(rows: list[tuple], level: float) -> tuple[int, float] | None:
    for it, secs, _, sa, sp in rows:
        if sa >= level and sp >= level:
            return it, secs
    return None


def run_start(name, obj, origin, coverage, scan, truth, mask, opts, solver) -> list[tuple]:
    problem = prepare_refinement(
        obj,
        scan.diffraction,
        scan.positions,
        scan.probe,
        origin=origin,
        coverage=coverage,
        options=opts,
    )
    rows: list[tuple] = []

    def progress(info: IterationInfo) -> None:
        frame = problem.to_frame(info.canvas())
        full = np.zeros(truth.shape, np.complex64)
        x0, y0 = problem.frame_origin
        h, w = frame.shape
        ys = slice(max(0, y0), min(truth.shape[0], y0 + h))
        xs = slice(max(0, x0), min(truth.shape[1], x0 + w))
        full[ys, xs] = frame[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        m = metrics.evaluate(full, truth, mask)
        rows.append((info.iteration, info.seconds, info.misfit, m["ssim_amp"], m["ssim_phase"]))

    solver.solve(problem, progress)
    print(f"\n### start: {name}")
    print("| iteration | seconds | misfit per pattern | SSIM amp | SSIM phase |")
    print("|---|---|---|---|---|")
    for it, secs, f, sa, sp in rows:
        print(f"| {it} | {secs:.2f} | {f:.4g} | {sa:.4f} | {sp:.4f} |")
    return rows


def _plot(path: Path, results: dict[str, list[tuple]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), constrained_layout=True)
    for name, rows in results.items():
        r = np.array(rows, dtype=np.float64)
        (line,) = axes[0].plot(r[:, 0], r[:, 3], "-o", ms=3, label=f"{name} amplitude")
        axes[0].plot(r[:, 0], r[:, 4], "--s", ms=3, color=line.get_color(), label=f"{name} phase")
        axes[1].plot(r[:, 1], r[:, 3], "-o", ms=3, color=line.get_color(), label=f"{name} amp")
        axes[1].plot(r[:, 1], r[:, 4], "--s", ms=3, color=line.get_color(), label=f"{name} phase")
        axes[2].semilogy(r[:, 0], r[:, 2], "-o", ms=3, color=line.get_color(), label=name)
    for ax, xl in zip(axes[:2], ("iteration", "solver wall time (s)"), strict=True):
        ax.set_xlabel(xl)
        ax.set_ylabel("SSIM (scored region)")
        ax.set_ylim(0.0, 1.0)
        for level in LEVELS:
            ax.axhline(level, color="0.6", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    axes[2].set_xlabel("iteration")
    axes[2].set_ylabel("Poisson misfit per pattern (photons)")
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--positions", type=int, default=1500)
    ap.add_argument("--nphotons", type=float, default=1e9)
    ap.add_argument("--solver", choices=("numpy", "pytorch", "tensorflow"), default="numpy")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--noise", choices=("poisson", "gaussian"), default="poisson")
    ap.add_argument("--starts", nargs="+", default=["flat", "weak", "blurred"])
    ap.add_argument("--network", type=Path, default=None, help="a trained bundle to start from")
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args()

    load0 = os.getloadavg()
    t0 = time.perf_counter()
    scan = simulate_scan(N=64, n_positions=args.positions, nphotons=args.nphotons, seed=0)
    truth = scan.object
    st = Stitcher(64, 20, object_shape=truth.shape)
    st.add(np.ones((scan.M, 64, 64), np.complex64), scan.positions)
    mask = st.result().coverage > 0
    print(
        f"scene: realistic, N=64, {scan.M} patterns, {args.nphotons:g} photons, object "
        f"{truth.shape}, simulated in {time.perf_counter() - t0:.1f} s; solver {args.solver}, "
        f"noise {args.noise}, batch {args.batch_size or 'default'}; load average before "
        f"{load0[0]:.2f} ({os.cpu_count()} CPUs)"
    )
    opts = RefineOptions(iterations=args.iterations, noise=args.noise, batch_size=args.batch_size)
    starts = {
        "flat": (np.ones_like(truth), (0, 0), None),
        "blurred": (_smooth(truth, 2.0, 0.05, 0.1, 1), (0, 0), mask.astype(np.float32)),
        "weak": (_smooth(truth, 4.0, 0.05, 0.3, 2), (0, 0), mask.astype(np.float32)),
    }
    chosen = {k: starts[k] for k in args.starts}
    if args.network is not None:
        chosen["network"] = _network_start(args.network, scan)
    results = {}
    for name, (obj, origin, cov) in chosen.items():
        results[name] = run_start(
            name, obj, origin, cov, scan, truth, mask, opts, _solver(args.solver)
        )
    load1 = os.getloadavg()

    print(f"\n### summary (load average before {load0[0]:.2f}, after {load1[0]:.2f})")
    head = "| start | SSIM amp / phase at start | s per iteration |"
    for level in LEVELS:
        head += f" iterations (s) to ≥ {level} / {level} |"
    print(head + f" SSIM after {args.iterations} |")
    print("|---" * (4 + len(LEVELS)) + "|")
    for name, rows in results.items():
        per_it = (rows[-1][1] - rows[0][1]) / max(1, len(rows) - 1)
        line = f"| {name} | {rows[0][3]:.3f} / {rows[0][4]:.3f} | {per_it:.2f} |"
        for level in LEVELS:
            hit = _first(rows, level)
            line += " not reached |" if hit is None else f" {hit[0]} ({hit[1]:.1f} s) |"
        print(line + f" {rows[-1][3]:.3f} / {rows[-1][4]:.3f} |")
    if "flat" in results:
        for level in LEVELS:
            base = _first(results["flat"], level)
            for name, rows in results.items():
                hit = _first(rows, level)
                if name != "flat" and base and hit:
                    ratio = base[0] / max(hit[0], 1)
                    print(f"{name}: {ratio:.1f}× fewer iterations than flat to ≥ {level}")
    if args.plot is not None:
        title = (
            f"refinement, realistic N=64, {scan.M} patterns, {args.nphotons:g} photons "
            f"({args.solver}, load {load0[0]:.1f}–{load1[0]:.1f} on {os.cpu_count()} CPUs)"
        )
        _plot(args.plot, results, title)


if __name__ == "__main__":
    main()
