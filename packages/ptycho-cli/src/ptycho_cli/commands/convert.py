"""``ptycho convert``: NPZ scan ↔ Ptychodus product (.h5), chosen by the file suffixes.

- ``scan.npz → product.h5``: positions (object pixels → metres), probe, and the object
  (``objectGuess``, else a placeholder of ones covering the scan). Diffraction data are not
  part of a product and are not written. A scan converted from a product is written in that
  product's frame (centre, pixel sizes, energy, distance; ``--pixel-size-m`` still wins).
- ``product.h5 → scan.npz``: a product holds no diffraction data, so ``--diffraction FILE``
  (a ``.npy`` stack ``(M, N, N)`` or an ``.npz`` with ``diffraction``/``diff3d``) is required;
  ``--intensity`` when it holds intensities (square roots are taken; a Ptychodus training
  export is recognised and square-rooted anyway). Positions become object pixels of the
  product's object grid, which becomes ``objectGuess``; the product's frame and experiment are
  kept in the scan's metadata and reach ``recon.h5``.
- ``scan.npz → scan.npz``: rewrite a scan as DATA-001 (``--intensity``: its diffraction holds
  intensities or detector counts; square roots are taken).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_cli.console import Console

NAME = "convert"
HELP = (
    "convert a scan .npz to a Ptychodus product .h5, a product (+ diffraction) to .npz, "
    "or counts to amplitudes (.npz → .npz --intensity)"
)

_H5 = (".h5", ".hdf5")

logger = logging.getLogger(__name__)


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
        help="the diffraction data (--diffraction FILE, or IN for .npz → .npz) are "
        "intensities or detector counts (default: amplitudes)",
    )
    p.set_defaults(run=run)


def _npz_to_product(src: Path, dst: Path, pixel_size_m: float | None) -> str:
    from ptycho_cli.outputs import DEFAULT_PIXEL_SIZE_M
    from ptycho_core.io import ProductFrame, load_npz, scan_to_product, write_product

    if pixel_size_m is not None and not (np.isfinite(pixel_size_m) and pixel_size_m > 0):
        raise ValueError(f"--pixel-size-m must be > 0, got {pixel_size_m}")
    scan = load_npz(src)
    frame = ProductFrame.from_metadata(scan.metadata, src)
    fields: dict[str, Any]
    if frame is not None:
        if pixel_size_m is not None:
            frame = replace(
                frame, object_pixel_width_m=pixel_size_m, object_pixel_height_m=pixel_size_m
            )
        shape = scan.object.shape if scan.object is not None else frame.object_shape
        fields = frame.product_fields((int(shape[0]), int(shape[1])))
    else:
        pixel = pixel_size_m
        if pixel is None:
            meta = scan.metadata.get("object_pixel_size_m") or scan.metadata.get("pixel_size_m")
            if isinstance(meta, (int, float)) and np.isfinite(meta) and meta > 0:
                pixel = float(meta)
            else:
                pixel = DEFAULT_PIXEL_SIZE_M
        fields = {"pixel_size_m": pixel}
    pixel = float(fields["pixel_size_m"])
    product = scan_to_product(
        scan,
        name=src.stem,
        comments=f"converted from {src.name} by ptycho convert",
        **fields,
    )
    write_product(dst, product)
    obj = "objectGuess" if scan.object is not None else "a placeholder object (no objectGuess)"
    return f"{scan.M} positions, probe {scan.N}×{scan.N}, {obj}, pixel {pixel:g} m"


def _read_diffraction(path: Path, intensity: bool = False) -> np.ndarray:
    """The ``(M, N, N)`` stack of ``path`` (``.npy``, or ``.npz`` key ``diffraction``/``diff3d``)
    as amplitudes (square roots when ``intensity``, or with a logged warning when ``path`` is a
    Ptychodus training export, whose ``diff3d`` holds counts). Every problem with the file — not
    a .npy/.npz, no such key, not a finite non-negative real ``(M, N, N)`` stack — is a
    :class:`~ptycho_core.errors.DataContractError` naming ``path`` (never the product)."""
    from ptycho_cli.outputs import describe_non_archive
    from ptycho_core.errors import DataContractError
    from ptycho_core.io import is_ptychodus_export

    if not path.is_file():
        raise FileNotFoundError(f"{path}: diffraction file not found")
    kind = describe_non_archive(path)
    if kind is not None and not kind.startswith("a .npy"):
        raise DataContractError(f"{path}: not a .npy or .npz file ({kind.split(',')[0]})")
    key = "array"
    try:
        with open(path, "rb") as fh:
            loaded = np.load(fh, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                diff = loaded
            else:
                with loaded:
                    found = [k for k in ("diffraction", "diff3d") if k in loaded.files]
                    if not found:
                        raise DataContractError(
                            f"{path}: no 'diffraction' (or 'diff3d') key; keys present: "
                            f"{sorted(loaded.files)}"
                        )
                    key = found[0]
                    diff = loaded[key]
                    if not intensity and is_ptychodus_export(loaded.files):
                        logger.warning(
                            "%s: a Ptychodus training export ('diff3d' with 'bad_pixels'): "
                            "its counts are square-rooted (as with --intensity)",
                            path,
                        )
                        intensity = True
    except DataContractError:
        raise
    except Exception as exc:  # numpy reports damage with many types
        raise DataContractError(
            f"{path}: not a readable .npy/.npz file ({type(exc).__name__}: {exc})"
        ) from exc
    what = f"{path}: key '{key}'" if key != "array" else f"{path}"
    if diff.dtype.kind not in "fiu" or diff.ndim != 3 or 0 in diff.shape:
        raise DataContractError(
            f"{what}: expected a real (M, N, N) diffraction stack, got {diff.dtype} {diff.shape}"
        )
    if diff.shape[1] != diff.shape[2]:
        raise DataContractError(f"{what}: patterns must be square (N, N), got {diff.shape[1:]}")
    bad = int((~np.isfinite(diff)).sum())
    if bad:
        raise DataContractError(f"{what}: {bad} NaN or infinite value(s)")
    if (diff < 0).any():
        kind_of = "intensities" if intensity else "amplitudes"
        raise DataContractError(f"{what}: negative values (expected {kind_of} >= 0)")
    diff = diff.astype(np.float32)
    return np.sqrt(diff) if intensity else diff


def _product_to_npz(src: Path, dst: Path, diffraction: Path | None, intensity: bool) -> str:
    from ptycho_core.errors import DataContractError
    from ptycho_core.io import (
        ProductFrame,
        ScanData,
        product_positions_px,
        read_product,
        save_npz,
    )
    from ptycho_core.io.product_frame import FRAME_KEY

    if diffraction is None:
        raise ValueError(
            f"{src}: a Ptychodus product holds no diffraction data; give them with "
            "--diffraction FILE (.npy or .npz)"
        )
    product = read_product(src)
    diff = _read_diffraction(diffraction, intensity)
    pos = product_positions_px(product)
    if diff.shape[0] != pos.shape[0]:
        raise DataContractError(
            f"{diffraction}: expected ({pos.shape[0]}, N, N) patterns (one per "
            f"position of {src}), got shape {diff.shape}"
        )
    probe = np.asarray(product.probe)
    while probe.ndim > 2 and probe.shape[0] == 1:
        probe = probe[0]
    if probe.ndim == 2 and probe.shape != diff.shape[1:]:
        raise DataContractError(
            f"{diffraction}: patterns of {diff.shape[1]}×{diff.shape[2]} do not match the "
            f"{probe.shape[0]}×{probe.shape[1]} probe of {src} (dataset 'probe')"
        )
    scan = ScanData(
        diffraction=diff,
        xcoords=pos[:, 0],
        ycoords=pos[:, 1],
        probe=probe,
        object=np.asarray(product.object[0]),
        source=str(src),
        metadata={
            "object_pixel_size_m": product.object_pixel_width_m,
            "converted_from": src.name,
            FRAME_KEY: ProductFrame.from_product(product).to_metadata(),
        },
    )
    save_npz(dst, scan, nphotons=product.probe_photon_count)
    shape = scan.object.shape if scan.object is not None else None
    return f"{scan.M} patterns of {scan.N}×{scan.N}, object {shape}"


def _npz_to_npz(src: Path, dst: Path, intensity: bool) -> str:
    from ptycho_core.io import load_npz, save_npz

    scan = load_npz(src, intensity=True if intensity else None)
    save_npz(dst, scan)
    converted = bool(scan.metadata.get("amplitude_from_intensity"))
    how = "square roots of the intensities" if converted else "amplitudes as stored"
    return f"{scan.M} patterns of {scan.N}×{scan.N}, {how}"


def run(args: argparse.Namespace, console: Console) -> int:
    from ptycho_cli.outputs import check_output_file

    src, dst = Path(args.input), Path(args.output)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: input file not found")
    direction_ok = (src.suffix == ".npz" and dst.suffix in (*_H5, ".npz")) or (
        src.suffix in _H5 and dst.suffix == ".npz"
    )
    if direction_ok:
        check_output_file(dst)  # before reading anything (specs/cli.md)
    if src.suffix == ".npz" and dst.suffix in _H5:
        what = _npz_to_product(src, dst, args.pixel_size_m)
    elif src.suffix in _H5 and dst.suffix == ".npz":
        what = _product_to_npz(src, dst, args.diffraction, args.intensity)
    elif src.suffix == ".npz" and dst.suffix == ".npz":
        what = _npz_to_npz(src, dst, args.intensity)
    else:
        raise ValueError(
            f"{src} → {dst}: convert goes .npz → .h5, .h5 → .npz or .npz → .npz (by suffix)"
        )
    console.result(f"wrote {dst} ({what})")
    return 0
