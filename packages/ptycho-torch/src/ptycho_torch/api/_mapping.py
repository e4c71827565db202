"""What the Ptychodus entry maps, framework-free (``specs/torch-backend.md``, "Ptychodus
entry"): detector counts → amplitudes, Ptychodus's probe and ``(y, x)`` positions → a
:class:`~ptycho_core.io.ScanData` on Ptychodus's object grid, a Ptychodus "Export Training Data"
folder → a scan, Ptychodus's settings → ``ptycho_core`` configs (one log line per ignored or
changed setting), and model files → a clear error for anything that is not a PyTorch bundle.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_core import bundle as core_bundle
from ptycho_core.config import AMP_ACTIVATIONS, ExecutionConfig, ModelConfig, TrainingConfig
from ptycho_core.errors import BundleError, ConfigError, DataContractError
from ptycho_core.io import ScanData, load_npz
from ptycho_core.io.npz import METADATA_KEY, read_npz_arrays

__all__ = [
    "BACKEND",
    "amplitude_from_counts",
    "check_model_file",
    "configs_from_manifest",
    "object_grid",
    "read_training_scan",
    "scan_from_ptychodus",
    "single_mode_probe",
    "training_configs",
]

logger = logging.getLogger("ptycho_torch.api")

BACKEND = "pytorch"
_WHO = "PtychoPINN-Torch entry"
#: Training-data file Ptychodus's original trainer looks for first in the chosen folder.
TRAIN_NAME = "train_data.npz"


# ----------------------------------------------------------------------------- data
def amplitude_from_counts(counts: Any, where: str = "diffraction patterns") -> np.ndarray:
    """``sqrt`` of detector counts ``(M, N, N)`` (any real dtype) → float32 photon-unit
    amplitudes. Negative counts (biharmonic inpainting of bad pixels can undershoot) are set to
    0 with a log line; non-finite ones → :class:`DataContractError` naming ``where``."""
    c = np.asarray(counts)
    if c.ndim != 3 or c.dtype.kind not in "biuf":
        raise DataContractError(
            f"{where}: expected real detector counts of shape (M, N, N), got {c.dtype} {c.shape}"
        )
    c = c.astype(np.float32)
    if not np.isfinite(c).all():
        raise DataContractError(f"{where}: expected finite detector counts, got NaN or infinity")
    negative = int(np.count_nonzero(c < 0))
    if negative:
        logger.info("%s: %d negative count(s) (inpainted pixels) set to 0", where, negative)
        np.maximum(c, 0, out=c)
    return np.sqrt(c)


def single_mode_probe(probe: Any, where: str = "probe") -> np.ndarray:
    """Ptychodus's probe stack ``(modes, N, N)`` (or ``(N, N)``) → the ``(N, N)`` complex64
    probe; more than one mode → :class:`DataContractError` naming the shape."""
    p = np.asarray(probe)
    if p.ndim == 3 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 2:
        raise DataContractError(
            f"{where}: {_WHO} supports a single-mode probe (N, N) or (1, N, N); got shape "
            f"{tuple(np.shape(probe))} ({np.shape(probe)[0] if np.ndim(probe) == 3 else '?'} "
            "modes). Reduce the probe to one mode in Ptychodus first."
        )
    return p.astype(np.complex64)


def object_grid(positions_yx: Any) -> tuple[int, int]:
    """``(H, W)`` of Ptychodus's object array from positions ``(M, 2)`` ``(y, x)`` in its
    object pixels. Ptychodus centres the object on the scan's bounding box and does not send
    the shape, so ``H = round(y_min + y_max) + 1`` (``W`` alike): exact for objects Ptychodus
    sized itself."""
    pos = np.asarray(positions_yx, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2 or len(pos) == 0 or not np.isfinite(pos).all():
        raise DataContractError(f"positions: expected finite (M, 2) (y, x), got {pos.shape}")
    h = int(round(float(pos[:, 0].min() + pos[:, 0].max()))) + 1
    w = int(round(float(pos[:, 1].min() + pos[:, 1].max()))) + 1
    return h, w


def scan_from_ptychodus(diff_patterns: Any, probe: Any, positions_yx: Any) -> ScanData:
    """A scan from what Ptychodus's reconstruct child sends: counts ``(M, N, N)``, probe
    ``(modes, N, N)``, positions ``(M, 2)`` ``(y, x)`` object pixels. The object is ones on
    :func:`object_grid`, so the reconstruction comes back on Ptychodus's grid."""
    pos = np.asarray(positions_yx, dtype=np.float64)
    h, w = object_grid(pos)
    return ScanData(
        diffraction=amplitude_from_counts(diff_patterns),
        xcoords=pos[:, 1],
        ycoords=pos[:, 0],
        probe=single_mode_probe(probe),
        object=np.ones((h, w), np.complex64),
        metadata={"creator": "ptychodus", "diffraction_from": "sqrt(counts)"},
        source="<Ptychodus reconstruct input>",
    )


