"""``ptycho refine``: maximum-likelihood refinement of a reconstruction against its scan
(``specs/refinement.md``, ``specs/cli.md``); also the ``--refine K`` step of ``ptycho infer``.

Writes what ``infer`` writes (``recon.npz``, ``recon.h5``, ``recon.png``), plus ``refine.csv``
(``iteration, misfit, seconds``); ``recon.png`` gains the misfit curve. The refined object keeps
the input's frame (shape, origin) and coverage; positions and probe are written refined when
they were refined.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ptycho_cli.console import Console
from ptycho_cli.execution import positive_int
from ptycho_core.backends import BACKEND_NAMES

if TYPE_CHECKING:
    from ptycho_core.io import ScanData
    from ptycho_core.refine import RefineOptions, RefineResult, Solver
    from ptycho_core.workflow import Reconstruction

NAME = "refine"
HELP = (
    "maximum-likelihood refinement of a reconstruction against its scan; writes recon.npz, "
    "recon.h5, recon.png, refine.csv"
)
REFINE_CSV = "refine.csv"
#: ``--backend`` choices of the solver: auto = the reconstruction's backend when its framework
#: is installed, else NumPy.
SOLVER_CHOICES = ("auto", "numpy", *BACKEND_NAMES)

logger = logging.getLogger(__name__)


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(NAME, parents=parents, help=HELP, description=HELP)
    p.add_argument(
        "recon", type=Path, metavar="RECON", help="recon.npz written by ptycho infer, or its folder"
    )
    p.add_argument("data", type=Path, metavar="SCAN.npz", help="the measured scan (DATA-001)")
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=Path("outputs"),
        metavar="DIR",
        help="output folder (default: outputs)",
    )
    p.add_argument(
        "--iterations",
        type=positive_int,
        default=20,
        metavar="K",
        help="passes over the scan (default 20)",
    )
    add_solver_arguments(p)
    p.set_defaults(run=run)


def add_solver_arguments(p: argparse.ArgumentParser) -> None:
    """The solver flags shared by ``refine`` (and documented for ``infer --refine``)."""
    g = p.add_argument_group("refinement")
    g.add_argument("--probe", choices=("fixed", "refine"), default="fixed", help="default fixed")
    g.add_argument(
        "--positions", choices=("fixed", "refine"), default="fixed", help="default fixed"
    )
    g.add_argument(
        "--noise",
        choices=("poisson", "gaussian"),
        default="poisson",
        help="poisson: likelihood of the counts; gaussian: amplitude least squares "
        "(default poisson)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        metavar="B",
        help="patterns per update (default clip(M/20, 32, 128); >= M: full batch)",
    )
    g.add_argument(
        "--backend",
        choices=SOLVER_CHOICES,
        default="auto",
        help="solver: numpy, or a backend's (on its device: a GPU when present); auto = the "
        "reconstruction's backend's solver when it has a GPU, else numpy (default auto)",
    )


def options_from_args(args: argparse.Namespace, iterations: int) -> RefineOptions:
    from ptycho_core.refine import RefineOptions

    return RefineOptions(
        iterations=iterations,
        noise=getattr(args, "noise", "poisson"),
        probe=getattr(args, "probe", "fixed"),
        positions=getattr(args, "positions", "fixed"),
        batch_size=getattr(args, "batch_size", None),
    )


def _backend_solver(name: str) -> Solver:
    """The solver of backend ``name`` (BackendUnavailableError when its framework is missing)."""
    from ptycho_core.errors import BackendUnavailableError

    try:
        if name == "pytorch":
            from ptycho_torch.refine import TorchSolver

            return TorchSolver()
        from ptycho_tf.refine import TFSolver

        return TFSolver()
    except ImportError as exc:
        raise BackendUnavailableError(name, str(exc)) from exc


def _gpu_solver_for(made_by: str | None) -> Solver | None:
    """``auto``: the backend's solver when it has a GPU. torch is imported to ask (cheap);
    TensorFlow only when already imported (``infer --refine`` after a TF network): importing
    it is slow and it claims the GPU's memory."""
    import sys

    from ptycho_core.backends import available_backends

    if made_by == "pytorch" and "pytorch" in available_backends():
        import torch

        return _backend_solver("pytorch") if torch.cuda.is_available() else None
    if made_by == "tensorflow" and "tensorflow" in sys.modules:
        import tensorflow as tf

        return _backend_solver("tensorflow") if tf.config.list_logical_devices("GPU") else None
    return None


