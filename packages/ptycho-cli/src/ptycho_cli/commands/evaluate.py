"""``ptycho evaluate``: score a reconstruction against the ground-truth object; metrics + figure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_cli.commands._common import non_negative_int
from ptycho_cli.console import Console

NAME = "evaluate"
HELP = "metrics against ground truth (SSIM, PSNR, MAE, FRC); writes metrics.json, comparison.png"


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(NAME, parents=parents, help=HELP, description=HELP)
    p.add_argument(
        "recon",
        type=Path,
        metavar="RECON",
        help="recon.npz written by ptycho infer/train/demo, or its folder",
    )
    p.add_argument(
        "truth",
        type=Path,
        metavar="TRUTH",
        help="scan .npz with objectGuess, or a Ptychodus product .h5 (its object)",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write metrics.json and comparison.png (default: RECON's folder)",
    )
    p.add_argument("--register", action="store_true", help="sub-pixel registration before scoring")
    p.add_argument(
        "--remove-plane",
        action="store_true",
        help="remove the best phase plane (not just a constant)",
    )
    p.add_argument(
        "--margin",
        type=non_negative_int,
        default=0,
        metavar="PX",
        help="leave out PX pixels at the rim of the covered region (default 0)",
    )
    p.set_defaults(run=run)


def load_truth(path: Path) -> np.ndarray:
    """The ground-truth object ``(H, W)`` complex from a scan .npz (key ``objectGuess``) or a
    product .h5 (dataset ``object``, first layer). A missing, empty, non-2-D or entirely
    non-finite object is a :class:`~ptycho_core.errors.DataContractError` naming file and key."""
    from ptycho_core.errors import DataContractError

    if not path.is_file():
        raise FileNotFoundError(f"{path}: ground-truth file not found")
    if path.suffix in (".h5", ".hdf5"):
        from ptycho_core.io import read_product

        key = "object"
        obj = np.asarray(read_product(path).object)
        obj = obj[0] if obj.ndim == 3 else obj
    else:
        from ptycho_core.io import load_npz

        key = "objectGuess"
        scan = load_npz(path)
        if scan.object is None:
            raise DataContractError(f"{path}: no ground truth: key 'objectGuess' is missing")
        obj = np.asarray(scan.object)
    if obj.ndim != 2 or 0 in obj.shape or obj.dtype.kind not in "fc":
        raise DataContractError(
            f"{path}: key '{key}': expected a non-empty (H, W) complex object, got {obj.dtype} "
            f"{obj.shape}"
        )
    if not np.isfinite(obj).any():
        raise DataContractError(f"{path}: key '{key}': no finite values")
    return obj


def metric_lines(metrics: dict[str, Any]) -> list[str]:
    def f(key: str, spec: str) -> str:
        v = metrics.get(key)
        return "n/a" if v is None else format(float(v), spec)

    return [
        f"amplitude  SSIM {f('ssim_amp', '.4f')}  PSNR {f('psnr_amp', '.2f')} dB  "
        f"(peak-255 PSNR {f('psnr255_amp', '.2f')} dB)  MAE {f('mae_amp', '.4g')}",
        f"phase      SSIM {f('ssim_phase', '.4f')}  PSNR {f('psnr_phase', '.2f')} dB  "
        f"(peak-255 PSNR {f('psnr255_phase', '.2f')} dB)  MAE {f('mae_phase', '.4g')} rad",
    ]


def score_and_write(
    out_dir: Path,
    obj: np.ndarray,
    coverage: np.ndarray,
    origin: Any,
    truth: np.ndarray,
    *,
    register: bool = False,
    remove_plane: bool = False,
    margin: int = 0,
    extra: dict[str, Any] | None = None,
    names: tuple[str, str] = ("the reconstruction", "the ground truth"),
) -> tuple[dict[str, Any], list[Path], Any]:
    """Compare the reconstruction ``obj`` ``(H, W)`` complex with ``coverage`` ``(H, W)`` and
    ``origin`` ``(x0, y0)`` object pixels to ``truth``, then write ``metrics.json`` and
    ``comparison.png`` into ``out_dir`` (staged). ``names`` (recon, truth) label errors."""
    from ptycho_cli import figures
    from ptycho_cli.compare import compare_to_truth
    from ptycho_cli.outputs import COMPARISON_PNG, METRICS_JSON, staged, write_json

    cmp = compare_to_truth(
        obj,
        coverage,
        origin,
        truth,
        register=register,
        remove_plane=remove_plane,
        margin=margin,
        names=names,
    )
    record = {
        "metrics": cmp.metrics,
        "scored_pixels": int(cmp.mask.sum()),
        "scored_region_origin_px": list(cmp.origin),
        "scored_region_shape": list(cmp.mask.shape),
        "options": {"register": register, "remove_plane": remove_plane, "margin": margin},
    }
    record.update(extra or {})
    with staged(out_dir) as tmp:
        write_json(tmp / METRICS_JSON, record)
        figures.comparison_figure(
            tmp / COMPARISON_PNG, cmp.truth, cmp.recon, cmp.mask, cmp.metrics, origin=cmp.origin
        )
    return cmp.metrics, [out_dir / METRICS_JSON, out_dir / COMPARISON_PNG], cmp


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli.outputs import check_output_dir, read_recon_npz

    recon = read_recon_npz(args.recon)
    out_dir = check_output_dir(args.output_dir or Path(recon["path"]).parent)
    truth = load_truth(args.truth)
    metrics, written, _ = score_and_write(
        out_dir,
        recon["object"],
        recon["coverage"],
        recon["origin"],
        truth,
        register=args.register,
        remove_plane=args.remove_plane,
        margin=args.margin,
        extra={"recon": str(recon["path"]), "truth": str(args.truth)},
        names=(str(recon["path"]), str(args.truth)),
    )
    for line in metric_lines(metrics):
        console.result(line)
    console.result("wrote:")
    for path in written:
        console.result(f"  {path}")
    return 0
