"""JSON encoding of the NumPy and path values that manifests and metadata carry."""

from __future__ import annotations

import os
from typing import Any

import numpy as np


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` hook: NumPy scalars/arrays → Python values, paths → str."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable")
