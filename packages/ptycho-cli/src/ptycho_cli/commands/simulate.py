"""``ptycho simulate``: a simulated scan of a built-in scene, Poisson noise
(``specs/simulation.md``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ptycho_cli.commands._common import positive_float, positive_int
from ptycho_cli.console import Console
from ptycho_core.simulation import SCENARIOS

NAME = "simulate"
HELP = "simulate a scan of a built-in scene; writes a DATA-001 .npz"


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
        "--scenario",
        choices=SCENARIOS,
        default="realistic",
        help="realistic (default): textured object with amplitude and phase structure, a wide "
        "out-of-focus zone-plate probe; procedural: the easy object and a compact disk probe",
    )
    p.add_argument(
        "--probe",
        type=Path,
        default=None,
        metavar="FILE",
        help="take the probe from a DATA-001 scan (.npz) or a Ptychodus product (.h5); "
        "its size sets N",
    )
    p.add_argument(
        "--defocus",
        type=float,
        default=0.0,
        help="procedural scenario only: quadratic probe phase for defocus (default 0)",
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
    from ptycho_core.io import read_probe, save_npz
    from ptycho_core.simulation import simulate_scan

    out = Path(args.output)
    if out.suffix != ".npz":
        raise ValueError(f"{out}: output must end in .npz")
    probe = None
    n = args.N
    if args.probe is not None:
        probe = read_probe(args.probe)
        n = probe.shape[0]
        if n not in (32, 64, 128, 256):
            raise ValueError(
                f"{args.probe}: the probe is {n}×{n}; supported sizes: 32, 64, 128, 256"
            )
    console.stage(f"simulating {args.n_positions} patterns of {n}×{n} ({args.scenario}) …")
    scan = simulate_scan(
        N=n,
        n_positions=args.n_positions,
        nphotons=args.nphotons,
        seed=args.seed,
        object_size=args.object_size,
        scan=args.scan,
        defocus=args.defocus,
        scenario=args.scenario,
        probe=probe,
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
    h, w = scan.object.shape if scan.object is not None else (0, 0)
    console.result(
        f"simulated {scan.M} patterns ({scan.N}×{scan.N}, {args.nphotons:g} photons "
        f"each) on a {h}×{w} object"
    )
    for path in written:
        console.result(f"  {path}")
    return 0


def _angle(a: Any) -> Any:
    import numpy as np

    return np.angle(a)
