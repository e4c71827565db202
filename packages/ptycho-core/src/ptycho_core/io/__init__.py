"""Data contracts: the NPZ scan (DATA-001), Ptychodus product HDF5 files, atomic writes.

See ``specs/data-contracts.md`` for the decisions (error types, aliases, metadata JSON).
"""

from ptycho_core.io._atomic import atomic_path, atomic_write
from ptycho_core.io.h5scan import (
    StreamingScan,
    load_scan,
    open_h5_scan,
    save_h5_scan,
)
from ptycho_core.io.npz import is_ptychodus_export, load_npz, save_npz
from ptycho_core.io.probe import read_probe
from ptycho_core.io.product import (
    Product,
    product_positions_px,
    read_product,
    scan_to_product,
    write_product,
)
from ptycho_core.io.product_frame import ProductFrame
from ptycho_core.io.scan import ScanData, check_enough_patterns

__all__ = [
    "ScanData",
    "atomic_write",
    "atomic_path",
    "check_enough_patterns",
    "load_npz",
    "save_npz",
    "is_ptychodus_export",
    "Product",
    "ProductFrame",
    "read_product",
    "read_probe",
    "write_product",
    "scan_to_product",
    "product_positions_px",
    "StreamingScan",
    "load_scan",
    "open_h5_scan",
    "save_h5_scan",
]
