"""Convert a model bundle from one backend to the other (``specs/data-contracts.md``,
"Converting bundles"; ADR-002 one weight layout, ``specs/model.md``).

The canonical weight set is ``{name: float32 array}`` with the ADR-002 names in the order of
:func:`weight_shapes` — per conv ``<name>.weight`` ``(out, in, 3, 3)`` and ``<name>.bias``
``(out,)``, then ``log_intensity_scale`` ``()``, ``probe_real``, ``probe_imag`` ``(N, N)`` — which
is exactly a PyTorch state dict; a Keras kernel is the same array as ``(3, 3, in, out)``.

:func:`convert_bundle` runs in a process that imports only the *target* framework:

* TensorFlow weights (``model.weights.h5``) are read framework-free with h5py
  (:func:`keras_weight_arrays`);
* PyTorch weights (``state_dict.pt``, a torch zip whose tensors only torch may unpickle) are read
  by a child process that imports torch alone, loads them with ``weights_only=True`` and hands
  back a plain ``.npz`` (:func:`torch_weight_arrays`);
* the target backend builds the model of the manifest, takes the arrays
  (``model.load_weight_arrays``), and its weight bytes are written with the source's probe,
  configs and facts; the manifest's ``converted_from`` records the source backend, file and
  SHA-256. The written weights are read back and must equal the source's bit for bit.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ptycho_core import bundle as core_bundle
from ptycho_core.architecture import conv_layers, scalar_weights
from ptycho_core.backends import check_backend_name, load_backend
from ptycho_core.errors import BundleError, ConfigError

__all__ = [
    "CONVERTED_FROM_KEY",
    "WEIGHT_ENTRIES",
    "check_weight_arrays",
    "convert_bundle",
    "keras_weight_arrays",
    "read_weight_arrays",
    "torch_weight_arrays",
    "weight_shapes",
]

logger = logging.getLogger(__name__)

#: The bundle entry holding each backend's weights.
WEIGHT_ENTRIES = {"pytorch": "state_dict.pt", "tensorflow": "model.weights.h5"}
#: Manifest key recording where a converted bundle came from.
CONVERTED_FROM_KEY = "converted_from"
#: Per target backend: (module, attribute) of its weight hooks
#: (:class:`~ptycho_core.engine.WeightHooks`: build a model, write and load weight bytes).
_TARGET_HOOKS = {
    "pytorch": ("ptycho_torch.workflows", "HOOKS"),
    "tensorflow": ("ptycho_tf.workflows", "HOOKS"),
}
#: Manifest keys :func:`~ptycho_core.bundle.make_manifest` writes itself (not carried over).
_MANIFEST_KEYS = frozenset((*core_bundle.RESERVED_KEYS, CONVERTED_FROM_KEY))
#: Seconds the torch reader child may take (it imports torch, then reads one file).
TORCH_READER_TIMEOUT_S = 600.0

# Run by a child interpreter: torch only, weights_only (no code from the file runs), then a
# plain .npz that the parent reads with allow_pickle=False.
_TORCH_READER = r"""
import sys
import numpy as np
import torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
    sys.exit("not a plain dict of tensors")
np.savez(sys.argv[2], **{str(k): v.detach().cpu().numpy() for k, v in state.items()})
"""


def weight_shapes(model_config: Any) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of the canonical weight set for ``model_config``, in ADR-002 order."""
    out: dict[str, tuple[int, ...]] = {}
    for row in conv_layers(model_config):
        out[f"{row.name}.weight"] = (row.out_channels, row.in_channels, 3, 3)
        out[f"{row.name}.bias"] = (row.out_channels,)
    for name, shape in scalar_weights(model_config):
        out[name] = tuple(shape)
    return out


def check_weight_arrays(
    arrays: dict[str, np.ndarray], model_config: Any, where: object
) -> dict[str, np.ndarray]:
    """``arrays`` in canonical order as float32, after checking names, shapes and dtypes against
    :func:`weight_shapes`; anything else is a :class:`BundleError` naming ``where``."""
    want = weight_shapes(model_config)
    missing = [k for k in want if k not in arrays]
    extra = [k for k in arrays if k not in want]
    if missing or extra:
        raise BundleError(
            f"{where}: weights do not match the manifest's model_config: "
            f"{len(missing)} missing (e.g. {missing[:1]}), {len(extra)} unexpected "
            f"(e.g. {extra[:1]})"
        )
    out = {}
    for name, shape in want.items():
        a = np.asarray(arrays[name])
        if a.shape != shape or a.dtype.kind != "f":
            raise BundleError(
                f"{where}: weight {name!r}: expected float {list(shape)}, got {a.dtype} "
                f"{list(a.shape)}"
            )
        out[name] = a.astype(np.float32, copy=False)
    return out