def make_solver(name: str, made_by: str | None) -> Solver:
    """The solver for ``--backend name``; ``made_by`` is the backend of the reconstruction.

    ``numpy``: the reference. ``pytorch``/``tensorflow``: that backend's solver
    (BackendUnavailableError with the install command when it is not installed). ``auto``: the
    reconstruction's backend's solver when it runs on a GPU (:func:`_gpu_solver_for`), else
    NumPy — on a CPU the NumPy solver is the faster one (``specs/refinement.md``)."""
    from ptycho_core.refine import NumpySolver

    if name == "auto":
        return _gpu_solver_for(made_by) or NumpySolver()
    if name == "numpy":
        return NumpySolver()
    return _backend_solver(name)


def refine_reconstruction(
    obj: np.ndarray,
    coverage: np.ndarray,
    origin: Any,
    scan: ScanData,
    options: RefineOptions,
    solver: Solver,
    console: Console,
) -> RefineResult:
    """Run the refinement with a progress line per iteration (stderr, hidden by --quiet)."""
    from ptycho_core.refine import IterationInfo, refine

    def progress(info: IterationInfo) -> None:
        console.stage(
            f"refine {info.iteration}/{options.iterations}: misfit {info.misfit:.6g} "
            f"({info.seconds:.1f} s)"
        )

    console.stage(
        f"refining {scan.M} patterns: {options.iterations} iterations, {options.noise} noise, "
        f"probe {options.probe}, positions {options.positions}, {solver.name} solver …"
    )
    return refine(
        obj,
        scan.diffraction,
        scan.positions,
        scan.probe,
        origin=origin,
        coverage=coverage,
        options=options,
        solver=solver,
        progress=progress,
    )


def to_reconstruction(
    result: RefineResult,
    coverage: np.ndarray,
    *,
    backend: str,
    config: dict[str, Any],
    timings: dict[str, float],
) -> Reconstruction:
    """A :class:`~ptycho_core.workflow.Reconstruction` of the refined object (the input's frame
    and coverage; phase in ``(−π, π]``)."""
    from ptycho_core.workflow import Reconstruction

    obj = np.asarray(result.object, np.complex64)
    pi32 = np.float32(np.pi)
    phase = np.angle(obj).astype(np.float32)
    phase[phase <= -pi32] = pi32
    return Reconstruction(
        object=obj,
        amplitude=np.abs(obj).astype(np.float32),
        phase=phase,
        coverage=np.asarray(coverage, np.float32),
        origin=(float(result.origin[0]), float(result.origin[1])),
        positions=np.asarray(result.positions, np.float64),
        backend=backend,
        config=config,
        timings=timings,
    )


def write_refine_csv(path: Path, result: RefineResult) -> Path:
    """``iteration, misfit, seconds`` (iteration 0 = the start), written atomically."""
    from ptycho_core.io import atomic_write

    with atomic_write(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["iteration", "misfit", "seconds"])
        for i, (f, s) in enumerate(zip(result.misfit, result.seconds, strict=True)):
            w.writerow([i, repr(float(f)), f"{float(s):.4f}"])
    return path


def refine_figure(path: Path, rec: Reconstruction, result: RefineResult, title: str) -> Path:
    """Amplitude and phase (object pixels, positions overlaid) and the misfit per iteration."""
    from ptycho_cli import figures

    plt = figures._plt()
    mask = np.asarray(rec.coverage) > 0
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    for ax, image, name, cmap, label in (
        (axes[0], rec.amplitude, "amplitude", figures._AMP_CMAP, "amplitude (a.u.)"),
        (axes[1], rec.phase, "phase", figures._PHASE_CMAP, "phase (rad)"),
    ):
        figures._panel(
            fig, ax, image, title=name, cmap=cmap, origin=rec.origin, mask=mask, label=label
        )
        figures._scatter(ax, rec.positions)
        ext = figures._extent(np.shape(image), rec.origin)
        ax.set_xlim(*ext[:2])
        ax.set_ylim(*ext[2:])
    ax = axes[2]
    misfit = np.asarray(result.misfit, np.float64)
    ax.plot(np.arange(misfit.size), misfit, "-o", ms=3)
    if np.all(misfit[np.isfinite(misfit)] > 0):
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{result.options.noise} misfit per pattern (photons)")
    ax.set_title(f"data misfit (final {result.final_misfit:.4g}, {result.seconds[-1]:.1f} s)")
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    return figures.save_figure(fig, path)