def _training_file(data_dir: Path) -> Path:
    if data_dir.is_file():
        return data_dir
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{_WHO}: training data folder not found: {data_dir}")
    if (data_dir / TRAIN_NAME).is_file():
        return data_dir / TRAIN_NAME
    found = sorted(data_dir.glob("*.npz"))
    if len(found) != 1:
        raise DataContractError(
            f"{data_dir}: expected {TRAIN_NAME} or exactly one *.npz file (Ptychodus's "
            f"'Export Training Data'), found {[p.name for p in found]}"
        )
    return found[0]


def _npz_keys(path: Path) -> set[str]:
    """Member names of an ``.npz`` without reading data (empty when it is not a zip)."""
    if not zipfile.is_zipfile(path):
        return set()
    with zipfile.ZipFile(path) as zf:
        return {n.removesuffix(".npy") for n in zf.namelist()}


def read_training_scan(data_dir: str | Path) -> ScanData:
    """The training scan in ``data_dir`` (:data:`TRAIN_NAME`, else its only ``*.npz``; a file
    path is taken as is). A Ptychodus export (``diff3d`` and ``bad_pixels``, no
    ``diffraction``/``_metadata``) holds counts: square-rooted here, explicitly, with a log line;
    its ``probeGuess`` ``(modes, N, N)`` must hold one mode. Any other file is DATA-001
    (amplitudes) and goes through :func:`ptycho_core.io.load_npz`."""
    path = _training_file(Path(data_dir))
    keys = _npz_keys(path)
    if "bad_pixels" not in keys or "diffraction" in keys or METADATA_KEY in keys:
        return load_npz(path)  # DATA-001 (amplitudes); also reports a damaged or non-zip file
    a = read_npz_arrays(path)
    missing = [k for k in ("diff3d", "xcoords", "ycoords", "probeGuess") if k not in a]
    if missing:
        raise DataContractError(f"{path}: missing key(s) {missing} of a Ptychodus export")
    logger.info("%s: Ptychodus export: 'diff3d' holds detector counts; using sqrt(counts)", path)
    return ScanData(
        diffraction=amplitude_from_counts(a["diff3d"], f"{path}: key 'diff3d'"),
        xcoords=a["xcoords"],
        ycoords=a["ycoords"],
        probe=single_mode_probe(a["probeGuess"], f"{path}: key 'probeGuess'"),
        object=a.get("objectGuess"),
        xcoords_start=a.get("xcoords_start"),
        ycoords_start=a.get("ycoords_start"),
        scan_index=a.get("scan_index"),
        metadata={"creator": "ptychodus", "diffraction_from": "sqrt(counts)"},
        source=str(path),
    )


# ----------------------------------------------------------------------------- settings
#: Keys read silently because they only restate another setting or name the framework.
_RESTATED = {
    "ModelConfig": ("C_model", "C_forward", "decoder_last_amp_channels"),
    "TrainingConfig": ("framework", "orchestrator"),
}
#: The project's default schedule (``specs/training.md``): Ptychodus's ``Default`` and every
#: schedule without an equivalent map to it.
_DEFAULT_SCHEDULER: str = ExecutionConfig.scheduler
_SCHEDULERS = {
    "default": _DEFAULT_SCHEDULER,
    "plateau": "plateau",
    "cosine": "cosine",
    "step": "step",
    "none": "none",
}
_MODES = {"unsupervised": "pinn", "pinn": "pinn", "supervised": "supervised"}


class _Settings:
    """One Ptychodus config as a dict; records which keys the mapping used."""

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self.name, self.values, self.used = name, dict(values), set(_RESTATED.get(name, ()))

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        value = self.values.get(key, default)
        return default if value is None else value

    def changed(self, key: str, why: str) -> None:
        logger.warning(
            "Ptychodus setting %s.%s = %r: %s", self.name, key, self.values.get(key), why
        )

    def log_ignored(self) -> None:
        for key in sorted(set(self.values) - self.used):
            logger.info(
                "Ptychodus setting %s.%s = %r has no ptycho equivalent; ignored",
                self.name,
                key,
                self.values[key],
            )