def _attr_str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def keras_weight_arrays(data: bytes, model_config: Any, probe: np.ndarray, where: object) -> dict:
    """The canonical weight set of a Keras ``.weights.h5`` file written by ``ptycho_tf``, read
    with h5py (no TensorFlow): every ``layers/<key>/vars`` group names its layer in the
    attribute ``name``; convs hold ``vars/0`` (kernel ``(3, 3, in, out)``, transposed to
    ``(out, in, 3, 3)``) and ``vars/1`` (bias); ``intensity_scale`` holds ``log s``;
    ``forward_model`` holds ``probe_real``, ``probe_imag``. A supervised model has no forward
    model: its probe weights come from ``probe`` (the bundle's ``probe.npy``)."""
    try:
        with h5py.File(io.BytesIO(data), "r") as fh:
            layers = fh.get("layers")
            if not isinstance(layers, h5py.Group):
                raise BundleError(f"{where}: no 'layers' group; not a Keras weights file")
            by_name: dict[str, list[np.ndarray]] = {}
            for key in layers:
                group = layers[key].get("vars") if isinstance(layers[key], h5py.Group) else None
                if not isinstance(group, h5py.Group):
                    continue
                values = []
                for i in range(len(group)):
                    ds = group.get(str(i))
                    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind != "f":
                        raise BundleError(f"{where}: layers/{key}/vars/{i}: expected a float array")
                    values.append(np.asarray(ds[()]))
                by_name[_attr_str(group.attrs.get("name", key))] = values
    except OSError as exc:
        raise BundleError(f"{where}: not a readable HDF5 file ({exc})") from exc

    def take(layer: str, count: int) -> list[np.ndarray]:
        got = by_name.get(layer)
        if got is None or len(got) != count:
            raise BundleError(
                f"{where}: layer {layer!r}: expected {count} weight arrays, got "
                f"{'none' if got is None else len(got)}"
            )
        return got

    out: dict[str, np.ndarray] = {}
    for row in conv_layers(model_config):
        kernel, bias = take(row.name, 2)
        if kernel.ndim != 4:
            raise BundleError(f"{where}: layer {row.name!r}: kernel of shape {kernel.shape}")
        out[f"{row.name}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
        out[f"{row.name}.bias"] = bias
    (out["log_intensity_scale"],) = take("intensity_scale", 1)
    if model_config.model_type == "pinn":
        out["probe_real"], out["probe_imag"] = take("forward_model", 2)
    else:
        p = np.asarray(probe, np.complex64)
        out["probe_real"], out["probe_imag"] = p.real.copy(), p.imag.copy()
    return check_weight_arrays(out, model_config, where)


def torch_weight_arrays(data: bytes, model_config: Any, where: object) -> dict:
    """The canonical weight set of a ``state_dict.pt``, read by a child interpreter that imports
    torch only (``torch.load(weights_only=True)``) and writes a plain ``.npz``, read back here
    with ``allow_pickle=False``. Needs torch installed (not ptycho-torch)."""
    with tempfile.TemporaryDirectory(prefix="ptycho_convert_") as tmp:
        src, dst = Path(tmp, "state_dict.pt"), Path(tmp, "weights.npz")
        src.write_bytes(data)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _TORCH_READER, str(src), str(dst)],
                capture_output=True,
                text=True,
                timeout=TORCH_READER_TIMEOUT_S,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise BundleError(f"{where}: reading the PyTorch weights timed out") from exc
        if proc.returncode != 0:
            tail = " ".join(proc.stderr.split()[-30:])
            if "No module named 'torch'" in proc.stderr:
                raise BundleError(
                    f"{where}: reading PyTorch weights needs torch (pip install ptycho-torch)"
                )
            raise BundleError(f"{where}: cannot be read as a tensor dict ({tail})")
        with np.load(dst, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    return check_weight_arrays(arrays, model_config, where)


def read_weight_arrays(b: core_bundle.Bundle, model_config: Any) -> dict[str, np.ndarray]:
    """The canonical weight set of a validated bundle (either backend)."""
    entry = WEIGHT_ENTRIES[b.backend]
    where = f"{b.path}:{entry}"
    data = b.require(entry)
    if b.backend == "tensorflow":
        return keras_weight_arrays(data, model_config, b.load_npy(core_bundle.PROBE_NAME), where)
    return torch_weight_arrays(data, model_config, where)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _target_hooks(to: str) -> Any:
    """The target backend's weight hooks, after :func:`~ptycho_core.backends.load_backend` has
    said clearly whether it is installed. Its models expose ``weight_arrays()`` and
    ``load_weight_arrays(arrays, where)`` (canonical layout)."""
    load_backend(to)
    module, attr = _TARGET_HOOKS[to]
    return getattr(importlib.import_module(module), attr)


def convert_bundle(
    source: str | os.PathLike[str], dest: str | os.PathLike[str], to: str, *, overwrite=False
) -> Path:
    """Write the bundle at ``source`` (archive or folder) as a ``to`` bundle at ``dest`` (a
    ``.zip`` path, or a folder — any other name — that gets ``wts.h5.zip``, created when
    missing); returns the written path.

    The weights are copied exactly (bit for bit, checked after writing); ``probe.npy``,
    ``intensity_scale``, ``normalization``, the configs (legacy defaults resolved, as
    :func:`ptycho_core.engine.bundle_configs` reads them) and every other manifest key carry
    over; ``converted_from`` = ``{backend, file, sha256, weights_entry}`` of the source.
    ``ConfigError`` when ``source`` already is a ``to`` bundle or ``dest`` exists (unless
    ``overwrite``); :class:`BundleError` for a damaged source."""
    from ptycho_core.engine import MODEL_NAMES, bundle_configs, bundle_intensity_scale

    to = check_backend_name(to)
    src = core_bundle.bundle_file(source)
    b = core_bundle.read_bundle(src)
    if b.backend == to:
        raise ConfigError(f"{src}: is already a {to} bundle; nothing to convert")
    out = Path(dest)
    if out.is_dir() or out.suffix.lower() != ".zip":  # a folder (made when missing)
        out = out / core_bundle.BUNDLE_NAME
    if out.resolve() == src.resolve():
        raise ConfigError(f"{out}: the converted bundle may not replace its source")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: exists; choose another path or overwrite it (--force)")
    model_config, training_config = bundle_configs(b.manifest, src)
    s = bundle_intensity_scale(b.manifest, src)
    probe = b.load_npy(core_bundle.PROBE_NAME)
    n = model_config.N
    if probe.shape != (n, n) or probe.dtype.kind not in "fc":
        raise BundleError(f"{src}: probe.npy: expected a ({n}, {n}) array, got {probe.shape}")
    arrays = read_weight_arrays(b, model_config)
    held = math.exp(float(arrays["log_intensity_scale"]))
    if not abs(held - s) <= 1e-5 * s:
        raise BundleError(
            f"{src}: manifest key 'intensity_scale' = {s!r} disagrees with the weights ({held!r})"
        )

    hooks = _target_hooks(to)
    tc = training_config
    model = hooks.build_model(
        model_config,
        probe=probe.astype(np.complex64),
        intensity_scale=s,
        probe_trainable=bool(tc.probe_trainable) if tc else False,
        intensity_scale_trainable=bool(tc.intensity_scale_trainable) if tc else False,
    )
    where = f"{src}:{WEIGHT_ENTRIES[b.backend]}"
    model.load_weight_arrays(arrays, where)
    weights = hooks.weights_to_bytes(model)
    # the written bytes, loaded into a fresh model, must give the source's arrays bit for bit
    fresh = hooks.build_model(
        model_config,
        probe=probe.astype(np.complex64),
        intensity_scale=s,
        probe_trainable=False,
        intensity_scale_trainable=False,
    )
    hooks.weights_from_bytes(fresh, weights, f"{out}:{hooks.weights_entry}")
    back = fresh.weight_arrays()
    diff = [k for k in arrays if not np.array_equal(back[k], arrays[k])]
    if diff:
        raise BundleError(f"{out}: converted weights differ from the source ({diff[:3]})")

    extra = {k: v for k, v in b.manifest.items() if k not in _MANIFEST_KEYS}
    extra[CONVERTED_FROM_KEY] = {
        "backend": b.backend,
        "file": src.name,
        "sha256": _sha256(src),
        "weights_entry": WEIGHT_ENTRIES[b.backend],
    }
    manifest = core_bundle.make_manifest(
        to,
        model_config,
        training_config,
        s,
        dict(b.manifest.get("normalization") or {}),
        list(b.manifest.get("model_names") or MODEL_NAMES),
        extra=extra,
    )
    files = {core_bundle.PROBE_NAME: b.require(core_bundle.PROBE_NAME)}
    files[hooks.weights_entry] = weights
    out.parent.mkdir(parents=True, exist_ok=True)
    core_bundle.write_bundle(out, manifest, files)
    logger.info("converted %s (%s) to %s (%s)", src, b.backend, out, to)
    return out
