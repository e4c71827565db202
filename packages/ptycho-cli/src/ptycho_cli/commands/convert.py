"""``ptycho convert``: NPZ scan ↔ Ptychodus product (.h5), chosen by the file suffixes.

- ``scan.npz → product.h5``: positions (object pixels → metres), probe, and the object
  (``objectGuess``, else a placeholder of ones covering the scan). Diffraction data are not part
  of a product and are not written.
- ``product.h5 → scan.npz``: a product holds no diffraction data, so ``--diffraction FILE``
  (a ``.npy`` stack ``(M, N, N)`` or an ``.npz`` with ``diffraction``/``diff3d``) is required;
  ``--intensity`` when it holds intensities (square roots are taken). Positions become object
  pixels of the product's object grid, which becomes ``objectGuess``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_cli.console import Console

NAME = "convert"
HELP = "convert a scan .npz to a Ptychodus product .h5, or a product (+ diffraction) to .npz"

_H5 = (".h5", ".hdf5")


def register(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        NAME,
        parents=parents,
        help=HELP,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, metavar="IN", help="scan .npz or product .h5")
    p.add_argument("output", type=Path, metavar="OUT", help="product .h5 or scan .npz")
    p.add_argument(
        "--pixel-size-m",
        type=float,
        default=None,
        metavar="M",
        help="object pixel size in metres for npz → h5 (default: from the scan's "
        "metadata, else a nominal 1e-8)",
    )
    p.add_argument(
        "--diffraction",
        type=Path,
        default=None,
        metavar="FILE",
        help="diffraction stack for h5 → npz (.npy, or .npz with 'diffraction')",
    )
    p.add_argument(
        "--intensity",
        action="store_true",
        help="the --diffraction data are intensities (default: amplitudes)",
    )
    p.set_defaults(run=run)


def _npz_to_product(src: Path, dst: Path, pixel_size_m: float | None) -> str:
    from ptycho_cli.outputs import DEFAULT_PIXEL_SIZE_M
    from ptycho_core.io import load_npz, scan_to_product, write_product

    scan = load_npz(src)
    pixel = pixel_size_m
    if pixel is None:
        meta = scan.metadata.get("object_pixel_size_m") or scan.metadata.get("pixel_size_m")
        pixel = float(meta) if isinstance(meta, (int, float)) and meta > 0 else DEFAULT_PIXEL_SIZE_M
    if not (np.isfinite(pixel) and pixel > 0):
        raise ValueError(f"--pixel-size-m must be > 0, got {pixel}")
    product = scan_to_product(
        scan,
        pixel_size_m=pixel,
        name=src.stem,
        comments=f"converted from {src.name} by ptycho convert",
    )
    write_product(dst, product)
    obj = "objectGuess" if scan.object is not None else "a placeholder object (no objectGuess)"
    return f"{scan.M} positions, probe {scan.N}×{scan.N}, {obj}, pixel {pixel:g} m"


def _read_diffraction(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: diffraction file not found")
    try:
        with open(path, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return loaded
            with loaded:
                for key in ("diffraction", "diff3d"):
                    if key in loaded.files:
                        return loaded[key]
                raise ValueError(
                    f"{path}: no 'diffraction' (or 'diff3d') key; keys present: "
                    f"{sorted(loaded.files)}"
                )
    except ValueError:
        raise
    except Exception as exc:  # numpy reports damage with many types
        raise ValueError(f"{path}: not a readable .npy/.npz file ({exc})") from exc


def _product_to_npz(src: Path, dst: Path, diffraction: Path | None, intensity: bool) -> str:
    from ptycho_core.io import ScanData, product_positions_px, read_product, save_npz

    if diffraction is None:
        raise ValueError(
            f"{src}: a Ptychodus product holds no diffraction data; give them with "
            "--diffraction FILE (.npy or .npz)"
        )
    product = read_product(src)
    diff = np.asarray(_read_diffraction(diffraction))
    if intensity:
        if np.any(diff < 0):
            raise ValueError(f"{diffraction}: negative intensities")
        diff = np.sqrt(diff)
    pos = product_positions_px(product)
    if diff.ndim != 3 or diff.shape[0] != pos.shape[0]:
        raise ValueError(
            f"{diffraction}: expected ({pos.shape[0]}, N, N) patterns (one per "
            f"position of {src.name}), got shape {diff.shape}"
        )
    probe = np.asarray(product.probe)
    while probe.ndim > 2 and probe.shape[0] == 1:
        probe = probe[0]
    scan = ScanData(
        diffraction=diff,
        xcoords=pos[:, 0],
        ycoords=pos[:, 1],
        probe=probe,
        object=np.asarray(product.object[0]),
        source=str(src),
        metadata={"object_pixel_size_m": product.object_pixel_width_m, "converted_from": src.name},
    )
    save_npz(dst, scan, nphotons=product.probe_photon_count)
    shape = scan.object.shape if scan.object is not None else None
    return f"{scan.M} patterns of {scan.N}×{scan.N}, object {shape}"


def run(args: argparse.Namespace, console: Console) -> int:
    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: input file not found")
    if src.suffix == ".npz" and dst.suffix in _H5:
        what = _npz_to_product(src, dst, args.pixel_size_m)
    elif src.suffix in _H5 and dst.suffix == ".npz":
        what = _product_to_npz(src, dst, args.diffraction, args.intensity)
    else:
        raise ValueError(f"{src} → {dst}: convert goes .npz → .h5 or .h5 → .npz (by suffix)")
    console.result(f"wrote {dst} ({what})")
    return 0
