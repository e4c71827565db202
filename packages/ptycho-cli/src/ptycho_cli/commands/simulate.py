"""``ptycho simulate``: a simulated scan (procedural object, default probe, Poisson noise)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptycho_cli.commands._common import positive_float, positive_int
from ptycho_cli.console import Console

NAME = "simulate"
HELP = "simulate a scan from the built-in procedural object; writes a DATA-001 .npz"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        NAME, parents=parents, help=HELP, description=HELP + " (and a preview PNG beside it)."
    )
    p.add_argument("output", type=Path, metavar="OUT.npz", help="scan file to write")
    p.add_argument(
        "--N",
        type=int,
        default=64,
        choices=(32, 64, 128, 256),
        help="pattern size in pixels (default 64)",
    )
    p.add_argument(
        "--n-positions",
        type=positive_int,
        default=1000,
        metavar="M",
        help="random scan positions (default 1000)",
    )
    p.add_argument(
        "--nphotons",
        type=positive_float,
        default=1e9,
        help="mean photons per pattern (default 1e9)",
    )
    p.add_argument(
        "--object-size",
        type=positive_int,
        default=None,
        metavar="PX",
        help="object side in pixels (default: the simulator's choice for N)",
    )
    p.add_argument(
        "--scan",
        choices=("random", "raster"),
        default="random",
        help="scan pattern (default random)",
    )
    p.add_argument(
        "--defocus", type=float, default=0.0, help="quadratic probe phase for defocus (default 0)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--no-plot",
        dest="plot",
        action="store_false",
        help="do not write the preview figure OUT.png",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli import figures
    from ptycho_cli.outputs import staged
    from ptycho_core.io import save_npz
    from ptycho_core.simulation import simulate_scan

    out = Path(args.output)
    if out.suffix != ".npz":
        raise ValueError(f"{out}: output must end in .npz")
    console.stage(f"simulating {args.n_positions} patterns of {args.N}×{args.N} …")
    scan = simulate_scan(
        N=args.N,
        n_positions=args.n_positions,
        nphotons=args.nphotons,
        seed=args.seed,
        object_size=args.object_size,
        scan=args.scan,
        defocus=args.defocus,
    )
    written = [out]
    with staged(out.parent if str(out.parent) else Path(".")) as tmp:
        save_npz(tmp / out.name, scan, nphotons=args.nphotons)
        if args.plot and scan.object is not None:
            png = out.with_suffix(".png")
            figures.reconstruction_figure(
                tmp / png.name,
                abs(scan.object),
                _angle(scan.object),
                positions=scan.positions,
                title=f"simulated object and {scan.M} scan positions (N={scan.N})",
            )
            written.append(png)
    console.result(
        f"simulated {scan.M} patterns ({scan.N}×{scan.N}, {args.nphotons:g} photons "
        f"each) on a {scan.object.shape[0]}×{scan.object.shape[1]} object"
    )
    for path in written:
        console.result(f"  {path}")
    return 0


def _angle(a: Any) -> Any:
    import numpy as np

    return np.angle(a)