def write_refined(
    output_dir: Path, rec: Reconstruction, scan: ScanData, result: RefineResult, title: str
) -> list[Path]:
    """``recon.npz``, ``recon.h5`` (the refined probe/positions when refined; the misfit as its
    loss values), ``recon.png`` (with the misfit curve) and ``refine.csv``, staged."""
    from ptycho_cli.outputs import RECON_PNG, staged, write_reconstruction

    product_scan = scan
    if result.options.positions == "refine" or result.options.probe == "refine":
        product_scan = dataclasses.replace(
            scan,
            xcoords=result.positions[:, 0].copy(),
            ycoords=result.positions[:, 1].copy(),
            probe=result.probe if result.options.probe == "refine" else scan.probe,
            Y=None,
        )
    history = {"train_loss": [float(v) for v in result.misfit]}
    with staged(output_dir) as tmp:
        names = [
            p.name
            for p in write_reconstruction(tmp, rec, product_scan, history=history, title=title)
        ]
        refine_figure(tmp / RECON_PNG, rec, result, title)
        names.append(write_refine_csv(tmp / REFINE_CSV, result).name)
    return [Path(output_dir) / n for n in names]


def _summary_lines(result: RefineResult) -> list[str]:
    f0, f1 = float(result.misfit[0]), float(result.final_misfit)
    drop = f"{f0 / f1:.3g}×" if f1 > 0 and math.isfinite(f0 / f1) else "n/a"
    lines = [
        f"refined {len(result.misfit) - 1} iterations with the {result.solver} solver on "
        f"{result.device} in {result.seconds[-1]:.1f} s: {result.options.noise} misfit "
        f"{f0:.6g} → {f1:.6g} per pattern ({drop} lower)"
    ]
    if result.options.positions == "refine":
        lines.append("positions refined (written to recon.npz and recon.h5)")
    return lines


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli.commands._run import print_files
    from ptycho_cli.outputs import read_recon_npz
    from ptycho_core.io import load_npz

    recon = read_recon_npz(args.recon)
    scan = load_npz(args.data)
    meta = recon.get("_metadata") or {}
    made_by = meta.get("backend") if isinstance(meta.get("backend"), str) else None
    options = options_from_args(args, args.iterations)
    solver = make_solver(args.backend, made_by)
    result = refine_reconstruction(
        recon["object"], recon["coverage"], recon["origin"], scan, options, solver, console
    )
    config = {"refinement": result.summary(), "source": str(recon["path"])}
    if isinstance(meta.get("config"), dict):
        config["source_config"] = meta["config"]
    rec = to_reconstruction(
        result,
        recon["coverage"],
        backend=made_by or result.solver,
        config=config,
        timings={"refine_s": float(result.seconds[-1])},
    )
    title = f"refined reconstruction ({len(result.misfit) - 1} iterations, {options.noise})"
    written = write_refined(args.output_dir, rec, scan, result, title)
    for line in _summary_lines(result):
        console.result(line)
    print_files(console, written)
    return 0


def infer_and_refine(
    payload: Any, iterations: int, output_dir: Path, console: Console
) -> tuple[Any, list[Path]]:
    """``ptycho infer --refine K``: reconstruct with the network, refine ``K`` iterations
    (defaults of ``ptycho refine``, the bundle's backend's solver), write everything once."""
    from ptycho_cli import dispatch
    from ptycho_cli.commands._run import framework_hook
    from ptycho_core.refine import RefineOptions

    if payload.data is None:
        raise ValueError(f"{payload.bundle_path}: no scan was given to reconstruct")
    net = dispatch.reconstruct(payload, on_backend_loaded=framework_hook)
    scan = payload.data
    options = RefineOptions(iterations=iterations)
    solver = make_solver("auto", net.backend)
    result = refine_reconstruction(
        net.object, net.coverage, net.origin, scan, options, solver, console
    )
    config = dict(net.config, refinement=result.summary())
    timings = dict(net.timings, refine_s=float(result.seconds[-1]))
    rec = to_reconstruction(
        result, net.coverage, backend=net.backend, config=config, timings=timings
    )
    rec.norm_factor, rec.intensity_scale = net.norm_factor, net.intensity_scale
    title = f"network + {iterations} refinement iterations ({options.noise})"
    written = write_refined(Path(output_dir), rec, scan, result, title)
    for line in _summary_lines(result):
        console.result(line)
    return rec, written