def _gridsize(c: Any) -> int:
    if isinstance(c, bool) or not isinstance(c, int) or c < 1 or math.isqrt(c) ** 2 != c:
        raise ConfigError(
            f"Ptychodus setting num_channels (C) = {c!r} is invalid; allowed: a square "
            "(1, 4, 9, ...): ptycho groups gridsize x gridsize patterns"
        )
    return math.isqrt(c)


def _model_config(d: _Settings, m: _Settings, n: int) -> ModelConfig:
    if d.get("N") not in (None, n):
        d.changed("N", f"ignored: the data's pattern size N = {n} is used")
    gridsize = _gridsize(d.get("C", 1))
    gs = d.get("grid_size")
    if gs is not None and tuple(gs) != (gridsize, gridsize):
        d.changed("grid_size", f"ignored: num_channels gives gridsize {gridsize}")
    mode = str(m.get("mode", "Unsupervised"))
    if mode.casefold() not in _MODES:
        raise ConfigError(
            f"ModelConfig.mode = {mode!r} is invalid; allowed: Unsupervised, Supervised"
        )
    act = str(m.get("amp_activation", "sigmoid")).casefold()
    if act == "silu":
        logger.info("Ptychodus setting ModelConfig.amp_activation = 'silu' → 'swish' (the same)")
        act = "swish"
    if act not in AMP_ACTIVATIONS:
        raise ConfigError(
            f"ModelConfig.amp_activation = {act!r} is invalid; allowed: silu, {AMP_ACTIVATIONS}"
        )
    return ModelConfig(
        N=n,
        gridsize=gridsize,
        n_filters_scale=int(m.get("n_filters_scale", 2)),
        model_type=_MODES[mode.casefold()],
        amp_activation=act,
        object_big=bool(m.get("object_big", True)),
        probe_big=bool(m.get("probe_big", True)),
        probe_mask=bool(m.get("probe_mask", False)),
        pad_object=bool(m.get("pad_object", True)),
        probe_scale=float(d.get("probe_scale", 4.0)),
        gaussian_smoothing_sigma=float(m.get("gaussian_smoothing_sigma", 0.0)),
    )


def _loss_weights(m: _Settings, t: _Settings) -> tuple[float, float]:
    """``(nll_weight, mae_weight)`` from ``loss_function``."""
    name = str(m.get("loss_function", "Poisson")).casefold()
    if name not in ("poisson", "mae"):
        raise ConfigError(f"ModelConfig.loss_function = {name!r} is invalid; allowed: Poisson, MAE")
    nll = t.get("nll", True)
    if bool(nll) != (name == "poisson"):
        t.changed("nll", f"ignored: loss_function {name!r} decides the loss")
    return (1.0, 0.0) if name == "poisson" else (0.0, 1.0)


def _execution(t: _Settings, i: _Settings, cuda_available: bool) -> ExecutionConfig:
    device = str(t.get("device", "cpu")).casefold()
    accelerator = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", "mps": "mps", "auto": "auto"}
    if device not in accelerator:
        raise ConfigError(
            f"TrainingConfig.device = {device!r} is invalid; allowed: {sorted(accelerator)}"
        )
    acc = accelerator[device]
    devices = int(t.get("n_devices", 1))
    if acc == "gpu" and not cuda_available:
        t.changed("device", "CUDA is not available; training on the CPU")
        acc, devices = "cpu", 1
    strategy = str(t.get("strategy", "auto"))
    if devices <= 1 and strategy != "auto":
        t.changed("strategy", "not used with one device")
        strategy = "auto"
    scheduler = str(t.get("scheduler", "Default"))
    sched = _SCHEDULERS.get(scheduler.casefold())
    if sched is None:
        t.changed("scheduler", f"no equivalent; using the default {_DEFAULT_SCHEDULER!r}")
        sched = _DEFAULT_SCHEDULER
    clip = t.get("gradient_clip_val")
    return ExecutionConfig(
        accelerator=acc,
        strategy=strategy,
        devices=devices,
        gradient_clip_val=None if not clip else float(clip),
        accum_steps=int(t.get("accum_steps", 1)),
        num_workers=int(t.get("num_workers", 0)),
        learning_rate=float(t.get("learning_rate", 1e-3)),
        scheduler=sched,
        enable_progress_bar=False,
        inference_batch_size=int(i.get("batch_size", 64)),
    )


def training_configs(
    data: Mapping[str, Any],
    model: Mapping[str, Any],
    training: Mapping[str, Any],
    inference: Mapping[str, Any],
    *,
    n: int,
    output_dir: str | Path,
    cuda_available: bool = False,
) -> tuple[TrainingConfig, ExecutionConfig]:
    """Ptychodus's settings (the ``to_dict()`` of the four :mod:`ptycho_torch.config_params`
    objects) → ``ptycho_core`` training and execution configs for patterns of size ``n``.

    Table: ``specs/torch-backend.md`` "Ptychodus entry". Each setting that is changed (N, a
    grid that disagrees with ``C``, ``device='cuda'`` without CUDA, a strategy with one device,
    an unknown scheduler) is logged as a warning; each without an equivalent as an info line.
    """
    d, m = _Settings("DataConfig", data), _Settings("ModelConfig", model)
    t, i = _Settings("TrainingConfig", training), _Settings("InferenceConfig", inference)
    mc = _model_config(d, m, n)
    nll_weight, mae_weight = _loss_weights(m, t)
    k = int(d.get("K", 6))
    config = TrainingConfig(
        model=mc,
        batch_size=int(t.get("batch_size", 16)),
        nepochs=int(t.get("epochs", 50)),
        neighbor_count=max(k, mc.C - 1) if mc.gridsize > 1 else k,
        probe_trainable=bool(m.get("probe_trainable", False)),
        intensity_scale_trainable=bool(m.get("intensity_scale_trainable", False)),
        output_dir=Path(output_dir),
        backend=BACKEND,
        nll_weight=nll_weight,
        mae_weight=mae_weight,
    )
    execution = _execution(t, i, cuda_available)
    for s in (d, m, t, i):
        s.log_ignored()
    return config, execution


# ----------------------------------------------------------------------------- model files
def check_model_file(path: str | Path) -> dict[str, Any]:
    """The validated manifest of the PyTorch bundle at ``path`` (any file name: Ptychodus
    records ``*.ckpt``). Anything else is a :class:`BundleError` (a ``ValueError``) saying what
    the file is: a Lightning/torch checkpoint (e.g. from the original PtychoPINN), another
    backend's bundle, or no model at all."""
    p = Path(path)
    if not p.is_file():
        raise BundleError(f"{p}: model file not found (expected a ptycho model bundle)")
    hint = (
        "the PtychoPINN-Torch entry of ptycho-torch loads only ptycho model bundles "
        "(wts.h5.zip written by `ptycho train` or by training in Ptychodus with ptycho-torch)"
    )
    if not zipfile.is_zipfile(p):
        raise BundleError(f"{p}: not a ptycho model bundle (not a zip archive); {hint}")
    with zipfile.ZipFile(p) as zf:
        names = zf.namelist()
    if core_bundle.MANIFEST_NAME not in names:
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise BundleError(
                f"{p}: a PyTorch/Lightning checkpoint (e.g. of the original PtychoPINN), not a "
                f"ptycho model bundle; it cannot be loaded (and is never unpickled); {hint}"
            )
        raise BundleError(f"{p}: not a ptycho model bundle (no manifest.json); {hint}")
    manifest = core_bundle.read_manifest(p)
    if manifest["backend"] != BACKEND:
        raise BundleError(
            f"{p}: a ptycho bundle of the {manifest['backend']!r} backend; the PtychoPINN-Torch "
            "entry reconstructs 'pytorch' bundles (use the 'PtychoPINN' library for "
            f"{manifest['backend']!r} bundles, via ptycho-ptychodus)"
        )
    return manifest


def configs_from_manifest(manifest: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Keyword dicts for the four :mod:`ptycho_torch.config_params` classes from a bundle's
    manifest (``data``, ``model``, ``training``, ``inference``): what Ptychodus reads back
    (``model['mode']`` ``'Unsupervised'``/``'Supervised'``)."""
    mc = dict(manifest.get("model_config") or {})
    tc = dict(manifest.get("training_config") or {})
    g = int(mc.get("gridsize", 1))
    model = {k: v for k, v in mc.items() if k not in ("N", "gridsize", "probe_scale")}
    model["mode"] = "Supervised" if mc.get("model_type") == "supervised" else "Unsupervised"
    training = {k: v for k, v in tc.items() if k != "model"}
    training["epochs"] = tc.get("nepochs")
    return {
        "data": {
            "N": mc.get("N"),
            "C": g * g,
            "K": int(tc.get("neighbor_count", 6)),
            "grid_size": (g, g),
            "probe_scale": mc.get("probe_scale", 4.0),
        },
        "model": model,
        "training": training,
        "inference": {"batch_size": 64},
    }
